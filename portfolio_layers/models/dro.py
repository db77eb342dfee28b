"""Decision layers of the E2E-DRO model family (Costa & Iyengar, Quantitative Finance 2023).

Given the prediction errors ``eps_j = y_j - y_hat_j`` of the last ``N`` periods (rows of ``E``), the
predicted returns ``y_hat`` of the next period and a risk-return trade-off ``gamma``, the layers return
long-only, fully invested weights ``z``:

- :func:`nominal_layer`: ``minimize_{z, c} (1/N) sum_j (eps_j'z - c)^2 - gamma y_hat'z``
  ``s.t.  z >= 0, 1'z = 1``, a QP solved by this package's :func:`portfolio_layers.qp.solve_qp`;
- :func:`dro_layer`: the same risk measured under the worst distribution of the errors within a Hellinger or
  total-variation ball of size ``delta`` around the empirical one, a cone program solved through
  ``cvxpylayers`` (Clarabel inside diffcp).

Both are differentiable w.r.t. the errors, ``y_hat``, ``gamma`` (and ``delta``).
"""

from __future__ import annotations

import functools
from typing import Any

import cvxpy as cp
import numpy as np
import torch
from torch import Tensor, nn

from portfolio_layers.errors import ConfigError, NonFiniteError, ShapeError, SolverError, format_indices
from portfolio_layers.qp import solve_qp

