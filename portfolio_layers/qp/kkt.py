"""Reduced KKT systems shared by the interior-point forward and the implicit backward.

After eliminating the inequality slacks/multipliers and the bound multipliers, a Newton step of the
interior point (and the adjoint system of the backward) is the saddle-point system

    [ H  A' ] [dx]   [r1]
    [ A  0  ] [dy] = [r2],      H = P + G' diag(d_G) G + diag(d_x),

with ``d_G = lam / s`` and ``d_x = z_l / (x - lb) + z_u / (ub - x)``. ``H`` is factored by Cholesky
(with a small relative diagonal shift, increased until the factorization succeeds) and the
equalities by the ``p x p`` Schur complement ``A H^-1 A'`` (also Cholesky, also shifted when
``A`` is rank deficient). The system is symmetric, so the same factorization solves the adjoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ReducedKKT:
    """Factorization of the reduced KKT matrix of a batch.

    Attributes
    ----------
    L : Tensor of shape (B, n, n)
        Lower Cholesky factor of ``H`` (+ shift).
    A : Tensor of shape (B, p, n) or None
    HiAt : Tensor of shape (B, n, p) or None
        ``H^-1 A'``.
    Ls : Tensor of shape (B, p, p) or None
        Lower Cholesky factor of ``A H^-1 A'`` (+ shift).
    ok : Tensor of shape (B,), dtype bool
        False where the factorization failed even after regularization.
    """

    L: Tensor
    A: Tensor | None
    HiAt: Tensor | None
    Ls: Tensor | None
    ok: Tensor
    H: Tensor | None = None

    def take(self, idx: Tensor) -> ReducedKKT:
        """The factorization of the sub-batch ``idx``."""
        return ReducedKKT(
            *(None if v is None else v[idx] for v in (self.L, self.A, self.HiAt, self.Ls, self.ok, self.H))
        )

    def refined_solve(self, r1: Tensor, r2: Tensor | None, steps: int = 2) -> tuple[Tensor, Tensor | None]:
        """:meth:`solve` plus ``steps`` rounds of iterative refinement against the stored ``H``.

        Near the solution ``H`` holds terms ``lam / s`` of very different magnitudes; refinement
        recovers the accuracy that the factorization loses (used by the backward).
        """
        dx, dy = self.solve(r1, r2)
        for _ in range(steps):
            e1 = r1 - (dx.unsqueeze(-2) @ self.H.mT).squeeze(-2)
            e2 = None
            if self.A is not None:
                e1 = e1 - (dy.unsqueeze(-2) @ self.A).squeeze(-2)
                e2 = r2 - (self.A @ dx.unsqueeze(-1)).squeeze(-1)
            cx, cy = self.solve(e1, e2)
            dx = dx + cx
            dy = None if dy is None else dy + cy
        return dx, dy

    def solve(self, r1: Tensor, r2: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Solve the saddle system for right-hand sides ``r1 (B, n)`` and ``r2 (B, p)``.

        Returns ``dx (B, n)`` and ``dy (B, p)`` (None without equalities).
        """
        u = chol_solve(self.L, r1.unsqueeze(-1))
        if self.A is None:
            return u.squeeze(-1), None
        rhs = self.A @ u - r2.unsqueeze(-1)
        dy = chol_solve(self.Ls, rhs)
        dx = u - self.HiAt @ dy
        return dx.squeeze(-1), dy.squeeze(-1)


def chol_solve(L: Tensor, R: Tensor) -> Tensor:
    """``(L L')^-1 R`` by two triangular solves (faster than ``cholesky_solve`` for batches on CPU)."""
    return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, R, upper=False), upper=True)


