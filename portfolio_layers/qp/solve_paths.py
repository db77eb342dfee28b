"""The native backends' solve paths of :func:`~portfolio_layers.qp.layer.solve_qp`.

``_solve_ipm`` (the batched interior point, :class:`~portfolio_layers.qp.autograd.IPMFunction`) and
``_solve_active_set`` (DAQP per element, :mod:`portfolio_layers.qp.active_set`) with the input
conversion they share: the scaling of the cost by ``max|P|`` and of the L1 terms with it, the
positive-semidefiniteness check (:func:`check_psd`), the validation of ``warm_start``, and the dense
``P`` of a :class:`~portfolio_layers.qp.factor.FactorCov` for the other backends.
:mod:`portfolio_layers.qp.layer` routes ``solve_qp`` here; the backend choice stays there.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from portfolio_layers.errors import NotPSDError, ShapeError
from portfolio_layers.qp.active_set import ActiveSetFunction, DualActiveSet, Normalized, as_tensor_like
from portfolio_layers.qp.autograd import Carrier, IPMFunction
from portfolio_layers.qp.factor import FactorCov, normalize
from portfolio_layers.qp.ipm import InteriorPoint, IPMState, check_distinct_bounds
from portfolio_layers.qp.l1 import L1Data
from portfolio_layers.qp.problem import QPData, as_tensor, check_finite
from portfolio_layers.qp.solution import QPSolution, Status
from portfolio_layers.qp.warm import warm_state

POLISH_MU_FACTOR = 1e-2
"""The interior point's ``polish_mu`` with a :class:`FactorCov` ``P`` (1e-3 with a dense one): there a polish
round costs ``O(n r^2)``, about an interior-point iteration, not ``O(free^3)``, so it is tried an iteration
earlier. Measured (``benchmarks/qp_layer.py`` problems, CPU ms forward+backward, 1e-3 -> 1e-2): n = 500,
batch 1: 7.1 -> 6.3 (no cap), 7.5 -> 5.7 (cap 10%); n = 250, batch 64, cap: 42.7 -> 31.3; n = 100,
batch 64: 19.6 -> 11.6; but n = 1000, batch 1, cap: 7.3 -> 13.8 (the early guess needs 11 corrections), which
15 corrections (10 with a dense ``P``) bring back to 8.9 (the other cells unchanged within noise)."""


def _solve_active_set(
    data: QPData, tol: float, max_iter: int, warm_start: QPSolution | Tensor | None
) -> QPSolution:
    """The ``"active_set"`` backend (see :mod:`portfolio_layers.qp.active_set`)."""
    d = Normalized.of(data)
    warm = None
    if warm_start is not None:
        x, duals = _warm(data, warm_start, torch.from_numpy(d.c).to(data.q.dtype))
        if duals is not None:
            parts = [duals.zu - duals.zl] + [v for v in (duals.y, duals.lam) if v is not None]
            duals = torch.cat(parts, -1).to(torch.float64).numpy()
        warm = x.to(torch.float64).numpy(), duals
    solver = DualActiveSet(tol=tol, max_iter=max_iter * (data.n + data.p + data.m))
    tensors = data.tensors()
    if isinstance(data.P, FactorCov):  # F in P's place, d last (see ActiveSetFunction)
        tensors = (data.P.F, *tensors[1:], data.P.d)
    if torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in tensors):
        out = [d]
        x = ActiveSetFunction.apply(solver, out, warm, *tensors)
        sol = out[1]
    else:  # nothing to differentiate: no autograd node (a tenth of a small call)
        sol = solver.solve(d, warm, active=False)
        x = as_tensor_like(sol.x, data.q)
    # an indefinite P fails DAQP's Cholesky (a failed element), so only then is P checked (~6 us at n = 20)
    if (sol.status != Status.SOLVED).any() and d.not_psd():
        check_psd(torch.from_numpy(d.P), data.batch_shape)
    shape, n, p, m = data.batch_shape, data.n, data.p, data.m
    # every other field: views of one array
    y, lam, zl, zu, res = as_tensor_like(sol.packed, x).reshape(*shape, -1).split([p, m, n, n, 3], -1)
    dres, gap, pres = res.unbind(-1)
    status, iterations = (
        torch.from_numpy(v).to(x.device).reshape(shape) for v in (sol.status, sol.iterations)
    )
    return QPSolution(
        x=x.reshape(*shape, n),
        y=y,
        lam=lam,
        z_lower=zl,
        z_upper=zu,
        status=status,
        iterations=iterations,
        primal_residual=pres,
        dual_residual=dres,
        duality_gap=gap,
    )


def _dense(data: QPData) -> QPData:
    """``data`` with a :class:`FactorCov` cost formed as a dense (differentiable) ``P``."""
    if isinstance(data.P, FactorCov):
        return QPData(data.P.dense(), *data.tensors()[1:], batch_shape=data.batch_shape)
    return data


def _solve_ipm(data: QPData, tol: float, max_iter: int, warm_start: QPSolution | Tensor | None) -> QPSolution:
    check_distinct_bounds(data)
    if isinstance(data.P, FactorCov):  # positive definite by construction (d > 0)
        Fs, ds, qs, c = normalize(data.P, data.q)
        cost, Pd = (None, Fs, ds), FactorCov(Fs.detach(), ds.detach())
    else:
        with torch.no_grad():  # max|P| bounds max|(P + P') / 2|
            c = torch.maximum(data.P.abs().amax((-2, -1)), data.q.abs().amax(-1))
            c = c.clamp_min(torch.finfo(data.P.dtype).tiny ** 0.5)
        Ps, qs = (data.P + data.P.mT) * (0.5 / c)[:, None, None], data.q / c[:, None]
        check_psd(Ps.detach(), data.batch_shape)
        cost, Pd = (Ps, None, None), Ps.detach()
    scaled = QPData(Pd, qs.detach(), *data.tensors()[2:], batch_shape=data.batch_shape)
    warm = _warm(scaled, warm_start, c)
    f64, factor = qs.dtype == torch.float64, isinstance(data.P, FactorCov)
    solver = InteriorPoint(
        tol=tol,
        max_iter=max_iter,
        shift=1e-13 if f64 else 1e-7,
        polish_mu=POLISH_MU_FACTOR if factor else 1e-3,
        polish_rounds=15 if factor else 10,
        polish_eps=1e-9 if f64 else 1e-5,
    )
    warm = None if warm is None else warm_state(replace(scaled, l1=_scaled_l1(data, c)), *warm)
    carrier = Carrier()
    x = IPMFunction.apply(solver, carrier, warm, *cost, qs, *data.tensors()[2:], *_l1_inputs(data, c))
    res = carrier.result
    st: IPMState = carrier.state()
    shape = data.batch_shape

    def out(v: Tensor | None, k: int, scale: bool) -> Tensor:
        if v is None:
            return torch.zeros(*shape, k, dtype=x.dtype, device=x.device)
        return (v * c[:, None] if scale else v).reshape(*shape, k)

    return QPSolution(
        x=x.reshape(*shape, data.n),
        y=out(st.y, data.p, True),
        lam=out(st.lam, data.m, True),
        z_lower=out(st.zl, data.n, True),
        z_upper=out(st.zu, data.n, True),
        status=res.status.reshape(shape),
        iterations=res.iterations.reshape(shape),
        primal_residual=res.primal_residual.reshape(shape),
        dual_residual=(res.dual_residual * c).reshape(shape),
        duality_gap=(res.gap * c).reshape(shape),
    )


def _scaled_l1(data: QPData, c: Tensor) -> L1Data | None:
    """``data.l1`` with ``kappa`` in the normalized units (divided by ``c (B,)``), detached."""
    if data.l1 is None:
        return None
    x0, kappa, tau = (None if v is None else v.detach() for v in _l1_inputs(data, c))
    return L1Data(x0, kappa, tau)


def _l1_inputs(data: QPData, c: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``x0``, ``kappa / c`` and ``tau`` of ``data.l1`` (differentiable), or three None."""
    if data.l1 is None:
        return None, None, None
    return data.l1.x0, data.l1.kappa / c[:, None], data.l1.tau


