"""``solve_qp`` (the functional core) and the thin ``QPLayer`` module.

``solve_qp`` validates its input, picks the backend (:func:`auto_backend`) and hands off to a solve path
of :mod:`portfolio_layers.qp.solve_paths` (or of :mod:`portfolio_layers.qp.backends`).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.qp.active_set import daqp_available
from portfolio_layers.qp.constraints import LinearConstraints, lift
from portfolio_layers.qp.factor import FactorCov
from portfolio_layers.qp.l1 import L1Cost, attach, dense_split
from portfolio_layers.qp.problem import (
    QPData,
    as_tensor,
    canonicalize,
    check_finite,
    check_P,
    raise_crossed_bounds,
)
from portfolio_layers.qp.solution import QPSolution
from portfolio_layers.qp.solve_paths import _dense, _solve_active_set, _solve_ipm

BACKENDS = ("auto", "ipm", "active_set", "qpth", "cvxpylayers")
AUX_RIDGE = 1e-9
AUTO_FEW = 4
"""``backend="auto"``: batches of at most this many elements count as few (:func:`auto_backend`)."""
AUTO_N = {(False, False): 200, (False, True): 300, (True, False): 50, (True, True): 200}
"""``backend="auto"``: the largest ``n`` solved by "active_set", by (factor-form ``P``, few elements)."""


def default_tol(dtype: torch.dtype) -> float:
    """Default tolerance of the ``ipm`` backend: ``1e-10`` in float64, ``1e-6`` in float32."""
    return 1e-10 if dtype == torch.float64 else 1e-6


def solve_qp(
    P: Tensor,
    q: Tensor,
    A: Tensor | None = None,
    b: Tensor | None = None,
    G: Tensor | None = None,
    h: Tensor | None = None,
    lb: Tensor | float | None = None,
    ub: Tensor | float | None = None,
    *,
    tol: float | None = None,
    max_iter: int = 50,
    backend: str = "ipm",
    warm_start: QPSolution | Tensor | None = None,
    throw: bool = True,
    l1: L1Cost | None = None,
) -> QPSolution:
    """Solve a batch of convex QPs, differentiably.

    ``minimize 1/2 x'Px - q'x (+ kappa'|x - x0|)  s.t.  Ax = b, Gx <= h, lb <= x <= ub (, 1'|x - x0| <= tau)``

    Parameters
    ----------
    P : Tensor of shape (*batch, n, n) or FactorCov
        Positive semidefinite cost matrix (symmetrized as ``(P + P') / 2``), or ``P = F F' + diag(d)``
        in factor form (``F (*batch, n, k)``, ``d (*batch, n) > 0``): then no ``n x n`` matrix is
        formed (``O(n (k + p + m)^2)`` per iteration, gradients to ``F`` and ``d``; the ``ipm``
        backend only, the others get the dense ``P``).
    q : Tensor of shape (*batch, n)
        Linear term, entering with a minus sign (expected returns in the portfolio use).
    A : Tensor of shape (*batch, p, n), optional
    b : Tensor of shape (*batch, p), optional
    G : Tensor of shape (*batch, m, n), optional
    h : Tensor of shape (*batch, m), optional
    lb, ub : float or Tensor of shape (n,) or (*batch, n), optional
        Bounds; ``None`` or infinite entries mean unbounded.
    tol : float, optional
        Tolerance on the residuals (default ``1e-10`` in float64, ``1e-6`` in float32).
    max_iter : int
        Iteration limit of the interior point (and of qpth); ``"active_set"`` allows
        ``max_iter * (n + p + m)`` active-set changes per element.
    backend : {"ipm", "active_set", "auto", "qpth", "cvxpylayers"}
        ``"ipm"`` is this package's batched interior point with implicit KKT backward (any device,
        large ``n``). ``"active_set"`` solves each element with DAQP on the CPU and differentiates
        through its active set (:mod:`portfolio_layers.qp.active_set`; fastest for small ``n``;
        allows ``lb == ub``). ``"auto"`` picks one of the two (:func:`auto_backend`).
    warm_start : QPSolution or Tensor of shape (*batch, n), optional
        A previous solution to start from (``ipm``; ``active_set``, which starts DAQP from the active
        set of the multipliers, or of ``x`` alone). It changes the work, never the solution.
    throw : bool
        If True, raise when an element is not solved (the error names the batch indices); if
        False, report per-element statuses in ``QPSolution.status`` and never raise for a solve.
    l1 : L1Cost, optional
        An L1 trading cost ``kappa'|x - x0|`` and / or turnover limit ``1'|x - x0| <= tau``
        (:class:`~portfolio_layers.qp.l1.L1Cost`; its batch dimensions broadcast with the others).
        The ``ipm`` backend handles it natively (``n x n`` or factor-form systems, gradients to
        ``x0``, ``kappa`` and ``tau``); ``"auto"`` then picks ``ipm``; the other backends solve the
        split problem over ``[x, u, v]`` densely, with a ridge ``1e-9 max|P|`` on ``u, v``.

    Returns
    -------
    QPSolution
        ``x (*batch, n)`` is differentiable w.r.t. every tensor input; gradients of broadcast inputs
        are summed over the batch.

    Raises
    ------
    ShapeError, NonFiniteError, InputError
        Bad input (always raised, whatever ``throw``), including a non-finite ``warm_start`` and,
        for ``"ipm"``, ``lb == ub``; the message names the argument and the first bad entries.
    NotPSDError
        ``P`` has a clearly negative eigenvalue (below ``-100 n eps max|P|``).
    InfeasibleError, ConvergenceError, SolverError
        With ``throw=True``, when some element is infeasible / hit ``max_iter`` / failed. Crossed
        bounds ``lb > ub`` raise :class:`InfeasibleError` before the solve, naming the entries.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive int, got {max_iter!r}")
    data = canonicalize(P, q, A, b, G, h, lb, ub)
    if l1 is not None:
        data = attach(data, l1)
    if throw:  # found before any solve; with throw=False such elements are PRIMAL_INFEASIBLE
        raise_crossed_bounds(data)
    tol = default_tol(data.P.dtype) if tol is None else float(tol)
    if not tol > 0:
        raise ConfigError(f"tol must be positive, got {tol}")
    if backend == "auto":
        backend = auto_backend(data)
    if data.l1 is not None and backend != "ipm":
        sol = _solve_split_dense(data, tol, max_iter, backend, warm_start)
    elif backend == "ipm":
        sol = _solve_ipm(data, tol, max_iter, warm_start)
    elif backend == "active_set":
        sol = _solve_active_set(data, tol, max_iter, warm_start)
    else:
        from portfolio_layers.qp import backends

        if warm_start is not None:
            raise ConfigError(f"warm_start is only supported by backend='ipm', not {backend!r}")
        sol = backends.solve(backend, _dense(data), tol, max_iter)
    if throw:
        sol.raise_on_failure()
    return sol


def auto_backend(data: QPData) -> str:
    """The backend that ``backend="auto"`` picks for ``data``: "active_set" or "ipm".

    "active_set" (DAQP per element, see :mod:`portfolio_layers.qp.active_set`) on CPU when DAQP is
    installed and ``n`` is at most ``AUTO_N[factor form, few]``: with a dense ``P``, 200 at any batch size
    and 300 for a batch of at most ``AUTO_FEW`` elements; with a :class:`FactorCov` (which the interior
    point solves in ``O(n k^2)`` and the active set densely) 50 and 200. Otherwise "ipm" (always on
    CUDA, and with an L1 cost, which it handles natively). The active set's cost is about ``n^3`` per
    element (DAQP's setup and one working-set change per active constraint), the interior point's a
    fixed per-call overhead (5-10 ms on one thread) plus batched arithmetic; the thresholds are the
    crossovers measured with ``benchmarks/qp_layer.py``'s problems (long-only portfolios, 5-20 names
    held, one thread): at ``n = 200`` and batch 64 the two are within 10% of each other.
    """
    if data.P.device.type != "cpu" or not daqp_available() or data.l1 is not None:
        return "ipm"
    limit = AUTO_N[isinstance(data.P, FactorCov), data.q.shape[0] <= AUTO_FEW]
    return "active_set" if data.n <= limit else "ipm"


def _solve_split_dense(
    data: QPData, tol: float, max_iter: int, backend: str, warm_start: QPSolution | Tensor | None
) -> QPSolution:
    """An L1 cost on a backend other than ``ipm``: the split problem over ``[x, u, v]``, formed densely."""
    if warm_start is not None:
        raise ConfigError(f"warm_start with an l1 cost needs backend='ipm', not {backend!r}")
    z = dense_split(data, AUX_RIDGE)
    shaped = (None if v is None else v.reshape(*data.batch_shape, *v.shape[1:]) for v in z.tensors())
    sol = solve_qp(*shaped, tol=tol, max_iter=max_iter, backend=backend, throw=False)
    n, p, m = data.n, data.p, data.m
    return QPSolution(
        sol.x[..., :n],
        sol.y[..., :p],
        sol.lam[..., :m],
        sol.z_lower[..., :n],
        sol.z_upper[..., :n],
        sol.status,
        sol.iterations,
        sol.primal_residual,
        sol.dual_residual,
        sol.duality_gap,
    )


class QPLayer(nn.Module):
    """Differentiable portfolio QP with constraints fixed at construction.

    ``forward(P, q, x0=None)`` returns ``argmin_w 1/2 w'Pw - q'w`` subject to ``constraints``.

    Parameters
    ----------
    constraints : LinearConstraints
        Built with the constructors of :mod:`portfolio_layers.qp.constraints` (``fully_invested``,
        ``long_only``, ``weight_cap``, ``group_caps``, ``leverage_limit``, ``turnover_limit``) and
        :func:`~portfolio_layers.qp.constraints.combine`. Stored as buffers (they follow ``.to()``).
    backend, tol, max_iter
        Passed to :func:`solve_qp`.
    throw : bool
        If True, a batch element that is not solved raises (see :func:`solve_qp`). If False,
        :meth:`solve` reports it in ``QPSolution.status``; :meth:`forward`, which returns weights
        only, warns (``RuntimeWarning``) naming the failed batch indices and their statuses, since
        the weights of such an element are the solver's last iterate and need not satisfy the
        constraints. Call :meth:`solve` to get the statuses.

    Notes
    -----
    A turnover limit alone is handled natively by the solver (``l1=L1Cost(x0, 0, limit)`` of
    :func:`solve_qp`: no auxiliary variables, a :class:`FactorCov` ``P`` keeps its factor form).
    A leverage limit adds ``n`` auxiliary variables ``u >= |w|``, and with it a turnover limit is lifted
    as well (``t >= |w - x0|``); the returned weights are the first ``n`` entries. The auxiliary variables get
    a ridge ``1e-9 * max|P|`` in the cost so that they are unique where their limit is not binding
    (otherwise the active-set polish and the backward face a singular system); this perturbs the
    weights by about ``1e-9`` relative. With these limits a :class:`FactorCov` ``P`` is expanded to
    the dense ``F F' + diag(d)``: the ``2n + 1`` rows per limit make each iteration ``O(n^3)``
    anyway, and the nearly cost-free auxiliary variables leave the capacitance factorization of
    :mod:`portfolio_layers.qp.lowrank` badly conditioned (its diagonal would be the ridge).
    """

    def __init__(
        self,
        constraints: LinearConstraints,
        *,
        backend: str = "ipm",
        tol: float | None = None,
        max_iter: int = 50,
        throw: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(constraints, LinearConstraints):
            raise ConfigError("constraints must be a LinearConstraints (see portfolio_layers.qp.constraints)")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.native_turnover = constraints.max_gross is None
        lifted = lift(constraints, turnover=not self.native_turnover)
        self.n, self.N = constraints.n, int(lifted["N"])
        self.needs_x0 = constraints.max_turnover is not None
        self.max_turnover = constraints.max_turnover
        self._turnover_rows = lifted["turnover_rows"]
        for name in ("A", "b", "G", "h", "lb", "ub"):
            self.register_buffer(name, lifted[name])
        self.backend, self.tol, self.max_iter, self.throw = backend, tol, max_iter, throw

    def solve(self, P: Tensor, q: Tensor, x0: Tensor | None = None) -> QPSolution:
        """Full :class:`QPSolution` of the (lifted) problem; ``x[..., :n]`` are the weights.

        Parameters
        ----------
        P : Tensor of shape (*batch, n, n) or FactorCov
            Sets the dtype and device; ``q`` and ``x0`` given as arrays or sequences are converted to them.
        q : Tensor of shape (*batch, n)
        x0 : Tensor of shape (*batch, n) or (n,), optional
            Previous weights (finite); required when a turnover limit is set.

        Raises
        ------
        InputError, ShapeError, NonFiniteError
            Bad input, naming the argument (``x0`` is checked before it enters ``h``).
        """
        P = check_P(P)
        q = as_tensor("q", q, P)
        if P.shape[-1] != self.n or q.dim() == 0 or q.shape[-1] != self.n:
            raise ShapeError(
                f"QPLayer was built for n = {self.n}; got P {tuple(P.shape)}, q {tuple(q.shape)}"
            )
        dt = torch.promote_types(P.dtype, q.dtype)
        k = self.N - self.n
        if k and isinstance(P, FactorCov):  # O(n) auxiliary rows: solved densely (see Notes)
            P = P.dense()
        if k:  # auxiliary variables get a tiny ridge so that they are unique (see Notes)
            ridge = AUX_RIDGE * P.detach().abs().amax((-2, -1), keepdim=True).clamp_min(1e-300)
            eye = torch.cat([torch.zeros(self.n, dtype=dt), torch.ones(k, dtype=dt)]).to(P.device)
            P = torch.nn.functional.pad(P, (0, k, 0, k)) + ridge * torch.diag(eye)
            q = torch.nn.functional.pad(q, (0, k))
        A, b, G, h, lb, ub = (getattr(self, v).to(dt) for v in ("A", "b", "G", "h", "lb", "ub"))
        l1 = None
        if self.needs_x0:
            if x0 is None:
                raise ConfigError("this QPLayer has a turnover limit: pass x0 (the previous weights)")
            x0 = as_tensor("x0", x0, P)
            if x0.dim() == 0 or x0.shape[-1] != self.n:
                raise ShapeError(
                    f"x0 must have shape (n,) or (*batch, n) with n = {self.n}, got {tuple(x0.shape)}"
                )
            check_finite("x0", x0, "the previous weights must be finite (0 for an asset not held)")
            rows = self._turnover_rows
            try:
                batch = torch.broadcast_shapes(x0.shape[:-1], P.shape[:-2], q.shape[:-1])
            except RuntimeError as exc:
                raise ShapeError(
                    f"the batch dimensions of x0 {tuple(x0.shape)}, P {tuple(P.shape)} and "
                    f"q {tuple(q.shape)} do not broadcast"
                ) from exc
            x0 = x0.to(dt)
            if self.native_turnover:
                l1 = L1Cost(x0, 0.0, self.max_turnover)
            else:
                h = h.expand(*batch, h.shape[-1]).clone()
                h[..., rows] = h[..., rows] + torch.cat([x0, -x0], -1).expand(*batch, 2 * self.n)
        elif x0 is not None:
            raise ConfigError("x0 is only used by a turnover limit, and this QPLayer has none")
        return solve_qp(
            P,
            q,
            A if A.shape[0] else None,
            b if A.shape[0] else None,
            G if G.shape[0] else None,
            h if G.shape[0] else None,
            lb,
            ub,
            tol=self.tol,
            max_iter=self.max_iter,
            backend=self.backend,
            throw=self.throw,
            l1=l1,
        )

    def forward(self, P: Tensor, q: Tensor, x0: Tensor | None = None) -> Tensor:
        """Weights ``(*batch, n)`` (arguments as in :meth:`solve`).

        With ``throw=False``, warns if some element was not solved (see the class docstring).
        """
        sol = self.solve(P, q, x0)
        if not sol.ok:
            warnings.warn(
                "QPLayer: some problems were not solved, and their weights need not satisfy the constraints: "
                + "; ".join(sol.messages())
                + ". Call QPLayer.solve(P, q, x0) for the per-element QPSolution.status, or build the layer "
                "with throw=True to raise instead",
                RuntimeWarning,
                stacklevel=2,
            )
        return sol.x[..., : self.n]

    def extra_repr(self) -> str:
        return f"n={self.n}, lifted_n={self.N}, backend={self.backend!r}"
