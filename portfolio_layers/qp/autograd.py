"""The ``torch.autograd.Function`` of the interior-point backend: implicit KKT backward.

At the returned point the KKT conditions ``F(z, theta) = 0`` (stationarity, ``Ax = b``,
``Gx + s = h``, ``lam * s = mu``, ``z_l * (x - lb) = mu``, ``z_u * (ub - x) = mu``) are linearized;
the adjoint system is the reduced saddle system of :mod:`portfolio_layers.qp.kkt` with right-hand
side ``(dL/dx, 0)``, solved with the factorization computed once at the returned point and kept in
the autograd context (one pair of triangular solves per backward).

Degenerate points (an active constraint with a zero multiplier, redundant constraints) give finite
gradients: they are the derivative of the interior-point solution at its final (tiny) barrier
parameter, i.e. the active and inactive one-sided derivatives are blended by ``lam / s``. Elements
that were not solved get zero gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from portfolio_layers.qp.ipm import InteriorPoint, IPMResult, IPMState
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
        ctx.kkt = solver.factor_at(data, res.state)
        ctx.res = res
        ctx.data = data

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
        d: QPData = ctx.data
        st = ctx.res.state
        solved = (ctx.res.status == Status.SOLVED).to(gx.dtype).unsqueeze(-1)
        gx = gx * solved
        wl = None
        if d.G is None:
            wx, wy = ctx.kkt.refined_solve(gx, None if d.A is None else torch.zeros_like(d.b), steps=1)
        else:
            wx, wy, wl = ctx.kkt.solve(gx)
        x = st.x
        need = ctx.needs_input_grad
        gP = -wx.unsqueeze(-1) * x.unsqueeze(-2) if need[3] else None
        gq = wx if need[4] else None
        gA = gb = gG = gh = glb = gub = None
        if d.A is not None:
            gA = (
                -(st.y.unsqueeze(-1) * wx.unsqueeze(-2) + wy.unsqueeze(-1) * x.unsqueeze(-2))
                if need[5]
                else None
            )
            gb = wy if need[6] else None
        if d.G is not None and (need[7] or need[8]):
            gG = (
                -(st.lam.unsqueeze(-1) * wx.unsqueeze(-2) + wl.unsqueeze(-1) * x.unsqueeze(-2))
                if need[7]
                else None
            )
            gh = wl if need[8] else None
        if need[9]:
            ml = torch.isfinite(d.lb)
            glb = torch.where(ml, st.zl * wx / torch.where(ml, x - d.lb, 1.0), 0.0)
        if need[10]:
            mu = torch.isfinite(d.ub)
            gub = torch.where(mu, st.zu * wx / torch.where(mu, d.ub - x, 1.0), 0.0)
        return None, None, None, gP, gq, gA, gb, gG, gh, glb, gub
