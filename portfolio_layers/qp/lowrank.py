"""KKT systems of a factor-form cost ``P = F F' + diag(d)``: diagonal plus low rank, by capacitance.

With a :class:`~portfolio_layers.qp.factor.FactorCov`, every KKT system of the layer (the interior
point's Newton steps, the active-set polish, the backward) is, after scaling,

    [ D   V  ] [x]   [r1]        D = diag(g), g > 0          (B, n)
    [ V' -W  ] [z] = [r2]        V = [R', U]                 (B, n, r)
                                 W = diag(w), w >= 0         (B, r)

The first ``rows`` columns of ``V`` are constraint rows ``R``, whose multipliers are returned and
which take the right side ``r2``: ``w = 0`` for an equality, ``s / lam`` for an inequality row held
by the barrier (the backward's augmented system), 1 for a pinned row (a zero row whose multiplier
is 0). The other columns ``U`` are internal (right side 0): the factors ``F`` with ``w = 1`` and, in
a Newton step, the inequality rows ``G'`` with ``w = s / lam``. Eliminating their ``z`` gives the
usual reduced matrix ``H = D + U W^-1 U' = P + G' diag(lam / s) G + diag(d_x)``; eliminating ``x``
instead gives the ``r x r`` capacitance matrix

    M = V' D^-1 V + W,

symmetric positive definite when ``R`` has full row rank (else a small shift regularizes it),
factored by Cholesky. A factorization costs ``O(n r^2 + r^3)`` and a solve ``O(n r)``, with ``r = k +
p + m`` (factors, equality rows, inequality rows); nothing of size ``n x n`` is formed. Every solve
is refined once against the unshifted system.

Inverting ``D`` is why :class:`~portfolio_layers.qp.factor.FactorCov` needs ``d > 0``: the bound
terms ``d_x`` of the interior point vanish on inactive bounds, so ``D`` would be singular otherwise.
Large entries of ``D`` (active bounds, ``d_x ~ 1 / mu``) are harmless: their rows drop out of ``M``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.qp.factor import FactorCov
from portfolio_layers.qp.problem import BatchRecord


@dataclass(frozen=True)
class LowRankKKT(BatchRecord):
    """Capacitance factorization of the diagonal-plus-low-rank saddle system (module docstring).

    Attributes
    ----------
    g : Tensor of shape (B, n)
        The diagonal of ``D`` (positive).
    V : Tensor of shape (B, n, r)
        ``[R', U]``: the returned constraint rows, then the internal columns.
    w : Tensor of shape (B, r)
        The diagonal of ``W`` (unshifted, for the refinement).
    L : Tensor of shape (B, r, r)
        Lower Cholesky factor of ``V' D^-1 V + W`` (+ shift).
    rows : int
        Number of returned rows (the leading columns of ``V``).
    ok : Tensor of shape (B,), dtype bool
        False where the factorization failed even after regularization.
    """

    g: Tensor
    V: Tensor
    w: Tensor
    L: Tensor
    rows: int
    ok: Tensor

    def solve(self, r1: Tensor, r2: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Solve for ``r1 (B, n)`` and ``r2 (B, rows)`` (None: zero), refined once.

        Returns ``x (B, n)`` and the multipliers of the returned rows ``(B, rows)`` (None if ``rows = 0``).
        """
        rr = r1.new_zeros(r1.shape[0], self.V.shape[-1])
        if r2 is not None:
            rr[:, : self.rows] = r2
        x, z = self._solve(r1, rr)
        e1 = r1 - self.g * x - _vz(self.V, z)
        e2 = rr - _vtx(self.V, x) + self.w * z
        cx, cz = self._solve(e1, e2)
        x, z = x + cx, z + cz
        return x, (z[:, : self.rows] if self.rows else None)

    def _solve(self, r1: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
        rhs = _vtx(self.V, r1 / self.g) - rr
        z = torch.cholesky_solve(rhs.unsqueeze(-1), self.L).squeeze(-1)
        return (r1 - _vz(self.V, z)) / self.g, z


@dataclass(frozen=True)
class ActiveLowRankKKT(BatchRecord):
    """The active-set KKT system of a :class:`FactorCov` (a low-rank ``kkt.ActiveKKT``).

    Solves ``[P_FF  C_F'; C_F  0] [x_F; nu] = [r1_F; r2]`` on the free variables ``F`` with the same
    convention as the dense one: the caller has added ``augment C'r2`` to ``r1``, which this
    system (positive definite without it, since ``d > 0``) removes again from the multipliers. The
    fixed variables stay in place with a unit diagonal and zeroed rows (no gathering needed: the
    cost is ``O(n r^2)`` either way).

    Attributes
    ----------
    K : LowRankKKT
        The system with ``D = free * d + (1 - free)``, ``V = [C_F', free * F]``.
    free : Tensor of shape (B, n)
        1 for a free variable, 0 for one held at a bound.
    augment : float
        The weight of the augmented-Lagrangian term the caller added.
    """

    K: LowRankKKT
    free: Tensor
    augment: float

    @property
    def ok(self) -> Tensor:
        """False where the factorization failed even after regularization, shape (B,)."""
        return self.K.ok

    def solve(self, r1: Tensor, r2: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Solve for ``r1 (B, n)`` (fixed entries ignored) and ``r2 (B, p + m)`` (None: zero).

        Returns ``x (B, n)`` (zero on the fixed variables) and the multipliers ``(B, p + m)``.
        """
        x, nu = self.K.solve(r1 * self.free, r2)
        if r2 is not None:
            nu = nu - self.augment * r2
        return x, nu


def factor_lowrank(
    P: FactorCov,
    d_x: Tensor,
    A: Tensor | None,
    G: Tensor | None,
    w_G: Tensor | None,
    shift: float,
    *,
    return_G: bool,
) -> LowRankKKT:
    """Factor the interior point's KKT system with ``P`` in factor form at the barrier terms ``d_x (B, n)``.

    Parameters
    ----------
    P : FactorCov
        ``F (B, n, k)``, ``d (B, n)``.
    d_x : Tensor of shape (B, n)
        ``z_l / (x - lb) + z_u / (ub - x)``.
    A : Tensor of shape (B, p, n) or None
    G : Tensor of shape (B, m, n) or None
    w_G : Tensor of shape (B, m) or None
        ``s / lam`` of the inequality rows.
    shift : float
        Relative diagonal shift of the capacitance matrix (grown x100 where its Cholesky fails).
    return_G : bool
        False for a Newton step (``H = P + G' diag(1 / w_G) G + diag(d_x)``; multipliers of ``A``
        only); True for the backward's augmented system (multipliers of ``[A; G]``, right side on
        both).
    """
    cols, ws = [], []
    if A is not None:
        cols.append(A.mT)
        ws.append(A.new_zeros(A.shape[:-1]))
    if G is not None:
        cols.append(G.mT)
        ws.append(w_G)
    rows = (0 if A is None else A.shape[-2]) + (G.shape[-2] if return_G and G is not None else 0)
    return _factor(P.d + d_x, torch.cat([*cols, P.F], -1), torch.cat([*ws, _ones(P)], -1), rows, shift)


def factor_active_lowrank(
    P: FactorCov, C: Tensor | None, free: Tensor, shift: float, pinned: Tensor | None, augment: float
) -> ActiveLowRankKKT:
    """Factor the active-set system of ``P`` in factor form (arguments as ``kkt.factor_active``'s).

    ``C (B, p + m, n)`` holds the equalities and the inequality rows (inactive ones zeroed and
    ``pinned (B, m)``); ``augment`` is the weight the caller's right side was augmented with.
    """
    f = free.to(P.d.dtype)
    g = f * P.d + (1.0 - f)
    U = P.F * f.unsqueeze(-1)
    if C is None:
        V, w, rows = U, _ones(P), 0
    else:
        rows = C.shape[-2]
        wC = C.new_zeros(C.shape[:-1])
        if pinned is not None:
            wC[:, rows - pinned.shape[-1] :] = pinned.to(wC.dtype)
        V, w = torch.cat([(C * f.unsqueeze(-2)).mT, U], -1), torch.cat([wC, _ones(P)], -1)
    return ActiveLowRankKKT(_factor(g, V, w, rows, shift), f, augment)


def _ones(P: FactorCov) -> Tensor:
    """The weights ``w = 1`` of the factor columns, shape (B, k)."""
    return P.F.new_ones(P.F.shape[0], P.F.shape[-1])


def _factor(g: Tensor, V: Tensor, w: Tensor, rows: int, shift: float, tries: int = 8) -> LowRankKKT:
    """Cholesky of ``M = V' diag(1/g) V + diag(w)``, regularized by a per-row shift where needed.

    Rows with ``w > 0`` are regularized by ``w`` itself (and ``w = s / lam`` of an active row is tiny
    near the solution, so a shift there would swamp it); the equality rows (``w = 0``, possibly
    rank deficient) get ``shift * M_ii``, floored at ``1e-8 max diag M`` for zero rows. Where the
    Cholesky fails, every row gets that shift, x100 per try.
    """
    M = torch.baddbmm(torch.diag_embed(w), V.mT, V / g.unsqueeze(-1))
    diag = M.diagonal(dim1=-2, dim2=-1)
    floor = 1e-8 * diag.amax(-1, keepdim=True).clamp_min(torch.finfo(M.dtype).tiny) if M.shape[-1] else diag
    base = shift * torch.maximum(diag, floor)
    delta = torch.where(w == 0, base, 0.0)
    L, info = torch.linalg.cholesky_ex(M + torch.diag_embed(delta))
    bad = info != 0
    for _ in range(tries):
        if not bool(bad.any()):
            break
        delta = torch.where(bad.unsqueeze(-1), torch.maximum(100.0 * delta, base), delta)
        i = bad.nonzero().squeeze(-1)
        Li, info_i = torch.linalg.cholesky_ex(M[i] + torch.diag_embed(delta[i]))
        L, bad = L.index_copy(0, i, Li), bad.index_copy(0, i, info_i != 0)
    return LowRankKKT(g, V, w, L, rows, ~bad)


def _vz(V: Tensor, z: Tensor) -> Tensor:
    """``V z`` for ``V (B, n, r)``, ``z (B, r)`` -> ``(B, n)``."""
    return (z.unsqueeze(-2) @ V.mT).squeeze(-2)


def _vtx(V: Tensor, x: Tensor) -> Tensor:
    """``V' x`` for ``V (B, n, r)``, ``x (B, n)`` -> ``(B, r)``."""
    return (x.unsqueeze(-2) @ V).squeeze(-2)
