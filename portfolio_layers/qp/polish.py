"""Active-set polishing of an interior-point iterate, and its KKT factorization for the backward.

Near the solution the interior point identifies which bounds and inequality rows are active (slack
smaller than multiplier). Fixing them gives an equality-constrained QP on the free variables,

    [ H   C' ] [x_F]   [r]       H = P restricted to the free variables (identity elsewhere),
    [ C   0  ] [ nu] = [c],      C = [A; G_active] restricted to the free variables,

solved with the reduced-KKT machinery of :mod:`portfolio_layers.qp.kkt` after adding ``C'C`` to ``H``
(an augmented-Lagrangian term that leaves the solution unchanged and keeps ``H`` well conditioned
when ``P`` is singular on the free variables, as for the auxiliary variables of leverage limits).
The free variables are gathered into a compact ``k x k`` system (``k`` the largest number of free
variables in the batch, often far below ``n``), so a polish costs ``O(k^3)``, not ``O(n^3)``.
The polished point is accepted only if it is primal and dual feasible (within ``eps``); it is
then exact to rounding, and its factorization is the one the implicit backward reuses (the exact
active-set derivative).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.qp.kkt import ReducedKKT, _shifted_cholesky, chol_solve
from portfolio_layers.qp.problem import QPData

AUGMENT = 1.0
"""Weight ``rho`` of the term ``rho C'C`` added to ``H`` (and ``rho C'c`` to the right side)."""


@dataclass(frozen=True)
class ActiveSet:
    """Active constraints of a batch: ``lower``/``upper (B, n)`` bool, ``rows (B, m)`` bool or None."""

    lower: Tensor
    upper: Tensor
    rows: Tensor | None

    def take(self, idx: Tensor) -> ActiveSet:
        return ActiveSet(self.lower[idx], self.upper[idx], None if self.rows is None else self.rows[idx])


@dataclass(frozen=True)
class Polished:
    """A polished batch: point, multipliers, validity, and the factorization for the backward."""

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

    def take(self, idx: Tensor) -> Polished:
        def t(v: Tensor | None) -> Tensor | None:
            return None if v is None else v[idx]

        return Polished(
            t(self.x),
            t(self.y),
            t(self.lam),
            t(self.zl),
            t(self.zu),
            t(self.ok),
            self.active.take(idx),
            self.kkt.take(idx),
            t(self.x_raw),
            t(self.g_raw),
            t(self.lam_raw),
        )


def guess_active(
    d: QPData, x: Tensor, s: Tensor | None, lam: Tensor | None, zl: Tensor, zu: Tensor
) -> ActiveSet:
    """Bounds / rows whose slack is smaller than their multiplier."""
    ml, mu = torch.isfinite(d.lb), torch.isfinite(d.ub)
    lower = ml & (torch.where(ml, x - d.lb, torch.inf) < zl)
    upper = mu & (torch.where(mu, d.ub - x, torch.inf) < zu) & ~lower
    rows = None if d.G is None else s < lam
    return ActiveSet(lower, upper, rows)


@dataclass(frozen=True)
class ActiveKKT:
    """Factorization of the active-set KKT system on the free variables only.

    The free variables of each element are gathered into the first ``k`` slots (``k`` the largest
    number of free variables in the batch; the slots past an element's own count are padding with
    an identity row), so the Cholesky factorization costs ``O(k^3)`` instead of ``O(n^3)``.

    Attributes
    ----------
    K : ReducedKKT
        Factorization of the compact system (``H (B, k, k)``, constraint rows ``(B, p + m, k)``).
    cols : Tensor of shape (B, k), dtype long
        Index of the variable held in each slot (distinct within an element).
    valid : Tensor of shape (B, k)
        1 for a slot holding a free variable, 0 for padding.
    """

    K: ReducedKKT
    cols: Tensor
    valid: Tensor

    @property
    def ok(self) -> Tensor:
        return self.K.ok

    def take(self, idx: Tensor) -> ActiveKKT:
        return ActiveKKT(self.K.take(idx), self.cols[idx], self.valid[idx])

    def solve(self, r1: Tensor, r2: Tensor | None, steps: int = 1) -> tuple[Tensor, Tensor | None]:
        """Solve for ``r1 (B, n)`` (entries of fixed variables ignored) and ``r2 (B, p + m)``.

        Returns ``x (B, n)`` (zero on the fixed variables) and the multipliers ``(B, p + m)``.
        """
        xk, nu = self.K.refined_solve(r1.gather(-1, self.cols) * self.valid, r2, steps=steps)
        return torch.zeros_like(r1).scatter_(-1, self.cols, xk * self.valid), nu


def factor_active(d: QPData, act: ActiveSet, shift: float) -> ActiveKKT:
    """Factor the equality-constrained KKT system of the active set (``H`` kept for refinement)."""
    free = ~(act.lower | act.upper)
    B, n = free.shape
    k = max(int(free.sum(-1).max()), 1)
    cols = torch.argsort((~free).to(torch.int8), dim=-1, stable=True)[:, :k]
    valid = free.gather(-1, cols).to(d.P.dtype)
    H = d.P.gather(-2, cols.unsqueeze(-1).expand(B, k, n)).gather(-1, cols.unsqueeze(-2).expand(B, k, k))
    H = H * valid.unsqueeze(-1) * valid.unsqueeze(-2)
    H.diagonal(dim1=-2, dim2=-1).add_(1.0 - valid)
    C = _constraint_rows(d, act)
    if C is not None:  # augmented Lagrangian term: same solution, H PD whenever the KKT matrix is regular
        C = C.gather(-1, cols.unsqueeze(-2).expand(B, C.shape[-2], k)) * valid.unsqueeze(-2)
        H = torch.baddbmm(H, C.mT, C, alpha=AUGMENT)
    delta = torch.full((B,), shift, dtype=H.dtype, device=H.device)
    L, ok, Hk = _shifted_cholesky(H, delta)
    if C is None:
        return ActiveKKT(ReducedKKT(L, None, None, None, ok, Hk), cols, valid)
    HiCt = chol_solve(L, C.mT)
    S = C @ HiCt
    if act.rows is not None:  # inactive rows: nu = 0
        S[:, d.p :, d.p :].diagonal(dim1=-2, dim2=-1).add_((~act.rows).to(S.dtype))
    scale = S.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1.0)
    Ls, ok_s, _ = _shifted_cholesky(S, shift * scale)
    return ActiveKKT(ReducedKKT(L, C, HiCt, Ls, ok & ok_s, Hk), cols, valid)


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
    free = (~(act.lower | act.upper)).to(dt)
    K = factor_active(d, act, shift)
    C = _constraint_rows(d, act)
    r1 = d.q - _mv(d.P, x_fix)
    r2 = None
    if C is not None:
        rhs = [v for v in (d.b, None if d.h is None else d.h * act.rows.to(dt)) if v is not None]
        r2 = torch.cat(rhs, -1) - _mv(C, x_fix)
        r1 = r1 + AUGMENT * _mtv(C, r2)
    xf, nu = K.solve(r1, r2, steps=1)
    x = xf + x_fix
    y = None if d.A is None else nu[:, : d.p]
    lam = None if d.G is None else nu[:, d.p :] * act.rows.to(dt)
    g = _mv(d.P, x) - d.q
    if y is not None:
        g = g + _mtv(d.A, y)
    if lam is not None:
        g = g + _mtv(d.G, lam)
    zl = torch.where(act.lower, g, 0.0)
    zu = torch.where(act.upper, -g, 0.0)
    ok = K.ok & torch.isfinite(x).all(-1) & (zl >= -eps).all(-1) & (zu >= -eps).all(-1)
    ok &= (free * g).abs().amax(-1) <= eps
    ok &= ((x >= d.lb - eps * (1 + d.lb.abs())) & (x <= d.ub + eps * (1 + d.ub.abs()))).all(-1)
    if lam is not None:
        ok &= (lam >= -eps).all(-1)
        ok &= (_mv(d.G, x) <= d.h + eps * (1 + d.h.abs())).all(-1)
    if y is not None:
        ok &= (_mv(d.A, x) - d.b).abs().amax(-1) <= eps * (1 + d.b.abs().amax(-1))
    xc = torch.minimum(torch.maximum(x, d.lb), d.ub)
    lc = None if lam is None else lam.clamp_min(0.0)
    return Polished(xc, y, lc, zl.clamp_min(0.0), zu.clamp_min(0.0), ok, act, K, x, g, lam)


def _mv(M: Tensor, v: Tensor) -> Tensor:
    return (v.unsqueeze(-2) @ M.mT).squeeze(-2)  # faster than M @ v[..., None] on CPU


def _mtv(M: Tensor, v: Tensor) -> Tensor:
    return (v.unsqueeze(-2) @ M).squeeze(-2)


def polish_corrected(
    d: QPData, act: ActiveSet, shift: float, eps: float, rounds: int = 5
) -> list[tuple[Tensor, Polished]]:
    """:func:`polish`, then up to ``rounds`` active-set corrections on the elements that failed.

    A correction adds the free variables / rows that the polished point violates to the active set
    and drops the active ones whose multiplier came out negative (a primal-dual active-set step).
    Returns the successful elements as chunks ``(indices into the batch of d, Polished)``.
    """
    out: list[tuple[Tensor, Polished]] = []
    idx = torch.arange(d.P.shape[0], device=d.P.device)
    for r in range(rounds + 1):
        pol = polish(d, act, shift, eps)
        if bool(pol.ok.any()):
            k = pol.ok.nonzero().squeeze(-1)
            out.append((idx[k], pol.take(k)))
        bad = (~pol.ok).nonzero().squeeze(-1)
        if bad.numel() == 0 or r == rounds:
            break
        d, a = d.take(bad), act.take(bad)
        g_raw, x_raw = pol.g_raw[bad], pol.x_raw[bad]  # (not pol.take: its factorization is discarded)
        free = ~(a.lower | a.upper)
        lower = (a.lower & (g_raw >= -eps)) | (free & (x_raw < d.lb))
        upper = (a.upper & (-g_raw >= -eps)) | (free & (x_raw > d.ub))
        rows = a.rows
        if rows is not None:
            rows = (rows & (pol.lam_raw[bad] >= -eps)) | (~rows & (_mv(d.G, x_raw) > d.h))
        new = ActiveSet(lower, upper & ~lower, rows)
        if _same(new, a):
            break
        act, idx = new, idx[bad]
    return out


def _same(a: ActiveSet, b: ActiveSet) -> bool:
    same = torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
    return same and (a.rows is None or torch.equal(a.rows, b.rows))
