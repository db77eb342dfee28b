"""Warm starts of the interior point: a strictly interior point near a previous solution.

A warm start changes the work, never the solution: :meth:`InteriorPoint.solve
<portfolio_layers.qp.ipm.InteriorPoint.solve>` first polishes the warm point's active set (accepted
only if it satisfies the KKT conditions, so it is then the solution the cold start would polish), and
otherwise iterates from the shifted point below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from portfolio_layers.qp.ipm import IPMState, initial_point
from portfolio_layers.qp.kkt import mv
from portfolio_layers.qp.l1 import split
from portfolio_layers.qp.problem import Bounds, QPData


def warm_state(d: QPData, x: Tensor, duals: IPMState | None, margin: float = 1e-3) -> IPMState:
    """A strictly interior starting point near a previous solution ``x (B, n)``.

    ``x`` is pulled inside the bounds by ``margin * min(ub - lb, 1)``; slacks and multipliers are
    floored at ``margin`` (multipliers from ``duals`` when given, else 1 on the bounds that ``x``
    touches and ``margin`` on the others), so the interior point can move. ``duals`` must already be
    in the normalized units of ``d``. With ``d.l1`` the state is that of the split problem: the
    trades ``u, v`` come from ``x - x0``, their multipliers are 1.
    """
    if d.l1 is not None:
        d, x, duals = _split_warm(d, x, duals, margin)
    bnd = Bounds.of(d)
    ml, mu, lb0, ub0 = bnd.has_lb, bnd.has_ub, bnd.lb, bnd.ub
    width = torch.where(ml & mu, (ub0 - lb0).clamp(max=1.0), 1.0)
    tight_l, tight_u = ml & (x - lb0 <= margin * width), mu & (ub0 - x <= margin * width)
    x = torch.where(ml, torch.maximum(x, lb0 + margin * width), x)
    x = torch.where(mu, torch.minimum(x, ub0 - margin * width), x)
    base = initial_point(d, bnd)
    if duals is None:
        one = torch.ones_like(x)
        base = IPMState(
            base.x,
            base.s,
            base.lam,
            torch.where(tight_l, one, margin),
            torch.where(tight_u, one, margin),
            base.y,
        )
    src = base if duals is None else duals
    zl = torch.where(ml, src.zl.clamp_min(margin), 0.0)
    zu = torch.where(mu, src.zu.clamp_min(margin), 0.0)
    s = lam = None
    if d.G is not None:
        s = (d.h - mv(d.G, x)).clamp_min(margin)
        lam = src.lam.clamp_min(margin)
    y = None if d.A is None else src.y
    return IPMState(x, s, lam, zl, zu, y)


def _split_warm(
    d: QPData, x: Tensor, duals: IPMState | None, margin: float
) -> tuple[QPData, Tensor, IPMState | None]:
    """The split problem of ``d``, the point ``[x, (x - x0)^+, (x - x0)^-]`` and its multipliers.

    The multipliers of ``u, v >= 0`` say which way each asset trades: ``margin`` on the side it
    trades (by more than ``margin``), 1 on the other (both 1 for an asset that holds).
    """
    z = split(d)
    t = x - d.l1.x0
    xz = torch.cat([x, t.clamp_min(0.0), (-t).clamp_min(0.0)], -1)
    one = torch.ones_like(t)
    zu, zv = torch.where(t > margin, margin, one), torch.where(t < -margin, margin, one)
    if duals is None:
        ml, mu = torch.isfinite(d.lb), torch.isfinite(d.ub)
        zl = torch.where(ml & (x - d.lb <= margin), one, margin)
        zx = torch.where(mu & (d.ub - x <= margin), one, margin)
        duals = IPMState(x, None, None if d.G is None else torch.ones_like(d.h), zl, zx, None)
    zero = torch.zeros_like(t)
    lam = [v for v in (duals.lam, None if d.l1.tau is None else one[:, :1]) if v is not None]
    return (
        z,
        xz,
        IPMState(
            xz,
            None,
            torch.cat(lam, -1) if lam else None,
            torch.cat([duals.zl, zu, zv], -1),
            torch.cat([duals.zu, zero, zero], -1),
            torch.cat([t.new_zeros(t.shape[0], d.p) if duals.y is None else duals.y, zero], -1),
        ),
    )
