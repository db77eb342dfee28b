"""The ``torch.autograd.Function`` of the interior-point backend: implicit KKT backward.

A polished element (the usual case, see :mod:`portfolio_layers.qp.polish`) is differentiated
through its active-set KKT system with the factorization computed by the polish (the exact
derivative where strict complementarity holds). Otherwise, at the returned point the KKT
conditions ``F(z, theta) = 0`` (stationarity, ``Ax = b``, ``Gx + s = h``, ``lam * s = mu``,
``z_l * (x - lb) = mu``, ``z_u * (ub - x) = mu``) are linearized;
the adjoint system, with right-hand side ``(dL/dx, 0)``, is solved with a factorization of
:mod:`portfolio_layers.qp.kkt` computed once at the returned point when the autograd context is set
up (that module's docstring says which elements are refactored), so a backward costs triangular
solves only.

Degenerate points (an active constraint with a zero multiplier, redundant constraints) give finite
gradients: they are the derivative of the interior-point solution at its final (tiny) barrier
parameter, i.e. the active and inactive one-sided derivatives are blended by ``lam / s``; after a
polish, a constraint that is active with a zero multiplier is treated as active (the derivative of
the solution with that constraint held). Elements that were not solved get zero gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from portfolio_layers.qp.factor import FactorCov
from portfolio_layers.qp.ipm import InteriorPoint, IPMResult, IPMState
from portfolio_layers.qp.kkt import AugmentedKKT, LowRankKKT, ReducedKKT, mtv, mv
from portfolio_layers.qp.l1 import L1Data, split
from portfolio_layers.qp.problem import Bounds, QPData
from portfolio_layers.qp.solution import Status


@dataclass
class Carrier:
    """What :meth:`IPMFunction.forward` computed besides ``x`` (a forward may only return tensors).

    Pass an empty one to ``apply``; the forward fills it for the caller and for ``setup_context``.
    """

    data: QPData | None = None
    result: IPMResult | None = None

    def state(self) -> IPMState:
        """The solution's state on ``x`` (with an L1 cost, ``result.state`` is that of ``z = [x, u, v]``)."""
        st, d = self.result.state, self.data
        if d.l1 is None:
            return st
        n, p, m = d.n, d.p, d.m
        return IPMState(
            st.x[:, :n],
            None if m == 0 else st.s[:, :m],
            None if m == 0 else st.lam[:, :m],
            st.zl[:, :n],
            st.zu[:, :n],
            None if p == 0 else st.y[:, :p],
        )


