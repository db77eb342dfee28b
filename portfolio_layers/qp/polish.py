"""Active-set polishing of an interior-point iterate (its KKT factorization serves the backward).

Near the solution the interior point identifies which bounds and inequality rows are active (slack
smaller than multiplier). Fixing them gives an equality-constrained QP on the free variables,

    [ H   C' ] [x_F]   [r]       H = P restricted to the free variables (identity elsewhere),
    [ C   0  ] [ nu] = [c],      C = [A; G_active] restricted to the free variables,

solved with :func:`portfolio_layers.qp.kkt.factor_active` (which adds ``C'C`` to ``H``: an
augmented-Lagrangian term that leaves the solution unchanged and keeps ``H`` well conditioned when
``P`` is singular on the free variables, as for the auxiliary variables of leverage limits). The
free variables are gathered into a compact ``k x k`` system (``k`` the largest number of free
variables in the batch, often far below ``n``), so a polish costs ``O(k^3)``, not ``O(n^3)``.
The polished point is accepted only if it is primal and dual feasible (within ``eps``); it is
then exact to rounding, and its factorization is the one the implicit backward reuses (the exact
active-set derivative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from portfolio_layers.qp.kkt import AUGMENT, ActiveKKT, factor_active, mtv, mv
from portfolio_layers.qp.problem import BatchRecord, QPData


@dataclass(frozen=True)
class ActiveSet(BatchRecord):
    """Active constraints of a batch: ``lower``/``upper (B, n)`` bool, ``rows (B, m)`` bool or None."""

    lower: Tensor
    upper: Tensor
    rows: Tensor | None


@dataclass(frozen=True)
class Polished(BatchRecord):
    """A polished batch: point, multipliers, validity, and the factorization for the backward.

    ``x``, ``zl``, ``zu (B, n)``, ``y (B, p)``, ``lam (B, m)`` are the point (clipped to the bounds)
    and its multipliers (clipped to >= 0), ``ok (B,)`` whether it was accepted; ``x_raw``, ``g_raw``
    (the Lagrangian gradient) and ``lam_raw`` are unclipped, for the active-set corrections.
    """

    x: Tensor
    y: Tensor | None
    lam: Tensor | None
    zl: Tensor
    zu: Tensor
    ok: Tensor
    active: ActiveSet
    kkt: ActiveKKT
    x_raw: Tensor
    g_raw: Tensor
    lam_raw: Tensor | None


def guess_active(
    d: QPData, x: Tensor, s: Tensor | None, lam: Tensor | None, zl: Tensor, zu: Tensor
) -> ActiveSet:
    """Bounds / rows whose slack is smaller than their multiplier."""
    ml, mu = torch.isfinite(d.lb), torch.isfinite(d.ub)
    lower = ml & (torch.where(ml, x - d.lb, torch.inf) < zl)
    upper = mu & (torch.where(mu, d.ub - x, torch.inf) < zu) & ~lower
    rows = None if d.G is None else s < lam
    return ActiveSet(lower, upper, rows)


def _constraint_rows(d: QPData, act: ActiveSet) -> Tensor | None:
    rows = []
    if d.A is not None:
        rows.append(d.A)
    if d.G is not None:
        rows.append(d.G * act.rows.unsqueeze(-1).to(d.G.dtype))
    return torch.cat(rows, -2) if rows else None


def polish(d: QPData, act: ActiveSet, shift: float, eps: float) -> Polished:
    """Solve the active-set QP and check its feasibility and dual signs (tolerance ``eps``)."""
    dt = d.P.dtype
    x_fix = torch.where(act.lower, d.lb, torch.where(act.upper, d.ub, 0.0))
    free = ~(act.lower | act.upper)
    C = _constraint_rows(d, act)
    K = factor_active(d.P, C, free, shift, None if act.rows is None else ~act.rows)
    r1 = d.q - mv(d.P, x_fix)
    r2 = None
    if C is not None:
        rhs = [v for v in (d.b, None if d.h is None else d.h * act.rows.to(dt)) if v is not None]
        r2 = torch.cat(rhs, -1) - mv(C, x_fix)
        r1 = r1 + AUGMENT * mtv(C, r2)
    xf, nu = K.solve(r1, r2)
    x = xf + x_fix
    y = None if d.A is None else nu[:, : d.p]
    lam = None if d.G is None else nu[:, d.p :] * act.rows.to(dt)
    g = mv(d.P, x) - d.q
    if y is not None:
        g = g + mtv(d.A, y)
    if lam is not None:
        g = g + mtv(d.G, lam)
    zl = torch.where(act.lower, g, 0.0)
    zu = torch.where(act.upper, -g, 0.0)
    ok = K.ok & torch.isfinite(x).all(-1) & (zl >= -eps).all(-1) & (zu >= -eps).all(-1)
    ok &= (free.to(dt) * g).abs().amax(-1) <= eps
    ok &= ((x >= d.lb - eps * (1 + d.lb.abs())) & (x <= d.ub + eps * (1 + d.ub.abs()))).all(-1)
    if lam is not None:
        ok &= (lam >= -eps).all(-1)
        ok &= (mv(d.G, x) <= d.h + eps * (1 + d.h.abs())).all(-1)
    if y is not None:
        ok &= (mv(d.A, x) - d.b).abs().amax(-1) <= eps * (1 + d.b.abs().amax(-1))
    xc = torch.minimum(torch.maximum(x, d.lb), d.ub)
    lc = None if lam is None else lam.clamp_min(0.0)
    return Polished(xc, y, lc, zl.clamp_min(0.0), zu.clamp_min(0.0), ok, act, K, x, g, lam)


def corrected(
    solve: Callable[[QPData, Any, float, float], Any],
    correct: Callable[[QPData, Any, Any, Tensor, float], Any],
    d: QPData,
    act: Any,
    shift: float,
    eps: float,
    rounds: int,
) -> list[tuple[Tensor, Any]]:
    """The one active-set correction loop of every polish: ``solve``, then up to ``rounds`` corrections.

    ``solve(d, act, shift, eps)`` polishes every element of ``d`` with the active set ``act`` and returns
    a record with a per-element ``ok`` and ``take``; ``correct(d, act, pol, bad, eps)`` gives the corrected
    active set of the failed elements ``bad`` (``d`` and ``act`` already restricted to them). The loop stops
    when all elements are accepted, after ``rounds`` corrections, or when a correction changes nothing.
    Returns the accepted elements as chunks ``(indices into the batch of d, polished record)``.
    """
    out: list[tuple[Tensor, Any]] = []
    idx = torch.arange(d.q.shape[0], device=d.q.device)
    for r in range(rounds + 1):
        pol = solve(d, act, shift, eps)
        if bool(pol.ok.any()):
            k = pol.ok.nonzero().squeeze(-1)
            out.append((idx[k], pol.take(k)))
        bad = (~pol.ok).nonzero().squeeze(-1)
        if bad.numel() == 0 or r == rounds:
            break
        if bad.numel() < idx.numel():  # (no copy when every element failed, as for a single problem)
            d, a = d.take(bad), act.take(bad)
        else:
            a = act
        new = correct(d, a, pol, bad, eps)
        if _same(new, a):
            break
        act, idx = new, idx[bad]
    return out


def polish_corrected(
    d: QPData, act: ActiveSet, shift: float, eps: float, rounds: int = 10
) -> list[tuple[Tensor, Polished]]:
    """:func:`polish`, then up to ``rounds`` active-set corrections on the elements that failed.

    A correction adds the free variables / rows that the polished point violates to the active set
    and drops the active ones whose multiplier came out negative (a primal-dual active-set step).
    Returns the successful elements as chunks ``(indices into the batch of d, Polished)``.

    From an early iterate the guess can be far off (at ``n = 500``, long-only, the first guess held
    every lower bound and the corrections went 500 -> 0 -> 238 -> 382 -> 447 -> 481 -> 490 held bounds):
    10 rounds instead of 5 finished that solve after 3 interior-point iterations instead of 8 (10.5 ->
    7.9 ms forward+backward at batch 1 in factor form, 495 -> 401 ms at n = 250, batch 64, dense).
    """
    return corrected(polish, _correct, d, act, shift, eps, rounds)


def _correct(d: QPData, a: ActiveSet, pol: Polished, bad: Tensor, eps: float) -> ActiveSet:
    g_raw, x_raw = pol.g_raw[bad], pol.x_raw[bad]  # (not pol.take: its factorization is discarded)
    free = ~(a.lower | a.upper)
    lower = (a.lower & (g_raw >= -eps)) | (free & (x_raw < d.lb))
    upper = (a.upper & (-g_raw >= -eps)) | (free & (x_raw > d.ub))
    rows = a.rows
    if rows is not None:
        rows = (rows & (pol.lam_raw[bad] >= -eps)) | (~rows & (mv(d.G, x_raw) > d.h))
    return ActiveSet(lower, upper & ~lower, rows)


def _same(a: Any, b: Any) -> bool:
    """Whether two active-set records hold the same masks (fields that are None on both count as equal)."""
    pairs = ((getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return all(
        (u is None and v is None) or (u is not None and v is not None and torch.equal(u, v)) for u, v in pairs
    )
