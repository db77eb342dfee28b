"""Active-set polish of the split L1 problem, on ``x`` alone (see :mod:`portfolio_layers.qp.l1`).

At a solution each asset either holds (``x_i = x0_i``, an active constraint with a multiplier
``|g_i| <= kappa_i + lam_t``) or trades with a sign ``s_i`` (``u_i > 0`` or ``v_i > 0``), where it pays
``kappa_i s_i`` and, if the limit binds, enters the row ``s'(x - x0) = tau``. With the bounds and
rows of :mod:`portfolio_layers.qp.polish` this is an equality-constrained QP on the free (trading,
unbounded) variables,

    minimize 1/2 x'Px - (q - kappa * s)'x   s.t.  Ax = b, G_act x = h_act, s'x = tau + s'x0 (if binding),
                                                 x_i = lb_i / ub_i / x0_i (held),

factored by :func:`~portfolio_layers.qp.kkt.factor_active` (dense, or the capacitance form of a
:class:`FactorCov`: no ``n x n`` matrix), which the implicit backward reuses (the exact active-set
derivative, the holding assets being active constraints ``x_i = x0_i``). ``g = Px - q + A'y + G'lam``
below is the Lagrangian gradient without the L1 terms; the multiplier of ``x - u + v = x0`` is ``w =
-g`` where ``x`` is not at a bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.qp.kkt import AUGMENT, ActiveKKT, factor_active, mtv, mv
from portfolio_layers.qp.l1 import core
from portfolio_layers.qp.lowrank import ActiveLowRankKKT
from portfolio_layers.qp.polish import corrected
from portfolio_layers.qp.problem import BatchRecord, QPData


@dataclass(frozen=True)
class SplitActive(BatchRecord):
    """Active set of a split problem on ``x`` for a batch ``B``.

    ``lower``, ``upper``, ``hold (B, n)`` bool (at a bound / held at ``x0``); ``sign (B, n)`` in
    ``{-1, 0, 1}`` (0 for a held asset, or one at a bound equal to ``x0``); ``rows (B, m)`` bool or
    None; ``limit (B,)`` bool (the limit binds) or None without a limit.
    """

    lower: Tensor
    upper: Tensor
    hold: Tensor
    sign: Tensor
    rows: Tensor | None
    limit: Tensor | None


@dataclass(frozen=True)
class SplitPolished(BatchRecord):
    """A polished batch of a split problem.

    ``x``, ``y``, ``lam``, ``zl``, ``zu`` are the point and multipliers over ``z = [x, u, v]`` (for the
    interior point), ``ok (B,)`` whether it was accepted, ``kkt`` the factorization on ``x`` (for the
    backward); ``x_raw``, ``g (B, n)``, ``lam_raw (B, m)``, ``lt (B,)`` (the limit's multiplier) and
    ``zuv (B, 2n)`` (the multipliers of ``u, v >= 0``), unclipped, drive the corrections.
    """

    x: Tensor
    y: Tensor
    lam: Tensor | None
    zl: Tensor
    zu: Tensor
    ok: Tensor
    active: SplitActive
    kkt: ActiveKKT | ActiveLowRankKKT
    x_raw: Tensor
    g: Tensor
    lam_raw: Tensor | None
    lt: Tensor
    zuv: Tensor


def guess_split(
    d: QPData, x: Tensor, s: Tensor | None, lam: Tensor | None, zl: Tensor, zu: Tensor
) -> SplitActive:
    """The active set of a split iterate ``z = x (B, 3n)``: slacks smaller than their multipliers."""
    base = core(d)
    n, m = base.n, base.m
    xx, u, v = x[:, :n], x[:, n : 2 * n], x[:, 2 * n :]
    ml, mu = torch.isfinite(base.lb), torch.isfinite(base.ub)
    lower = ml & (torch.where(ml, xx - base.lb, torch.inf) < zl[:, :n])
    upper = mu & (torch.where(mu, base.ub - xx, torch.inf) < zu[:, :n]) & ~lower
    flat = (u < zl[:, n : 2 * n]) & (v < zl[:, 2 * n :])
    sign = torch.where(flat, 0.0, torch.where(u >= v, 1.0, -1.0)).to(x.dtype)
    sign = _bound_sign(base, d.l1.x0, lower, upper, sign)
    rows = None if m == 0 else s[:, :m] < lam[:, :m]
    limit = None if d.l1.tau is None else s[:, -1] < lam[:, -1]
    return SplitActive(lower, upper, flat & ~(lower | upper), sign, rows, limit)


def _bound_sign(base: QPData, x0: Tensor, lower: Tensor, upper: Tensor, sign: Tensor) -> Tensor:
    """``sign``, with the assets at a bound trading towards it: ``sign(bound - x0)`` (0 if equal)."""
    at = torch.where(lower, base.lb, torch.where(upper, base.ub, x0))
    return torch.where(lower | upper, torch.sign(at - x0), sign)


def polish_split(d: QPData, act: SplitActive, shift: float, eps: float) -> SplitPolished:
    """Solve the active-set QP of ``act`` (module docstring) and check it (tolerance ``eps``)."""
    base, L = core(d), d.l1
    dt, p, m = base.q.dtype, base.p, base.m
    s, x0 = act.sign, L.x0
    bound = act.lower | act.upper
    x_fix = torch.where(act.lower, base.lb, torch.where(act.upper, base.ub, torch.where(act.hold, x0, 0.0)))
    free = ~(bound | act.hold)
    rows, rhs, pinned = [], [], []
    if base.A is not None:
        rows.append(base.A)
        rhs.append(base.b)
    if m:
        rows.append(base.G * act.rows.unsqueeze(-1).to(dt))
        rhs.append(base.h * act.rows.to(dt))
        pinned.append(~act.rows)
    if act.limit is not None:
        on = act.limit.to(dt).unsqueeze(-1)
        rows.append((s * on).unsqueeze(-2))
        rhs.append((L.tau.unsqueeze(-1) + (s * x0).sum(-1, keepdim=True)) * on)
        pinned.append(~act.limit.unsqueeze(-1))
    C = torch.cat(rows, -2) if rows else None
    K = factor_active(base.P, C, free, shift, torch.cat(pinned, -1) if pinned else None)
    r1 = base.q - L.kappa * s - mv(base.P, x_fix)
    r2 = None
    if C is not None:
        r2 = torch.cat(rhs, -1) - mv(C, x_fix)
        r1 = r1 + AUGMENT * mtv(C, r2)
    xf, nu = K.solve(r1, r2)
    x = xf + x_fix
    y = None if base.A is None else nu[:, :p]
    lam = None if m == 0 else nu[:, p : p + m] * act.rows.to(dt)
    lt = x.new_zeros(x.shape[0]) if act.limit is None else nu[:, -1] * act.limit.to(dt)
    g = mv(base.P, x) - base.q
    if y is not None:
        g = g + mtv(base.A, y)
    if lam is not None:
        g = g + mtv(base.G, lam)
    c = L.kappa + lt.unsqueeze(-1)
    w = torch.where(bound, torch.where(s != 0, c * s, torch.minimum(torch.maximum(-g, -c), c)), -g)
    zl = torch.where(act.lower, g + w, 0.0)
    zu = torch.where(act.upper, -(g + w), 0.0)
    zuv = torch.cat([c - w, c + w], -1)
    ok = K.ok & torch.isfinite(x).all(-1)
    ok &= (free.to(dt) * (g + c * s)).abs().amax(-1) <= eps
    ok &= (zl >= -eps).all(-1) & (zu >= -eps).all(-1) & (zuv >= -eps).all(-1)
    ok &= ((s == 0) | (s * (x - x0) >= -eps * (1 + x0.abs()))).all(-1)
    ok &= (~bound | (s != 0) | ((x - x0).abs() <= eps * (1 + x0.abs()))).all(-1)
    ok &= ((x >= base.lb - eps * (1 + base.lb.abs())) & (x <= base.ub + eps * (1 + base.ub.abs()))).all(-1)
    if lam is not None:
        ok &= (lam >= -eps).all(-1) & (mv(base.G, x) <= base.h + eps * (1 + base.h.abs())).all(-1)
    if y is not None:
        ok &= (mv(base.A, x) - base.b).abs().amax(-1) <= eps * (1 + base.b.abs().amax(-1))
    if L.tau is not None:
        ok &= (lt >= -eps) & ((x - x0).abs().sum(-1) <= L.tau + eps * (1 + L.tau))
    xc = torch.minimum(torch.maximum(x, base.lb), base.ub)
    trade = xc - x0
    u = torch.where(s > 0, trade.clamp_min(0.0), 0.0)
    v = torch.where(s < 0, (-trade).clamp_min(0.0), 0.0)
    lam_z = [t for t in (lam, None if L.tau is None else lt.unsqueeze(-1)) if t is not None]
    return SplitPolished(
        torch.cat([xc, u, v], -1),
        w if y is None else torch.cat([y, w], -1),
        torch.cat(lam_z, -1).clamp_min(0.0) if lam_z else None,
        torch.cat([zl, zuv], -1).clamp_min(0.0),
        torch.cat([zu, torch.zeros_like(zuv)], -1).clamp_min(0.0),
        ok,
        act,
        K,
        x,
        g,
        lam,
        lt,
        zuv,
    )


def polish_split_corrected(
    d: QPData, act: SplitActive, shift: float, eps: float, rounds: int = 5
) -> list[tuple[Tensor, SplitPolished]]:
    """:func:`polish_split`, then up to ``rounds`` active-set corrections of the failed elements.

    A correction starts trading a held asset whose multiplier left ``[-c, c]``, holds a trading asset
    that crossed ``x0``, fixes violated bounds and rows, and frees those with a negative multiplier.
    Returns the accepted elements as chunks ``(indices into the batch of d, SplitPolished)``; the loop is
    :func:`portfolio_layers.qp.polish.corrected`.
    """
    return corrected(polish_split, _correct_failed, d, act, shift, eps, rounds)


def _correct_failed(d: QPData, a: SplitActive, pol: SplitPolished, bad: Tensor, eps: float) -> SplitActive:
    lam = None if pol.lam_raw is None else pol.lam_raw[bad]
    return _correct(d, a, pol.x_raw[bad], pol.g[bad], pol.zuv[bad], pol.lt[bad], lam, eps)


def _correct(
    d: QPData, a: SplitActive, x: Tensor, g: Tensor, zuv: Tensor, lt: Tensor, lam: Tensor | None, eps: float
) -> SplitActive:
    """One primal-dual active-set correction (see :func:`polish_split_corrected`)."""
    base, L = core(d), d.l1
    n = base.n
    c = L.kappa + lt.unsqueeze(-1)
    zl = g + torch.where(a.sign != 0, c * a.sign, torch.minimum(torch.maximum(-g, -c), c))
    zu = -zl
    free = ~(a.lower | a.upper | a.hold)
    start = a.hold & ((zuv[:, :n] < -eps) | (zuv[:, n:] < -eps))
    cross = free & (a.sign * (x - L.x0) < 0)
    sign = torch.where(start, torch.where(g < 0, 1.0, -1.0).to(x.dtype), a.sign)
    hold = (a.hold & ~start) | cross
    sign = torch.where(cross, 0.0, sign)
    keep_l, keep_u = a.lower & (zl >= -eps), a.upper & (zu >= -eps)
    free = free & ~cross
    lower = keep_l | (free & (x < base.lb))
    upper = (keep_u | (free & (x > base.ub))) & ~lower
    freed = (a.lower & ~keep_l) | (a.upper & ~keep_u)
    sign = torch.where(freed & (sign == 0), torch.where(a.lower, 1.0, -1.0).to(x.dtype), sign)
    sign = _bound_sign(base, L.x0, lower, upper, sign)
    rows = a.rows
    if rows is not None:
        rows = (rows & (lam >= -eps)) | (~rows & (mv(base.G, x) > base.h))
    limit = a.limit
    if limit is not None:
        limit = (limit & (lt >= -eps)) | (~limit & ((x - L.x0).abs().sum(-1) > L.tau))
    return SplitActive(lower, upper, hold, sign, rows, limit)