class IPMFunction(torch.autograd.Function):
    """``x = argmin 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub`` for flat batches.

    ``apply(solver, carrier, warm, P, F, d, q, A, b, G, h, lb, ub)`` with either ``P (B, n, n)``
    symmetric (``F``, ``d`` None) or ``P`` None and the factor form ``P = F F' + diag(d)`` with
    ``F (B, n, k)``, ``d (B, n)`` (gradients to ``F`` and ``d`` in ``O(n k)``, see
    :meth:`~portfolio_layers.qp.factor.FactorCov.gradients`); ``q (B, n)``, ``A (B, p, n)``/``b (B, p)``,
    ``G (B, m, n)``/``h (B, m)`` or None, ``lb``/``ub`` ``(B, n)`` with infinities where unbounded;
    ``x0``, ``kappa (B, n)`` and ``tau (B,)`` (or None) an L1 cost ``kappa'|x - x0|`` and limit
    ``1'|x - x0| <= tau`` (:mod:`portfolio_layers.qp.l1`; ``x0`` None: none).
    Returns ``x (B, n)``; the full :class:`IPMResult` is stored in ``carrier.result``.
    """

    @staticmethod
    def forward(
        solver: InteriorPoint,
        carrier: Carrier,
        warm: IPMState | None,
        P: Tensor | None,
        F: Tensor | None,
        d: Tensor | None,
        q: Tensor,
        A: Tensor | None,
        b: Tensor | None,
        G: Tensor | None,
        h: Tensor | None,
        lb: Tensor,
        ub: Tensor,
        x0: Tensor | None = None,
        kappa: Tensor | None = None,
        tau: Tensor | None = None,
    ) -> Tensor:
        cost = FactorCov(F, d) if P is None else P
        l1 = None if x0 is None else L1Data(x0, kappa, tau)
        carrier.data = QPData(cost, q, A, b, G, h, lb, ub, (q.shape[0],), l1)
        carrier.result = solver.solve(carrier.data, warm)
        return carrier.result.state.x[:, : q.shape[-1]].clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        solver, carrier = inputs[0], inputs[1]
        ctx.set_materialize_grads(True)
        if not any(ctx.needs_input_grad[3:]):
            return
        data, res = carrier.data, carrier.result
        ctx.res, ctx.data = res, data
        polished = torch.zeros_like(res.status, dtype=torch.bool)
        for idx, _ in res.polished:
            polished[idx] = True
        rest = ((res.status == Status.SOLVED) & ~polished).nonzero().squeeze(-1)
        ctx.rest = rest
        ctx.rest_kkt = solver.factor_at(data.take(rest), res.state.take(rest)) if rest.numel() else None

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.data.l1 is not None:
            return _backward_split(ctx, gx)
        d: QPData = ctx.data
        st = ctx.res.state
        wx = torch.zeros_like(gx)
        wy = None if d.A is None else torch.zeros_like(d.b)
        wl = None if d.G is None else torch.zeros_like(d.h)
        lower, upper = torch.zeros_like(gx, dtype=torch.bool), torch.zeros_like(gx, dtype=torch.bool)
        for idx, pol in ctx.res.polished:  # exact active-set adjoints, chunk by chunk
            wx[idx], nu = pol.kkt.solve(gx[idx])
            lower[idx], upper[idx] = pol.active.lower, pol.active.upper
            _put_multipliers(d, idx, nu, wy, wl, pol.active.rows)
        # bound multipliers of the active sets, for the whole batch at once (zero where not polished)
        t = gx - mv(d.P, wx)
        if wy is not None:
            t = t - mtv(d.A, wy)
        if wl is not None:
            t = t - mtv(d.G, wl)
        glb, gub = torch.where(lower, t, 0.0), torch.where(upper, t, 0.0)
        if ctx.rest.numel():
            idx = ctx.rest
            wx[idx], glb[idx], gub[idx], nu = _adjoint_ipm(d.take(idx), st.take(idx), ctx.rest_kkt, gx[idx])
            _put_multipliers(d, idx, nu, wy, wl)
        x = st.x
        need = ctx.needs_input_grad
        gP = _outer(-wx, x) if need[3] else None
        gF = gd = None
        if need[4] or need[5]:
            gF, gd = d.P.gradients(-wx, x)
        gq = wx if need[6] else None
        gA = gb = gG = gh = None
        if d.A is not None:
            gA = (
                -(st.y.unsqueeze(-1) * wx.unsqueeze(-2) + wy.unsqueeze(-1) * x.unsqueeze(-2))
                if need[7]
                else None
            )
            gb = wy if need[8] else None
        if d.G is not None:
            gG = (
                -(st.lam.unsqueeze(-1) * wx.unsqueeze(-2) + wl.unsqueeze(-1) * x.unsqueeze(-2))
                if need[9]
                else None
            )
            gh = wl if need[10] else None
        gF, gd = (gF if need[4] else None), (gd if need[5] else None)
        gl, gu = glb if need[11] else None, gub if need[12] else None
        return None, None, None, gP, gF, gd, gq, gA, gb, gG, gh, gl, gu, None, None, None


def _put_multipliers(
    d: QPData,
    idx: Tensor,
    nu: Tensor | None,
    wy: Tensor | None,
    wl: Tensor | None,
    rows: Tensor | None = None,
) -> None:
    """Write the adjoint multipliers ``nu (k, p + m)`` of ``[A; G]`` into rows ``idx`` of ``wy``, ``wl``.

    ``rows (k, m)`` (an active set's) zeroes the multipliers of the inactive inequality rows.
    """
    if wy is not None:
        wy[idx] = nu[:, : d.p]
    if wl is not None:
        wl[idx] = nu[:, d.p :] if rows is None else nu[:, d.p :] * rows.to(nu.dtype)


