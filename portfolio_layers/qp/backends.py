"""The ``"qpth"`` and ``"cvxpylayers"`` backends of :func:`~portfolio_layers.qp.solve_qp`.

Both are imported lazily and used under the same API, mainly to cross-check the ``"ipm"``
backend and for benchmarks. Neither reports statuses: ``status`` is derived here from the primal
residual of the returned point (SOLVED if below ``max(1e3 * tol, 1e-6)``, else NUMERICAL_ERROR),
multipliers are NaN and ``iterations`` is 0.

- qpth (``QPFunction``, dense batched interior point) uses batched LU, which with more than one
  thread on torch 2.13 CPU can return invalid pivots; it is run (forward and backward) with
  ``torch.set_num_threads(1)``. Inputs are expanded to the full batch before the call, so
  gradients of broadcast inputs are summed like those of the ``ipm`` backend. Bounds become rows of
  ``G``, so every batch element must have the same finite-bound pattern.
- cvxpylayers builds one parametrized cvxpy problem per shape (cached) and solves the batch one
  problem at a time through diffcp (``solve_method`` Clarabel by default, or SCS). ``P`` enters
  through a Cholesky factor ``L`` of ``P + 1e-12 max|diag P| I`` (``1/2 ||L'x||^2``) so the
  problem is DPP.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import Tensor

from portfolio_layers.errors import ConfigError, InputError
from portfolio_layers.qp.problem import QPData
from portfolio_layers.qp.solution import QPSolution, Status


def solve(backend: str, data: QPData, tol: float, max_iter: int, solver: str | None = None) -> QPSolution:
    """Solve ``data`` with ``backend`` in {"qpth", "cvxpylayers"}; see the module docstring."""
    if backend == "qpth":
        x = _solve_qpth(data, tol, max_iter)
    elif backend == "cvxpylayers":
        x = _solve_cvxpylayers(data, solver or "Clarabel")
    else:
        raise ConfigError(f"unknown backend {backend!r}")
    return _wrap(data, x, tol)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops with one intra-op thread, restoring the previous setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Isolated(torch.autograd.Function):
    """Run ``fn(*tensors)`` (forward and backward) single-threaded, as one autograd node."""

    @staticmethod
    def forward(ctx, fn, *tensors):  # noqa: ANN001
        ctx.inputs = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in tensors]
        with torch.enable_grad(), single_thread():
            ctx.out = fn(*ctx.inputs)
        return ctx.out.detach()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        req = [i for i, t in enumerate(ctx.inputs) if t is not None and t.requires_grad]
        grads = [None] * len(ctx.inputs)
        if req and ctx.out.requires_grad:
            with single_thread():
                got = torch.autograd.grad(ctx.out, [ctx.inputs[i] for i in req], g, allow_unused=True)
            for i, gi in zip(req, got, strict=True):
                grads[i] = gi
        return (None, *grads)


def _bound_rows(data: QPData, backend: str) -> tuple[Tensor, Tensor]:
    """Bounds as rows ``G_b x <= h_b`` (same finite pattern required across the batch)."""
    rows_G, rows_h = [], []
    n = data.n
    eye = torch.eye(n, dtype=data.P.dtype, device=data.P.device)
    for bound, sign in ((data.lb, -1.0), (data.ub, 1.0)):
        fin = torch.isfinite(bound)
        cols = fin.all(0)
        if bool((fin.any(0) & ~cols).any()):
            raise InputError(
                f"backend {backend!r} needs the same finite-bound pattern for every batch element"
            )
        idx = cols.nonzero().squeeze(-1)
        rows_G.append((sign * eye[idx]).expand(data.P.shape[0], -1, -1))
        rows_h.append(sign * bound[:, idx])
    return torch.cat(rows_G, 1), torch.cat(rows_h, 1)


def _solve_qpth(data: QPData, tol: float, max_iter: int) -> Tensor:
    try:
        from qpth.qp import QPFunction
    except ImportError as exc:
        raise ConfigError("backend 'qpth' needs qpth: pip install --no-deps qpth==0.0.18") from exc
    B = data.P.shape[0]
    Gb, hb = _bound_rows(data, "qpth")
    G = Gb if data.G is None else torch.cat([data.G, Gb], 1)
    h = hb if data.h is None else torch.cat([data.h, hb], 1)
    if G.shape[1] == 0:  # qpth needs at least one inequality: 0'x <= 1
        G = torch.zeros(B, 1, data.n, dtype=data.P.dtype, device=data.P.device)
        h = torch.ones(B, 1, dtype=data.P.dtype, device=data.P.device)
    P = 0.5 * (data.P + data.P.mT)

    def run(P, q, G, h, A, b):  # noqa: ANN001, ANN202
        fn = QPFunction(eps=tol, verbose=-1, maxIter=max_iter, check_Q_spd=False)
        empty = torch.empty(0, dtype=P.dtype, device=P.device)
        return fn(P, -q, G, h, empty if A is None else A, empty if b is None else b)

    return _Isolated.apply(run, P, data.q, G, h, data.A, data.b)


@functools.lru_cache(maxsize=32)
def _cvxpy_layer(n: int, p: int, m: int, lb_idx: tuple[int, ...], ub_idx: tuple[int, ...]):
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    x = cp.Variable(n)
    L, q = cp.Parameter((n, n)), cp.Parameter(n)
    params, cons = [L, q], []
    if p:
        A, b = cp.Parameter((p, n)), cp.Parameter(p)
        params += [A, b]
        cons.append(A @ x == b)
    if m:
        G, h = cp.Parameter((m, n)), cp.Parameter(m)
        params += [G, h]
        cons.append(G @ x <= h)
    if lb_idx:
        lb = cp.Parameter(len(lb_idx))
        params.append(lb)
        cons.append(x[list(lb_idx)] >= lb)
    if ub_idx:
        ub = cp.Parameter(len(ub_idx))
        params.append(ub)
        cons.append(x[list(ub_idx)] <= ub)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L.T @ x) - q @ x), cons)
    return CvxpyLayer(prob, parameters=params, variables=[x], solver="DIFFCP")


def _solve_cvxpylayers(data: QPData, solver: str) -> Tensor:
    try:
        import cvxpylayers.torch  # noqa: F401
    except ImportError as exc:
        raise ConfigError("backend 'cvxpylayers' needs cvxpylayers: pip install cvxpylayers") from exc
    lb_fin, ub_fin = torch.isfinite(data.lb), torch.isfinite(data.ub)
    for fin, name in ((lb_fin, "lb"), (ub_fin, "ub")):
        if bool((fin.any(0) & ~fin.all(0)).any()):
            raise InputError(
                f"backend 'cvxpylayers' needs the same finite pattern of {name} in every element"
            )
    lb_idx = tuple(lb_fin.all(0).nonzero().squeeze(-1).tolist())
    ub_idx = tuple(ub_fin.all(0).nonzero().squeeze(-1).tolist())
    layer = _cvxpy_layer(data.n, data.p, data.m, lb_idx, ub_idx)
    P = 0.5 * (data.P + data.P.mT)
    shift = 1e-12 * P.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0).detach()
    L = torch.linalg.cholesky(P + shift[:, None, None] * torch.eye(data.n, dtype=P.dtype, device=P.device))
    args = [L, data.q]
    if data.p:
        args += [data.A, data.b]
    if data.m:
        args += [data.G, data.h]
    if lb_idx:
        args.append(data.lb[:, list(lb_idx)])
    if ub_idx:
        args.append(data.ub[:, list(ub_idx)])
    (x,) = layer(*args, solver_args={"solve_method": solver})
    return x


def _wrap(data: QPData, x: Tensor, tol: float) -> QPSolution:
    B, shape = data.P.shape[0], data.batch_shape
    with torch.no_grad():
        viol = torch.zeros(B, dtype=x.dtype, device=x.device)
        viol = torch.maximum(viol, (data.lb - x).clamp_min(0).amax(-1))
        viol = torch.maximum(viol, (x - data.ub).clamp_min(0).amax(-1))
        if data.A is not None:
            viol = torch.maximum(viol, ((data.A @ x.unsqueeze(-1)).squeeze(-1) - data.b).abs().amax(-1))
        if data.G is not None:
            viol = torch.maximum(
                viol, ((data.G @ x.unsqueeze(-1)).squeeze(-1) - data.h).clamp_min(0).amax(-1)
            )
        viol = torch.where(torch.isfinite(x).all(-1), viol, torch.inf)
        status = torch.where(viol <= max(1e3 * tol, 1e-6), Status.SOLVED, Status.NUMERICAL_ERROR).to(
            torch.int8
        )

    def nan(k: int) -> Tensor:
        return torch.full((*shape, k), torch.nan, dtype=x.dtype, device=x.device)

    nanb = torch.full(shape, torch.nan, dtype=x.dtype, device=x.device)
    return QPSolution(
        x=x.reshape(*shape, data.n),
        y=nan(data.p),
        lam=nan(data.m),
        z_lower=nan(data.n),
        z_upper=nan(data.n),
        status=status.reshape(shape),
        iterations=torch.zeros(shape, dtype=torch.int32, device=x.device),
        primal_residual=viol.reshape(shape),
        dual_residual=nanb,
        duality_gap=nanb,
    )