def check_psd(P: Tensor, batch_shape: tuple[int, ...]) -> None:
    """Raise :class:`NotPSDError` if some ``P (B, n, n)`` (normalized, max|P| <= 1) is indefinite."""
    n = P.shape[-1]
    M = P.clone()
    M.diagonal(dim1=-2, dim2=-1).add_(100.0 * n * torch.finfo(P.dtype).eps)
    _, info = torch.linalg.cholesky_ex(M)
    if not bool((info != 0).any()):
        return
    bad = (info != 0).nonzero().squeeze(-1)
    lam_min = torch.linalg.eigvalsh(P[bad]).amin(-1)
    idx = [tuple(int(i) for i in torch.unravel_index(k, batch_shape)) if batch_shape else () for k in bad]
    worst = float(lam_min.min())
    raise NotPSDError(
        f"P is not positive semidefinite at batch indices {idx[:10]} (smallest eigenvalue of P / max|P| is "
        f"{worst:.3g}); the problem is not convex. Build P as L L' (+ eps I), or shift it by its smallest "
        "eigenvalue"
    )


def _warm(d: QPData, ws: QPSolution | Tensor | None, c: Tensor) -> tuple[Tensor, IPMState | None] | None:
    """``warm_start`` validated: ``x (B, n)`` and its multipliers (None for a bare ``x``) divided by ``c``."""
    if ws is None:
        return None
    B, n = d.q.shape
    hint = "warm start from finite weights or from a solution whose elements were all solved (sol.ok)"
    if isinstance(ws, QPSolution):
        x = check_finite("warm_start.x", ws.x.detach(), hint).reshape(-1, n)
        if x.shape[0] != B:
            x = x.expand(B, n) if x.shape[0] == 1 else None
        if x is None:
            raise ShapeError(
                f"warm_start has batch {tuple(ws.x.shape[:-1])}, the problem {d.batch_shape}; warm start "
                "from a solution of this batch (or of a single problem)"
            )

        def rs(name: str, k: int) -> Tensor | None:
            if k == 0:
                return None
            v = check_finite(
                f"warm_start.{name}",
                getattr(ws, name).detach(),
                "the qpth and cvxpylayers backends give no multipliers: pass warm_start=solution.x instead",
            )
            return (v.reshape(-1, k) / c[:, None]).expand(B, k)

        return x, IPMState(
            x, rs("lam", d.m), rs("lam", d.m), rs("z_lower", n), rs("z_upper", n), rs("y", d.p)
        )
    ws = check_finite("warm_start", as_tensor("warm_start", ws, d.q).detach(), hint)
    want = (*d.batch_shape, n)
    fits = 0 < ws.dim() <= len(want) and ws.shape[-1] == n
    if not (fits and all(a in (1, w) for a, w in zip(ws.shape[::-1], want[::-1], strict=False))):
        raise ShapeError(f"warm_start must have shape (n,) or (*batch, n) = {want}, got {tuple(ws.shape)}")
    return ws.to(d.q.dtype).expand(*want).reshape(B, n), None