def _adjoint_ipm(
    d: QPData, st: IPMState, K: ReducedKKT | AugmentedKKT | LowRankKKT, gx: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Adjoint of the linearized KKT system at an interior-point iterate: ``wx``, ``glb``, ``gub``, ``nu``."""
    wx, nu = K.solve(gx)
    bnd = Bounds.of(d)
    tl, tu = bnd.slacks(st.x)
    return (
        wx,
        torch.where(bnd.has_lb, st.zl * wx / tl, 0.0),
        torch.where(bnd.has_ub, st.zu * wx / tu, 0.0),
        nu,
    )


def _outer(u: Tensor, v: Tensor) -> Tensor:
    return u.unsqueeze(-1) * v.unsqueeze(-2)


def _backward_split(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
    """The backward with an L1 cost (:mod:`portfolio_layers.qp.l1`).

    A polished element: the adjoint of its active-set system on ``x``; a held asset's ``x0_i`` acts as
    a fixed value (gradient the adjoint multiplier of ``x_i = x0_i``), a trading asset's ``x0_i``
    through the binding limit row ``s'x = tau + s'x0``, ``kappa_i`` through the cost ``-kappa_i s_i``
    on ``q_i``. Otherwise: the adjoint of the split problem's Newton system at the returned point.
    """
    d: QPData = ctx.data
    st = ctx.res.state
    n, p, m = d.n, d.p, d.m
    zero = torch.zeros_like(gx)
    wx, glb, gub, gx0, gk = zero.clone(), zero.clone(), zero.clone(), zero.clone(), zero.clone()
    wy = None if p == 0 else gx.new_zeros(gx.shape[0], p)
    wl = None if m == 0 else gx.new_zeros(gx.shape[0], m)
    wt = gx.new_zeros(gx.shape[0])
    for idx, pol in ctx.res.polished:
        a, di = pol.active, d.take(idx)
        w, nu = pol.kkt.solve(gx[idx])
        t = gx[idx] - mv(di.P, w)
        if p:
            wy[idx] = nu[:, :p]
            t = t - mtv(di.A, nu[:, :p])
        if m:
            wl[idx] = nu[:, p : p + m] * a.rows.to(w.dtype)
            t = t - mtv(di.G, wl[idx])
        if a.limit is not None:
            wt[idx] = nu[:, -1] * a.limit.to(w.dtype)
            t = t - wt[idx].unsqueeze(-1) * a.sign
        wx[idx] = w
        glb[idx], gub[idx] = torch.where(a.lower, t, 0.0), torch.where(a.upper, t, 0.0)
        gx0[idx] = torch.where(a.hold, t, 0.0) + a.sign * wt[idx].unsqueeze(-1)
        gk[idx] = -a.sign * w
    if ctx.rest.numel():
        idx = ctx.rest
        dz, sz = split(d.take(idx)), st.take(idx)
        wz, nu = ctx.rest_kkt.solve(torch.cat([gx[idx], gx.new_zeros(idx.numel(), 2 * n)], -1))
        bnd = Bounds.of(dz)
        tl, tu = bnd.slacks(sz.x)
        wx[idx] = wz[:, :n]
        glb[idx] = torch.where(bnd.has_lb, sz.zl * wz / tl, 0.0)[:, :n]
        gub[idx] = torch.where(bnd.has_ub, sz.zu * wz / tu, 0.0)[:, :n]
        gk[idx] = -(wz[:, n : 2 * n] + wz[:, 2 * n :])
        gx0[idx] = nu[:, p:]
        if p:
            wy[idx] = nu[:, :p]
        if dz.G is not None:
            wlz = sz.lam / sz.s * mv(dz.G, wz)
            if m:
                wl[idx] = wlz[:, :m]
            if d.l1.tau is not None:
                wt[idx] = wlz[:, -1]
    x = st.x[:, :n]
    need = ctx.needs_input_grad
    gP = _outer(-wx, x) if need[3] else None
    gF = gd = None
    if need[4] or need[5]:
        gF, gd = d.P.gradients(-wx, x)
    gA = gG = None
    if p and need[7]:
        gA = -(st.y[:, :p].unsqueeze(-1) * wx.unsqueeze(-2) + wy.unsqueeze(-1) * x.unsqueeze(-2))
    if m and need[9]:
        gG = -(st.lam[:, :m].unsqueeze(-1) * wx.unsqueeze(-2) + wl.unsqueeze(-1) * x.unsqueeze(-2))
    return (
        None,
        None,
        None,
        gP,
        gF if need[4] else None,
        gd if need[5] else None,
        wx if need[6] else None,
        gA,
        wy if need[8] else None,
        gG,
        wl if need[10] else None,
        glb if need[11] else None,
        gub if need[12] else None,
        gx0 if need[13] else None,
        gk if need[14] else None,
        wt if need[15] else None,
    )
