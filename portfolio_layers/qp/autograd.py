"""The ``torch.autograd.Function`` of the interior-point backend: implicit KKT backward.

A polished element (the usual case, see :mod:`portfolio_layers.qp.polish`) is differentiated
through its active-set KKT system with the factorization computed by the polish (the exact
derivative where strict complementarity holds). Otherwise, at the returned point the KKT
conditions ``F(z, theta) = 0`` (stationarity, ``Ax = b``, ``Gx + s = h``, ``lam * s = mu``,
``z_l * (x - lb) = mu``, ``z_u * (ub - x) = mu``) are linearized;
the adjoint system is the reduced saddle system of :mod:`portfolio_layers.qp.kkt` with right-hand
side ``(dL/dx, 0)``, solved with the factorization computed once at the returned point and kept in
the autograd context (one pair of triangular solves per backward).

Degenerate points (an active constraint with a zero multiplier, redundant constraints) give finite
gradients: they are the derivative of the interior-point solution at its final (tiny) barrier
parameter, i.e. the active and inactive one-sided derivatives are blended by ``lam / s``; after a
polish, a constraint that is active with a zero multiplier is treated as active (the derivative of
the solution with that constraint held). Elements that were not solved get zero gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from portfolio_layers.qp.ipm import InteriorPoint, IPMResult, IPMState
from portfolio_layers.qp.kkt import AugmentedKKT, ReducedKKT
from portfolio_layers.qp.polish import ActiveKKT, ActiveSet
from portfolio_layers.qp.problem import QPData
from portfolio_layers.qp.solution import Status


class IPMFunction(torch.autograd.Function):
    """``x = argmin 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub`` for flat batches.

    ``apply(solver, holder, warm, P, q, A, b, G, h, lb, ub)`` with ``P (B, n, n)`` symmetric,
    ``q (B, n)``, ``A (B, p, n)``/``b (B, p)``, ``G (B, m, n)``/``h (B, m)`` or None, ``lb``/``ub``
    ``(B, n)`` with infinities where unbounded. Returns ``x (B, n)``; the full :class:`IPMResult` is
    stored in ``holder["result"]``.
    """

    @staticmethod
    def forward(
        solver: InteriorPoint,
        holder: dict,
        warm: IPMState | None,
        P: Tensor,
        q: Tensor,
        A: Tensor | None,
        b: Tensor | None,
        G: Tensor | None,
        h: Tensor | None,
        lb: Tensor,
        ub: Tensor,
    ) -> Tensor:
        data = QPData(P, q, A, b, G, h, lb, ub, (P.shape[0],))
        res = solver.solve(data, warm)
        holder["result"] = res
        holder["data"] = data
        return res.state.x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        solver, holder = inputs[0], inputs[1]
        ctx.set_materialize_grads(True)
        if not any(ctx.needs_input_grad[3:]):
            return
        data: QPData = holder["data"]
        res: IPMResult = holder["result"]
        ctx.res, ctx.data = res, data
        polished = torch.zeros_like(res.status, dtype=torch.bool)
        for idx, _, _ in res.polished:
            polished[idx] = True
        rest = ((res.status == Status.SOLVED) & ~polished).nonzero().squeeze(-1)
        ctx.rest = rest
        ctx.rest_kkt = solver.factor_at(data.take(rest), res.state.take(rest)) if rest.numel() else None

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
        d: QPData = ctx.data
        st = ctx.res.state
        wx = torch.zeros_like(gx)
        wy = None if d.A is None else torch.zeros_like(d.b)
        wl = None if d.G is None else torch.zeros_like(d.h)
        lower, upper = torch.zeros_like(gx, dtype=torch.bool), torch.zeros_like(gx, dtype=torch.bool)
        for idx, act, K in ctx.res.polished:  # exact active-set adjoints, chunk by chunk
            w = _adjoint_active(d.p, act, K, gx[idx])
            wx[idx], lower[idx], upper[idx] = w[0], act.lower, act.upper
            if wy is not None:
                wy[idx] = w[1]
            if wl is not None:
                wl[idx] = w[2]
        # bound multipliers of the active sets, for the whole batch at once (zero where not polished)
        t = gx - _mv(d.P, wx)
        if wy is not None:
            t = t - _mtv(d.A, wy)
        if wl is not None:
            t = t - _mtv(d.G, wl)
        glb, gub = torch.where(lower, t, 0.0), torch.where(upper, t, 0.0)
        if ctx.rest.numel():
            idx = ctx.rest
            w = _adjoint_ipm(d.take(idx), st.take(idx), ctx.rest_kkt, gx[idx])
            wx[idx], glb[idx], gub[idx] = w[0], w[3], w[4]
            if wy is not None:
                wy[idx] = w[1]
            if wl is not None:
                wl[idx] = w[2]
        x = st.x
        need = ctx.needs_input_grad
        gP = _outer(-wx, x) if need[3] else None
        gq = wx if need[4] else None
        gA = gb = gG = gh = None
        if d.A is not None:
            gA = (
                -(st.y.unsqueeze(-1) * wx.unsqueeze(-2) + wy.unsqueeze(-1) * x.unsqueeze(-2))
                if need[5]
                else None
            )
            gb = wy if need[6] else None
        if d.G is not None:
            gG = (
                -(st.lam.unsqueeze(-1) * wx.unsqueeze(-2) + wl.unsqueeze(-1) * x.unsqueeze(-2))
                if need[7]
                else None
            )
            gh = wl if need[8] else None
        return None, None, None, gP, gq, gA, gb, gG, gh, glb if need[9] else None, gub if need[10] else None


def _adjoint_active(p: int, act: ActiveSet, K: ActiveKKT, gx: Tensor) -> tuple:
    """Adjoint of the active-set KKT system (exact derivative at a polished point): ``wx, wy, wl``."""
    C = K.K.A
    r2 = None if C is None else torch.zeros(gx.shape[0], C.shape[-2], dtype=gx.dtype, device=gx.device)
    wx, nu = K.solve(gx, r2, steps=1)
    wy = None if nu is None or p == 0 else nu[:, :p]
    wl = None if act.rows is None else nu[:, p:] * act.rows.to(gx.dtype)
    return wx, wy, wl


def _adjoint_ipm(d: QPData, st: IPMState, K: ReducedKKT | AugmentedKKT, gx: Tensor) -> tuple:
    """Adjoint of the linearized KKT system at an interior-point iterate."""
    wl = None
    if d.G is None:
        wx, wy = K.refined_solve(gx, None if d.A is None else torch.zeros_like(d.b), steps=1)
    else:
        wx, wy, wl = K.solve(gx)
    ml, mu = torch.isfinite(d.lb), torch.isfinite(d.ub)
    glb = torch.where(ml, st.zl * wx / torch.where(ml, st.x - d.lb, 1.0), 0.0)
    gub = torch.where(mu, st.zu * wx / torch.where(mu, d.ub - st.x, 1.0), 0.0)
    return wx, wy, wl, glb, gub


def _mv(M: Tensor, v: Tensor) -> Tensor:
    return (v.unsqueeze(-2) @ M.mT).squeeze(-2)  # faster than M @ v[..., None] on CPU


def _mtv(M: Tensor, v: Tensor) -> Tensor:
    return (v.unsqueeze(-2) @ M).squeeze(-2)


def _outer(u: Tensor, v: Tensor) -> Tensor:
    return u.unsqueeze(-1) * v.unsqueeze(-2)
