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
from portfolio_layers.qp.problem import Bounds, QPData
from portfolio_layers.qp.solution import Status


@dataclass
class Carrier:
    """What :meth:`IPMFunction.forward` computed besides ``x`` (a forward may only return tensors).

    Pass an empty one to ``apply``; the forward fills it for the caller and for ``setup_context``.
    """

    data: QPData | None = None
    result: IPMResult | None = None


class IPMFunction(torch.autograd.Function):
    """``x = argmin 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub`` for flat batches.

    ``apply(solver, carrier, warm, P, F, d, q, A, b, G, h, lb, ub)`` with either ``P (B, n, n)``
    symmetric (``F``, ``d`` None) or ``P`` None and the factor form ``P = F F' + diag(d)`` with
    ``F (B, n, k)``, ``d (B, n)`` (gradients to ``F`` and ``d`` in ``O(n k)``, see
    :meth:`~portfolio_layers.qp.factor.FactorCov.gradients`); ``q (B, n)``, ``A (B, p, n)``/``b (B, p)``,
    ``G (B, m, n)``/``h (B, m)`` or None, ``lb``/``ub`` ``(B, n)`` with infinities where unbounded.
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
    ) -> Tensor:
        cost = FactorCov(F, d) if P is None else P
        carrier.data = QPData(cost, q, A, b, G, h, lb, ub, (q.shape[0],))
        carrier.result = solver.solve(carrier.data, warm)
        return carrier.result.state.x.clone()

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
        return None, None, None, gP, gF, gd, gq, gA, gb, gG, gh, gl, gu


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