def _shifted_cholesky(
    M: Tensor, delta: Tensor, tries: int = 8, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Cholesky of ``M + delta I`` (``delta (B,)``), with ``delta`` x100 on failure, per element.

    ``M`` is modified in place (its diagonal is shifted); returns ``L``, ``ok`` and the shifted ``M``.
    ``out`` is an optional workspace for ``L``; it should be column-major (``torch.empty(B, n, n).mT``),
    the layout LAPACK works in, else torch copies the factor into it.
    """
    diag = M.diagonal(dim1=-2, dim2=-1)
    diag.add_(delta.unsqueeze(-1))
    if out is None:
        L, info = torch.linalg.cholesky_ex(M)
    else:
        info = torch.empty(M.shape[:1], dtype=torch.int32, device=M.device)
        L, info = torch.linalg.cholesky_ex(M, out=(out, info))
    bad = info != 0
    for _ in range(tries):
        if not bool(bad.any()):
            break
        idx = bad.nonzero().squeeze(-1)
        Mi = M[idx]
        Mi.diagonal(dim1=-2, dim2=-1).add_(99.0 * delta[idx].unsqueeze(-1))
        delta = delta.index_copy(0, idx, delta[idx] * 100.0)
        M = M.index_copy(0, idx, Mi)
        Li, infoi = torch.linalg.cholesky_ex(Mi)
        L = L.index_copy(0, idx, Li)
        bad = bad.index_copy(0, idx, infoi != 0)
    return L, ~bad, M


def factor(
    H: Tensor, A: Tensor | None, shift: float, keep: bool = False, out: Tensor | None = None
) -> ReducedKKT:
    """Factor the reduced KKT matrix with blocks ``H (B, n, n)`` (overwritten) and ``A (B, p, n)``.

    ``H`` is shifted by ``shift`` (absolute: the solver normalizes ``P`` to ``max|P| <= 1``), the
    Schur complement by ``shift * max diag``; shifts grow x100 where a factorization fails.
    ``out`` is an optional (column-major) workspace for the Cholesky factor of ``H``.
    """
    delta = torch.full(H.shape[:1], shift, dtype=H.dtype, device=H.device)
    L, ok, Hs = _shifted_cholesky(H, delta, out=out)
    Hk = Hs if keep else None
    if A is None:
        return ReducedKKT(L, None, None, None, ok, Hk)
    HiAt = chol_solve(L, A.mT)
    S = A @ HiAt
    scale = S.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(S.dtype).tiny)
    Ls, ok_s, _ = _shifted_cholesky(S, shift * scale)
    return ReducedKKT(L, A, HiAt, Ls, ok & ok_s, Hk)


def reduced_matrix(
    P: Tensor, G: Tensor | None, d_G: Tensor | None, d_x: Tensor, out: Tensor | None = None
) -> Tensor:
    """``H = P + G' diag(d_G) G + diag(d_x)`` for a batch: ``P (B, n, n)``, ``G (B, m, n)``.

    ``out`` (same shape as ``P``) is an optional workspace that receives ``H``.
    """
    if G is None:
        H = P.clone() if out is None else out.copy_(P)
    elif out is None:
        H = torch.baddbmm(P, G.mT, G * d_G.unsqueeze(-1))
    else:
        H = torch.baddbmm(P, G.mT, G * d_G.unsqueeze(-1), out=out)
    H.diagonal(dim1=-2, dim2=-1).add_(d_x)
    return H


@dataclass(frozen=True)
class AugmentedKKT:
    """LDL' factorization of the symmetric indefinite system (used by the backward when ``m > 0``)

        [ Hb  A'  G'      ]
        [ A   -dI  0      ]      Hb = P + diag(d_x),  W = s / lam,
        [ G   0   -W - dI ]

    which keeps active inequality rows as (near) equalities instead of adding ``lam / s`` penalties
    of size ``1 / mu`` to ``H``: far better conditioned at a solution with active general rows.
    """

    LD: Tensor
    pivots: Tensor
    n: int
    p: int
    ok: Tensor

    def solve(self, r1: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Solve with right side ``(r1, 0, 0)``; returns ``(wx (B, n), wy (B, p) or None, v (B, m))``."""
        B, N = self.LD.shape[0], self.LD.shape[-1]
        rhs = torch.zeros(B, N, 1, dtype=r1.dtype, device=r1.device)
        rhs[:, : self.n, 0] = r1
        sol = torch.linalg.ldl_solve(self.LD, self.pivots, rhs).squeeze(-1)
        wy = sol[:, self.n : self.n + self.p] if self.p else None
        return sol[:, : self.n], wy, sol[:, self.n + self.p :]


def factor_augmented(
    P: Tensor, d_x: Tensor, A: Tensor | None, G: Tensor, W: Tensor, shift: float
) -> AugmentedKKT:
    """Build and factor the augmented matrix of :class:`AugmentedKKT` (``G (B, m, n)``, ``W (B, m)``)."""
    B, n = d_x.shape
    p = 0 if A is None else A.shape[-2]
    N = n + p + G.shape[-2]
    K = torch.zeros(B, N, N, dtype=P.dtype, device=P.device)
    K[:, :n, :n] = P
    K[:, :n, :n].diagonal(dim1=-2, dim2=-1).add_(d_x + shift)
    if A is not None:
        K[:, n : n + p, :n] = A
        K[:, :n, n : n + p] = A.mT
    K[:, n + p :, :n] = G
    K[:, :n, n + p :] = G.mT
    diag = K.diagonal(dim1=-2, dim2=-1)
    diag[:, n:] -= shift
    diag[:, n + p :] -= W
    LD, piv, info = torch.linalg.ldl_factor_ex(K)
    return AugmentedKKT(LD, piv, n, p, info == 0)
