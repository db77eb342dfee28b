"""Decision layers of the E2E-DRO model family (Costa & Iyengar, Quantitative Finance 2023).

Given the prediction errors ``eps_j = y_j - y_hat_j`` of the last ``N`` periods (rows of ``E``), the
predicted returns ``y_hat`` of the next period and a risk-return trade-off ``gamma``, the layers return
long-only, fully invested weights ``z``:

- :func:`nominal_layer`: ``minimize_{z, c} (1/N) sum_j (eps_j'z - c)^2 - gamma y_hat'z``
  ``s.t.  z >= 0, 1'z = 1``, a QP solved by this package's :func:`portfolio_layers.qp.solve_qp`;
- :func:`dro_layer`: the same risk measured under the worst distribution of the errors within a Hellinger or
  total-variation ball of size ``delta`` around the empirical one, solved by the batched interior point of
  :mod:`~portfolio_layers.models.dro_native` with an implicit backward (default), or as a cone program
  through ``cvxpylayers`` (:mod:`~portfolio_layers.models.dro_cone`, the reference).

Both are differentiable w.r.t. the errors, ``y_hat``, ``gamma`` (and ``delta``).

Cost of :func:`dro_layer`, forward + backward at the paper's size (``n = 20``, ``N = 104``, float64, one
thread, ``delta`` 0.05 (Hellinger) / 0.2 (TV), ``gamma`` 0.3), milliseconds per call. The native columns
were measured back to back with the solver before the batch compaction of
:func:`~portfolio_layers.models.dro_native.interior_point` (commit 89931da, in brackets) on a 2-core
machine at load 11 (both slower than on a quieter machine: the earlier measurement of the old solver gave
93, 97 and 335 ms for Hellinger); the cone columns are that earlier measurement (``*``: batch 8 times 8,
the cone backend is linear in the batch):

=====  ===============  ============  ==============  ============
batch  Hellinger        Hellinger     TV              TV
       native           cvxpylayers   native          cvxpylayers
=====  ===============  ============  ==============  ============
1      60 (70)          1767          103 (117)       732
8      90 (100)         9239          157 (192)       3883
64     307 (1417)       ~74000*       498 (731)       ~31000*
=====  ===============  ============  ==============  ============

The batch's cost follows the elements still running (converged ones leave it), not the slowest one. At
batch 1 the native cost is Python overhead of ~10-25 interior point steps. In the E2E-DRO training (564
decisions, Hellinger) an epoch, forward and backward, takes 0.18 s on one thread at load 2 (1.48 s before),
1.4 s at load 11 (10 s before); ``backtests/e2edro/profile_epoch.py`` measures it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from portfolio_layers.errors import ConfigError, NonFiniteError, ShapeError, format_indices
from portfolio_layers.models.dro_cone import AMBIGUITY_SETS, CLARABEL_SETTINGS, dro_problem, solve_cone
from portfolio_layers.models.dro_native import IPMSettings, robust_weights
from portfolio_layers.qp import solve_qp

logger = logging.getLogger(__name__)

BACKENDS = ("native", "cvxpylayers")
#: Ridge (relative to the mean diagonal of ``E'E / N``) added to the weight block of the nominal QP
#: and of the native robust problems when ``N <= n``, where the sample second moment of the errors is
#: singular (see :func:`nominal_layer`).
NOMINAL_RIDGE = 1e-9


def prediction_errors(returns: Tensor, predictions: Tensor) -> Tensor:
    """Prediction errors ``eps = returns - predictions`` (the convention of the paper).

    Parameters
    ----------
    returns : Tensor of shape (*batch, T, n)
        Realised returns (not prices).
    predictions : Tensor of shape (*batch, T, n)
        The predictions of the same rows.

    Returns
    -------
    Tensor of shape (*batch, T, n)
    """
    if returns.shape[-2:] != predictions.shape[-2:]:
        raise ShapeError(
            f"returns {tuple(returns.shape)} and predictions {tuple(predictions.shape)} must share their "
            "last two dimensions (T, n)"
        )
    return returns - predictions


def error_windows(errors: Tensor, N: int) -> Tensor:
    """All windows of ``N`` consecutive error rows: the risk inputs of consecutive decisions.

    Window ``k`` holds rows ``k, ..., k + N - 1``; it is the risk window of the decision taken
    after row ``k + N - 1`` is known (so it never contains a later row).

    Parameters
    ----------
    errors : Tensor of shape (*batch, T, n)
    N : int
        Window length, ``1 <= N <= T``.

    Returns
    -------
    Tensor of shape (*batch, T - N + 1, N, n)
        A view of ``errors`` (no copy).
    """
    if errors.dim() < 2:
        raise ShapeError(f"errors must have shape (*batch, T, n), got {tuple(errors.shape)}")
    T = errors.shape[-2]
    if not isinstance(N, int) or not 1 <= N <= T:
        raise ConfigError(f"window length N must be an int in [1, T = {T}], got {N!r}")
    return errors.unfold(-2, N, 1).transpose(-1, -2)


def nominal_layer(
    errors: Tensor, y_hat: Tensor, gamma: Tensor | float, *, tol: float | None = None
) -> Tensor:
    """Nominal mean-variance decision layer in the prediction errors (a QP on :func:`solve_qp`).

    ``minimize_{z, c}  (1/N) sum_j (eps_j'z - c)^2 - gamma y_hat'z  s.t.  z >= 0, 1'z = 1`` (``c`` free).

    The optimal ``c`` is the mean of ``eps_j'z``, so the risk term is the (biased, ``1/N``) sample
    variance of the portfolio's prediction error. In the variables ``x = (z, c)`` the problem is
    ``minimize 1/2 x'Px - q'x`` with ``P = (2/N) [E'E, -E'1; -1'E, N]``, ``q = (gamma y_hat, 0)``,
    ``A = [1', 0]``, ``b = 1``, ``lb = (0, ..., 0, -inf)``. ``P`` is positive semidefinite and singular
    exactly where ``[E, -1]`` lacks full column rank. ``c`` is always unique given ``z``; minimising
    over it leaves the curvature ``2 dz' S dz`` on the feasible directions (``1'dz = 0``), with ``S``
    the sample covariance of the errors, positive definite for generic data with ``N > n``. When
    ``N <= n`` it is singular for sure, and a ridge
    ``NOMINAL_RIDGE * mean(diag(E'E / N))`` is added to the ``z`` block so that the weights (and their
    gradients) are unique; otherwise nothing is added.

    Parameters
    ----------
    errors : Tensor of shape (*batch, N, n)
        Prediction errors of the last ``N`` periods, one row per period.
    y_hat : Tensor of shape (*batch, n)
        Predicted returns of the next period.
    gamma : float or Tensor of shape () or (*batch,)
        Risk-return trade-off (learnable upstream; the sign is not restricted).
    tol : float, optional
        Tolerance of the interior point (default of :func:`solve_qp`).

    Returns
    -------
    Tensor of shape (*batch, n)
        Weights, differentiable w.r.t. ``errors``, ``y_hat`` and ``gamma``.

    Raises
    ------
    ShapeError, NonFiniteError
        Inputs of the wrong shape or with NaN/inf values.
    SolverError
        If the interior point fails (it names the batch indices).
    """
    E, y, (g,), batch = _check_inputs(errors, y_hat, gamma=gamma)
    N, n = E.shape[-2:]
    ones = torch.ones(*batch, N, 1, dtype=E.dtype, device=E.device)
    Ec = torch.cat([E, -ones], -1)  # (*batch, N, n + 1): rows (eps_j, -1)
    P = Ec.mT @ Ec * (2.0 / N)
    if N <= n:
        with torch.no_grad():
            scale = (E.square().sum(-2).mean(-1) / N).clamp_min(torch.finfo(E.dtype).tiny)
        ridge = torch.cat([torch.ones(n, dtype=E.dtype), torch.zeros(1, dtype=E.dtype)]).to(E.device)
        P = P + (2.0 * NOMINAL_RIDGE) * scale[..., None, None] * torch.diag(ridge)
    q = torch.cat([g[..., None] * y, torch.zeros(*batch, 1, dtype=E.dtype, device=E.device)], -1)
    A = torch.cat([torch.ones(n, dtype=E.dtype), torch.zeros(1, dtype=E.dtype)]).to(E.device)[None]
    b = torch.ones(1, dtype=E.dtype, device=E.device)
    lb = torch.cat([torch.zeros(n, dtype=E.dtype), torch.full((1,), -torch.inf, dtype=E.dtype)]).to(E.device)
    sol = solve_qp(P, q, A, b, lb=lb, tol=tol)
    return sol.x[..., :n]


def dro_layer(
    errors: Tensor,
    y_hat: Tensor,
    gamma: Tensor | float,
    delta: Tensor | float,
    ambiguity: str = "hellinger",
    *,
    backend: str = "native",
    solver_args: dict[str, Any] | None = None,
) -> Tensor:
    """Distributionally robust mean-variance decision layer.

    ``minimize_{z, c}  max_{p in P(delta)} sum_j p_j (eps_j'z - c)^2 - gamma y_hat'z  s.t.  z >= 0, 1'z = 1``

    with ``P(delta) = {p >= 0, 1'p = 1, D(p, u) <= delta}`` around the uniform ``u = 1/N`` and ``D`` the
    phi-divergence ``sum_j u_j phi(p_j / u_j)`` of

    - ``"hellinger"``: ``phi(t) = (sqrt(t) - 1)^2``, i.e. ``D = sum_j (sqrt(p_j) - sqrt(u_j))^2``
      (no factor 1/2, the convention of the paper's code, whose objective has the same
      ``(delta - 1) lam`` term; ``delta >= 2 - 2/sqrt(N)`` admits every point mass);
    - ``"tv"``: ``phi(t) = |t - 1|``, i.e. ``D = sum_j |p_j - u_j|`` (twice the total-variation
      distance; ``delta >= 2 - 2/N`` admits every point mass).

    Derivation. Write ``l_j = (eps_j'z - c)^2``. The inner maximum is a concave program with Slater
    point ``u`` (for ``delta > 0``); its Lagrange dual (multiplier ``xi`` of ``1'p = 1``, ``lam >= 0``
    of the divergence) is ``min_{xi, lam >= 0} xi + lam delta + (1/N) sum_j lam phi*((l_j - xi) / lam)``,
    with ``phi*`` the convex conjugate: ``phi*(s) = s / (1 - s)`` for ``s < 1`` (Hellinger) and
    ``phi*(s) = max(s, -1)`` for ``s <= 1`` (TV). Joining this minimum with the outer one:

    - Hellinger: ``lam phi*(s / lam) = lam s / (lam - s) = lam^2 / (lam - s) - lam``, so the layer is the
      smooth convex program ``minimize xi + (delta - 1) lam + (lam^2 / N) sum_j 1 / (xi + lam - l_j)
      - gamma y_hat'z`` over ``z`` in the simplex, ``c`` free, ``lam >= 0``, on the domain
      ``xi + lam > l_j`` (the perspective ``lam^2 / tau`` is convex and decreasing in ``tau``, and
      ``tau_j = xi + lam - l_j`` is concave). The worst case is ``p_j = (lam / tau_j)^2 / N``.
    - TV: with ``v = xi + lam`` and ``t = xi - lam``, ``sum_j max(l_j - xi, -lam) / N = sum_j max(l_j, t)
      / N - xi``, so the robust risk is ``min (delta / 2)(v - t) + (1/N) sum_j max(l_j, t)`` over
      ``max_j l_j <= v``, ``0 <= t <= v`` (``t >= 0`` loses nothing as ``l_j >= 0``): the mean loss, plus
      ``delta / 2`` times the largest loss, minus ``delta / 2`` times the mean of the lowest losses of
      mass ``delta / 2`` (mass ``delta / 2`` moves from the smallest losses to the largest). With
      ``beta_j >= max(l_j, t)`` it is a convex program with the quadratic constraints ``l_j <= beta_j``,
      ``l_j <= v``: not a QP, so not one for :func:`~portfolio_layers.qp.solve_qp`.

    Backends:

    - ``"native"`` (default): these two programs solved for the whole batch by the primal-dual interior
      point of :mod:`~portfolio_layers.models.dro_native` to tolerance ``1e-10`` (unit-scale errors),
      differentiated implicitly through their KKT conditions. Exact up to that tolerance (weights agree
      with the cone solver to ~1e-7, the cone solver's own accuracy). For ``N <= n`` the ridge
      :data:`NOMINAL_RIDGE` of :func:`nominal_layer` is added to ``z``. Elements that do not converge
      in ``max_iter`` steps (a few in a hundred at ``delta >= 1`` or extreme ``gamma``, where the dual
      is nearly degenerate) are re-solved by the cone program (logged at INFO level).
    - ``"cvxpylayers"``: the same duals as second-order cone programs (:mod:`~.dro_cone`), Clarabel and
      diffcp: the reference, 10-200 times slower with gradients (see the module's table).

    Parameters
    ----------
    errors : Tensor of shape (*batch, N, n)
        Prediction errors of the last ``N`` periods, one row per period.
    y_hat : Tensor of shape (*batch, n)
        Predicted returns of the next period.
    gamma : float or Tensor of shape () or (*batch,)
        Risk-return trade-off.
    delta : float or Tensor of shape () or (*batch,)
        Size of the ambiguity set, ``>= 0``; ``0`` gives :func:`nominal_layer`. For Hellinger the robust
        risk grows like ``sqrt(delta)`` near 0 (``lam ~ std(l) / sqrt(delta)``), so its gradient w.r.t.
        ``delta`` diverges as ``delta -> 0``: parametrise a learned ``delta`` away from 0. Large
        ``delta``: once the ball holds every point mass (``delta >= 2 - 2/sqrt(N)`` Hellinger,
        ``2 - 2/N`` TV) the risk is the largest loss, ``minimize max_j (eps_j'z - c)^2 - gamma y_hat'z``,
        and the gradient w.r.t. ``delta`` is 0; just below that threshold the Hellinger ``lam -> 0``
        and the native solve gets ill-conditioned (still converges, see the tests).
    ambiguity : {"hellinger", "tv"}
    backend : {"native", "cvxpylayers"}
    solver_args : dict, optional
        Native: fields of :class:`~portfolio_layers.models.dro_native.IPMSettings` (``tol``,
        ``max_iter``...). cvxpylayers: Clarabel settings overriding
        :data:`~portfolio_layers.models.dro_cone.CLARABEL_SETTINGS`.

    Returns
    -------
    Tensor of shape (*batch, n)
        Weights in the dtype of the inputs (solved in float64), differentiable w.r.t. ``errors``,
        ``y_hat``, ``gamma`` and ``delta``. Elements with ``delta == 0`` are solved by
        :func:`nominal_layer` (Hellinger: the multiplier ``lam`` is unbounded there; native TV: ``t`` is
        not unique); their gradient w.r.t. ``delta`` is 0.

    Raises
    ------
    ShapeError, NonFiniteError
        Inputs of the wrong shape or with NaN/inf values.
    ConfigError
        An unknown ambiguity set or backend, unknown ``solver_args``, or a negative ``delta``.
    SolverError
        cvxpylayers: non-finite or infeasible weights (diffcp does not pass on Clarabel's status, so the
        weights are checked: ``z >= -1e-6``, ``|1'z - 1| <= 1e-6``).
    """
    if ambiguity not in AMBIGUITY_SETS:
        raise ConfigError(f"unknown ambiguity set {ambiguity!r}; choose one of {AMBIGUITY_SETS}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    E, y, (g, d), batch = _check_inputs(errors, y_hat, gamma=gamma, delta=delta)
    if bool((d < 0).any()):
        raise ConfigError(
            f"delta (the size of the ambiguity set) must be >= 0, got min {float(d.min()):.3g}; "
            "parametrise a learned delta as softplus(.) or exp(.)"
        )
    N, n = E.shape[-2:]
    flat = (E.reshape(-1, N, n), y.reshape(-1, n), g.reshape(-1), d.reshape(-1))
    z = torch.empty(flat[1].shape, dtype=E.dtype, device=E.device)
    exact = flat[3] == 0
    if ambiguity == "tv" and backend == "cvxpylayers":
        exact = torch.zeros_like(exact)
    if bool(exact.any()):
        z = z.index_put((exact,), nominal_layer(flat[0][exact], flat[1][exact], flat[2][exact]))
    if not bool(exact.all()):
        rest = ~exact
        args = (*(t[rest] for t in flat), ambiguity)
        z = z.index_put(
            (rest,),
            _solve_native(*args, solver_args) if backend == "native" else solve_cone(*args, solver_args),
        )
    return z.reshape(*batch, n)


def _solve_native(
    E: Tensor, y: Tensor, g: Tensor, d: Tensor, ambiguity: str, solver_args: dict[str, Any] | None
) -> Tensor:
    """The native robust layer for ``E (B, N, n)``, ``y (B, n)``, ``g (B,)``, ``d (B,)``; float64 inside.

    Elements where the interior point does not converge (rare: near-degenerate duals, see
    :func:`~portfolio_layers.models.dro_native.robust_weights`) are re-solved by the cone program.
    """
    try:
        settings = IPMSettings(**(solver_args or {}))
    except TypeError as exc:
        raise ConfigError(f"solver_args of the native backend are fields of IPMSettings: {exc}") from exc
    N, n = E.shape[-2:]
    ridge = NOMINAL_RIDGE if N <= n else 0.0
    z, ok = robust_weights(E.double(), y.double(), g.double(), d.double(), ambiguity, settings, ridge)
    if not bool(ok.all()):
        bad = ~ok
        idx = [(int(i),) for i in bad.nonzero().squeeze(-1)]
        logger.info(
            "dro_layer (%s, native): no convergence within %d iterations at %s; solved by the cone program",
            ambiguity,
            settings.max_iter,
            format_indices(idx),
            extra={"elements": len(idx)},
        )
        z = z.index_put(
            (bad,),
            solve_cone(E[bad].double(), y[bad].double(), g[bad].double(), d[bad].double(), ambiguity, None),
        )
    return z.to(E.dtype)


class NominalLayer(nn.Module):
    """Thin module around :func:`nominal_layer`: ``forward(errors, y_hat, gamma) -> z (*batch, n)``."""

    def __init__(self, *, tol: float | None = None) -> None:
        super().__init__()
        self.tol = tol

    def forward(self, errors: Tensor, y_hat: Tensor, gamma: Tensor | float) -> Tensor:
        return nominal_layer(errors, y_hat, gamma, tol=self.tol)


class DROLayer(nn.Module):
    """Thin module around :func:`dro_layer`: ``forward(errors, y_hat, gamma, delta) -> z (*batch, n)``."""

    def __init__(self, ambiguity: str = "hellinger", *, backend: str = "native") -> None:
        super().__init__()
        if ambiguity not in AMBIGUITY_SETS:
            raise ConfigError(f"unknown ambiguity set {ambiguity!r}; choose one of {AMBIGUITY_SETS}")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.ambiguity, self.backend = ambiguity, backend

    def forward(self, errors: Tensor, y_hat: Tensor, gamma: Tensor | float, delta: Tensor | float) -> Tensor:
        return dro_layer(errors, y_hat, gamma, delta, self.ambiguity, backend=self.backend)

    def extra_repr(self) -> str:
        return f"ambiguity={self.ambiguity!r}, backend={self.backend!r}"


def _check_inputs(
    errors: Tensor, y_hat: Tensor, **scalars: Tensor | float
) -> tuple[Tensor, Tensor, list[Tensor], tuple[int, ...]]:
    """Validate, promote and broadcast ``errors (*batch, N, n)``, ``y_hat (*batch, n)`` and batch scalars."""
    if not isinstance(errors, Tensor) or errors.dim() < 2:
        raise ShapeError(f"errors must be a Tensor of shape (*batch, N, n), got {_shape(errors)}")
    if not isinstance(y_hat, Tensor) or y_hat.dim() < 1:
        raise ShapeError(f"y_hat must be a Tensor of shape (*batch, n), got {_shape(y_hat)}")
    N, n = errors.shape[-2:]
    if y_hat.shape[-1] != n:
        raise ShapeError(
            f"y_hat has {y_hat.shape[-1]} assets and errors {n} (errors (*batch, N, n), y_hat (*batch, n))"
        )
    if N < 1 or n < 1:
        raise ShapeError(f"errors must have at least one row and one asset, got {tuple(errors.shape)}")
    dtype = torch.promote_types(errors.dtype, y_hat.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    extra = {k: torch.as_tensor(v, dtype=dtype, device=errors.device) for k, v in scalars.items()}
    shapes = {
        "errors": errors.shape[:-2],
        "y_hat": y_hat.shape[:-1],
        **{k: v.shape for k, v in extra.items()},
    }
    try:
        batch = tuple(torch.broadcast_shapes(*shapes.values()))
    except RuntimeError as exc:
        listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise ShapeError(
            f"batch shapes do not broadcast: {listed} (the scalars take a shape () or (*batch,))"
        ) from exc
    E = errors.to(dtype).expand(*batch, N, n)
    y = y_hat.to(dtype).expand(*batch, n)
    out = [v.expand(batch) for v in extra.values()]
    for label, t in zip(("errors", "y_hat", *extra), (E, y, *out), strict=True):
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{label} holds NaN or infinite values")
    return E, y, out, batch


def _shape(v: object) -> str:
    return str(tuple(v.shape)) if isinstance(v, Tensor) else type(v).__name__


__all__ = [
    "AMBIGUITY_SETS",
    "BACKENDS",
    "CLARABEL_SETTINGS",
    "DROLayer",
    "NominalLayer",
    "dro_layer",
    "dro_problem",
    "error_windows",
    "nominal_layer",
    "prediction_errors",
]