AMBIGUITY_SETS = ("hellinger", "tv")
#: Ridge (relative to the mean diagonal of ``E'E / N``) added to the weight block of the nominal QP
#: when ``N <= n``, where the sample second moment of the errors is singular (see :func:`nominal_layer`).
NOMINAL_RIDGE = 1e-9
#: Clarabel settings of the cone programs: tighter than its defaults (1e-8), so that the weights
#: are accurate to a few 1e-7 after the internal rescaling of the errors to unit size.
CLARABEL_SETTINGS: dict[str, Any] = {
    "tol_gap_abs": 1e-11,
    "tol_gap_rel": 1e-11,
    "tol_feas": 1e-11,
    "tol_ktratio": 1e-8,
    "max_iter": 200,
}
#: Largest violation of ``z >= 0`` and ``1'z = 1`` accepted from the cone solver.
FEASIBILITY_TOL = 1e-6


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
    solver_args: dict[str, Any] | None = None,
) -> Tensor:
    """Distributionally robust mean-variance decision layer (a cone program on cvxpylayers).

    ``minimize_{z, c}  max_{p in P(delta)} sum_j p_j (eps_j'z - c)^2 - gamma y_hat'z  s.t.  z >= 0, 1'z = 1``

    with ``P(delta) = {p >= 0, 1'p = 1, D(p, u) <= delta}`` around the uniform ``u = 1/N`` and ``D`` the
    phi-divergence ``sum_j u_j phi(p_j / u_j)`` of

    - ``"hellinger"``: ``phi(t) = (sqrt(t) - 1)^2``, i.e. ``D = sum_j (sqrt(p_j) - sqrt(u_j))^2``
      (no factor 1/2; ``delta >= 2 - 2/sqrt(N)`` admits every point mass);
    - ``"tv"``: ``phi(t) = |t - 1|``, i.e. ``D = sum_j |p_j - u_j|`` (twice the total-variation
      distance; ``delta >= 2 - 2/N`` admits every point mass).

    Derivation. Write ``l_j = (eps_j'z - c)^2``. The inner maximum is a concave program with Slater
    point ``u`` (for ``delta > 0``); its Lagrange dual (multiplier ``xi`` of ``1'p = 1``, ``lam >= 0``
    of the divergence) is ``min_{xi, lam >= 0} xi + lam delta + (1/N) sum_j lam phi*((l_j - xi) / lam)``,
    with ``phi*`` the convex conjugate: ``phi*(s) = s / (1 - s)`` for ``s < 1`` (Hellinger) and
    ``phi*(s) = max(s, -1)`` for ``s <= 1`` (TV). Joining this minimum with the outer one:

    - Hellinger: ``lam phi*(s / lam) = lam^2 / (lam - s) - lam``; with ``tau_j = lam + xi - l_j > 0``,
      ``minimize xi + (delta - 1) lam + (1/N) sum_j beta_j - gamma y_hat'z`` s.t. ``l_j + tau_j <=
      xi + lam`` and ``beta_j tau_j >= lam^2`` (rotated second-order cones ``||(2 lam, beta_j - tau_j)||
      <= beta_j + tau_j``);
    - TV: ``minimize xi + delta lam + (1/N) sum_j beta_j - gamma y_hat'z`` s.t. ``beta_j >= l_j - xi``,
      ``beta_j >= -lam``, ``l_j <= xi + lam``, an LP in the losses ``l_j``.

    The losses enter as convex quadratics bounded above, so both are second-order cone programs. The
    program is built once per ``(N, n, ambiguity)`` as a DPP cvxpy problem with parameters ``E``,
    ``y_hat``, ``gamma``, ``delta`` (``gamma y_hat'z`` is written ``gamma mu`` with ``mu = y_hat'z``)
    and solved with Clarabel through diffcp. The errors are rescaled internally to unit root mean
    square (and ``y_hat`` by the square of the same factor), which leaves the weights unchanged.

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
        risk grows like ``sqrt(delta)`` near 0, so its gradient w.r.t. ``delta`` diverges as
        ``delta -> 0``: parametrise a learned ``delta`` away from 0.
    ambiguity : {"hellinger", "tv"}
    solver_args : dict, optional
        Clarabel settings that override :data:`CLARABEL_SETTINGS` (``tol_gap_abs``, ``max_iter``...).

    Returns
    -------
    Tensor of shape (*batch, n)
        Weights, differentiable w.r.t. ``errors``, ``y_hat``, ``gamma`` and ``delta``. Elements with
        ``delta == 0`` and the Hellinger set are solved by :func:`nominal_layer` (the dual multiplier
        ``lam`` of the divergence is unbounded there); their gradient w.r.t. ``delta`` is 0, the
        one-sided derivative being infinite.

    Notes
    -----
    Cost at the paper's size (``n = 20``, ``N = 104``, one core): the forward solve alone takes about
    12 ms per element, but with gradients diffcp builds and solves its dense derivative system (the
    only exact mode; ``lsqr`` is off by several percent): about 0.3 s (TV) and 0.75 s (Hellinger) per
    element for forward + backward, linear in the batch size.

    Raises
    ------
    ShapeError, NonFiniteError
        Inputs of the wrong shape or with NaN/inf values.
    ConfigError
        An unknown ambiguity set or a negative ``delta``.
    SolverError
        If the cone solver returns non-finite or infeasible weights (diffcp does not pass on
        Clarabel's status, so the weights are checked: ``z >= -1e-6``, ``|1'z - 1| <= 1e-6``).
    """
    if ambiguity not in AMBIGUITY_SETS:
        raise ConfigError(f"unknown ambiguity set {ambiguity!r}; choose one of {AMBIGUITY_SETS}")
    E, y, (g, d), batch = _check_inputs(errors, y_hat, gamma=gamma, delta=delta)
    if bool((d < 0).any()):
        raise ConfigError(
            f"delta (the size of the ambiguity set) must be >= 0, got min {float(d.min()):.3g}; "
            "parametrise a learned delta as softplus(.) or exp(.)"
        )
    N, n = E.shape[-2:]
    flat = (E.reshape(-1, N, n), y.reshape(-1, n), g.reshape(-1), d.reshape(-1))
    z = torch.empty(flat[1].shape, dtype=E.dtype, device=E.device)
    exact = d.reshape(-1) == 0 if ambiguity == "hellinger" else torch.zeros_like(flat[2], dtype=torch.bool)
    if bool(exact.any()):  # the Hellinger dual is not attained at delta = 0 (lam -> inf): solve the QP
        z = z.index_put((exact,), nominal_layer(flat[0][exact], flat[1][exact], flat[2][exact]))
    if not bool(exact.all()):
        cone = ~exact
        z = z.index_put((cone,), _solve_cone(*(t[cone] for t in flat), ambiguity, solver_args))
    return z.reshape(*batch, n)


def _solve_cone(
    E: Tensor, y: Tensor, g: Tensor, d: Tensor, ambiguity: str, solver_args: dict[str, Any] | None
) -> Tensor:
    """The cone program of :func:`dro_layer` for ``E (B, N, n)``, ``y (B, n)``, ``g (B,)``, ``d (B,)``."""
    B, N, n = E.shape
    with torch.no_grad():  # the minimiser is invariant to E -> sE, y_hat -> s^2 y_hat: s needs no gradient
        rms = E.square().mean((-2, -1)).sqrt()
        s = torch.where(rms > 0, rms.reciprocal(), torch.ones_like(rms))
    params = (
        (E * s[:, None, None]).double(),
        (y * s[:, None].square()).double(),
        g.double(),
        d.double(),
    )
    args = {**CLARABEL_SETTINGS, **(solver_args or {})}
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        args["mode"] = "dense"  # exact derivative (diffcp forwards "mode" to Clarabel without a backward)
    (z,) = _cone_layer(N, n, ambiguity)(*params, solver_args=args)
    with torch.no_grad():  # diffcp does not report Clarabel's status: check what came back
        bad = (
            ~torch.isfinite(z).all(-1)
            | (z.amin(-1) < -FEASIBILITY_TOL)
            | ((z.sum(-1) - 1).abs() > FEASIBILITY_TOL)
        )
    if bool(bad.any()):
        idx = [(int(i),) for i in bad.nonzero().squeeze(-1)]
        raise SolverError(
            f"dro_layer ({ambiguity}): the cone solver returned non-finite or infeasible weights at batch "
            f"indices {format_indices(idx)} (of the elements solved as cone programs). Check the scale of "
            "y_hat and gamma against the errors, or pass solver_args={'max_iter': ...}.",
            idx,
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

    def __init__(self, ambiguity: str = "hellinger") -> None:
        super().__init__()
        if ambiguity not in AMBIGUITY_SETS:
            raise ConfigError(f"unknown ambiguity set {ambiguity!r}; choose one of {AMBIGUITY_SETS}")
        self.ambiguity = ambiguity

    def forward(self, errors: Tensor, y_hat: Tensor, gamma: Tensor | float, delta: Tensor | float) -> Tensor:
        return dro_layer(errors, y_hat, gamma, delta, self.ambiguity)

    def extra_repr(self) -> str:
        return f"ambiguity={self.ambiguity!r}"


def dro_problem(N: int, n: int, ambiguity: str) -> tuple[cp.Problem, list[cp.Parameter], cp.Variable]:
    """The DPP cvxpy problem of :func:`dro_layer` (see its docstring for the formulation).

    Parameters
    ----------
    N, n : int
        Number of error rows and of assets.
    ambiguity : {"hellinger", "tv"}

    Returns
    -------
    problem : cvxpy.Problem
    parameters : list of cvxpy.Parameter
        ``[E (N, n), y_hat (n,), gamma (), delta ()]``, in this order.
    z : cvxpy.Variable of shape (n,)
        The weights.
    """
    if ambiguity not in AMBIGUITY_SETS:
        raise ConfigError(f"unknown ambiguity set {ambiguity!r}; choose one of {AMBIGUITY_SETS}")
    E, y = cp.Parameter((N, n), name="errors"), cp.Parameter(n, name="y_hat")
    gamma, delta = cp.Parameter(name="gamma"), cp.Parameter(nonneg=True, name="delta")
    z, c, mu = cp.Variable(n, nonneg=True, name="z"), cp.Variable(name="c"), cp.Variable(name="mu")
    xi, lam, beta = cp.Variable(name="xi"), cp.Variable(nonneg=True, name="lam"), cp.Variable(N, name="beta")
    loss = cp.square(E @ z - c)
    constraints = [cp.sum(z) == 1, mu == y @ z]
    if ambiguity == "hellinger":
        tau = cp.Variable(N, nonneg=True, name="tau")
        constraints += [
            loss + tau <= xi + lam,
            cp.SOC(beta + tau, cp.vstack([2 * lam * np.ones(N), beta - tau]), axis=0),
        ]
        risk = xi + (delta - 1) * lam + cp.sum(beta) / N
    else:
        constraints += [beta >= loss - xi, beta >= -lam, loss <= xi + lam]
        risk = xi + delta * lam + cp.sum(beta) / N
    problem = cp.Problem(cp.Minimize(risk - gamma * mu), constraints)
    return problem, [E, y, gamma, delta], z


@functools.lru_cache(maxsize=32)
def _cone_layer(N: int, n: int, ambiguity: str) -> Any:
    from cvxpylayers.torch import CvxpyLayer

    problem, params, z = dro_problem(N, n, ambiguity)
    return CvxpyLayer(problem, parameters=params, variables=[z], solver_args={"solve_method": "Clarabel"})


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
    "DROLayer",
    "NominalLayer",
    "dro_layer",
    "dro_problem",
    "error_windows",
    "nominal_layer",
    "prediction_errors",
]
