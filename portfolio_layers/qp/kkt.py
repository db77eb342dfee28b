"""Every KKT factorization of the QP layer, shared by the interior point, the polish and the backward.

After eliminating the inequality slacks/multipliers and the bound multipliers, a Newton step of the
interior point (and the adjoint system of the backward) is the saddle-point system

    [ H  A' ] [dx]   [r1]
    [ A  0  ] [dy] = [r2],      H = P + G' diag(d_G) G + diag(d_x),

with ``d_G = lam / s`` and ``d_x = z_l / (x - lb) + z_u / (ub - x)``. ``H`` is factored by Cholesky
(with a small relative diagonal shift, increased until the factorization succeeds) and the
equalities by the ``p x p`` Schur complement ``A H^-1 A'`` (also Cholesky, also shifted when
``A`` is rank deficient). The system is symmetric, so the same factorization solves the adjoint.

Three factorizations, one interface: each is built by a ``factor*`` function and is a frozen record
with ``ok (B,)`` (False where the factorization failed even after regularization), ``take(idx)``
(the factorization of a sub-batch, without refactoring) and ``solve(r1, r2=None) -> (dx, dy)``
(``r2 = None`` means a zero right side on the constraint rows; a factorization made with
``refine=True`` keeps the matrix it factored and refines every solve once against it):

- :class:`ReducedKKT` (:func:`factor`): the system above; the interior point's Newton steps.
- :class:`ActiveKKT` (:func:`factor_active`): the equality-constrained system of an active set on
  the free variables only; the polish and the backward of a polished element.
- :class:`AugmentedKKT` (:func:`factor_augmented`): an LDL' of the system that keeps the general
  inequality rows; the backward of an interior-point element with ``m > 0``.

Which elements the backward refactors: an element finished by the active-set polish (the usual
case) reuses the :class:`ActiveKKT` its polish computed in the forward, so its backward costs triangular
solves only. An element solved by the interior point alone (polishing disabled, or no polished point
was accepted) is refactored once, at the returned point, when the autograd context is set up: a
:class:`ReducedKKT` with refinement when ``m = 0``, an :class:`AugmentedKKT` otherwise (the last
Newton step's factorization belongs to the previous iterate and is not reused). Failed elements are
not factored (their gradients are zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.qp.factor import FactorCov
from portfolio_layers.qp.lowrank import ActiveLowRankKKT, LowRankKKT, factor_active_lowrank, factor_lowrank
from portfolio_layers.qp.problem import BatchRecord

AUGMENT = 1.0
"""Weight ``rho`` of the term ``rho C'C`` that :func:`factor_active` adds to ``H``."""


def mv(M: Tensor | FactorCov, v: Tensor) -> Tensor:
    """``M v`` for a batch: ``M (B, r, n)`` (or an operator with ``.mv``), ``v (B, n)`` -> ``(B, r)``."""
    if not isinstance(M, Tensor):  # FactorCov, or the split operators of qp.l1
        return M.mv(v)
    return (v.unsqueeze(-2) @ M.mT).squeeze(-2)  # faster than M @ v[..., None] on CPU


def mtv(M: Tensor, v: Tensor) -> Tensor:
    """``M' v`` for a batch: ``M (B, r, n)`` (or an operator with ``.mtv``), ``v (B, r)`` -> ``(B, n)``."""
    if not isinstance(M, Tensor):
        return M.mtv(v)
    return (v.unsqueeze(-2) @ M).squeeze(-2)


@dataclass(frozen=True)
class ReducedKKT(BatchRecord):
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
    H : Tensor of shape (B, n, n) or None
        ``H`` (+ shift), kept to refine every solve once; None for plain solves.
    """

    L: Tensor
    A: Tensor | None
    HiAt: Tensor | None
    Ls: Tensor | None
    ok: Tensor
    H: Tensor | None = None

    def solve(self, r1: Tensor, r2: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Solve the saddle system for ``r1 (B, n)`` and ``r2 (B, p)`` (None: zero).

        Returns ``dx (B, n)`` and ``dy (B, p)`` (None without equalities). With ``H`` kept, one
        round of iterative refinement follows: near the solution ``H`` holds terms ``lam / s`` of
        very different magnitudes, and refinement recovers the accuracy the factorization loses.
        """
        if r2 is None and self.A is not None:
            r2 = r1.new_zeros(r1.shape[0], self.A.shape[-2])
        dx, dy = self._solve(r1, r2)
        if self.H is None:
            return dx, dy
        e1, e2 = r1 - mv(self.H, dx), None
        if self.A is not None:
            e1 = e1 - mtv(self.A, dy)
            e2 = r2 - (self.A @ dx.unsqueeze(-1)).squeeze(-1)
        cx, cy = self._solve(e1, e2)
        return dx + cx, None if dy is None else dy + cy

    def _solve(self, r1: Tensor, r2: Tensor | None) -> tuple[Tensor, Tensor | None]:
        u = _chol_solve(self.L, r1.unsqueeze(-1))
        if self.A is None:
            return u.squeeze(-1), None
        dy = _chol_solve(self.Ls, self.A @ u - r2.unsqueeze(-1))
        return (u - self.HiAt @ dy).squeeze(-1), dy.squeeze(-1)


def factor(
    H: Tensor, A: Tensor | None, shift: float, *, refine: bool = False, out: Tensor | None = None
) -> ReducedKKT:
    """Factor the reduced KKT matrix with blocks ``H (B, n, n)`` (overwritten) and ``A (B, p, n)``.

    ``H`` is shifted by ``shift`` (absolute: the solver normalizes ``P`` to ``max|P| <= 1``), the
    Schur complement by ``shift * max diag``; shifts grow x100 where a factorization fails.
    ``refine`` keeps ``H`` so that every solve is refined once. ``out`` is an optional
    (column-major) workspace for the Cholesky factor of ``H``.
    """
    delta = torch.full(H.shape[:1], shift, dtype=H.dtype, device=H.device)
    L, ok, Hs = _shifted_cholesky(H, delta, out=out)
    return _with_rows(L, ok, Hs if refine else None, A, shift, torch.finfo(H.dtype).tiny)


@dataclass(frozen=True)
class ActiveKKT(BatchRecord):
    """Factorization of the KKT system of an active set, on the free variables only.

    Solves ``[P_FF  C_F'; C_F  0] [x_F; nu] = [r1_F; r2]`` for the free variables ``F`` of each
    element; the rows ``C`` are the equalities and the active inequality rows. ``H`` holds
    ``P_FF + AUGMENT C_F'C_F``: the caller adds ``AUGMENT C'r2`` to ``r1`` (an augmented-Lagrangian
    term with the same solution that keeps ``H`` positive definite whenever the KKT matrix is
    regular). The free variables of each element are gathered into the first ``k`` slots (``k`` the
    largest number of free variables in the batch; the slots past an element's own count are padding
    with an identity row), so the factorization costs ``O(k^3)`` instead of ``O(n^3)``.

    Attributes
    ----------
    K : ReducedKKT
        Refined factorization of the compact system (``H (B, k, k)``, rows ``(B, p + m, k)``).
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
        """False where the factorization failed even after regularization, shape (B,)."""
        return self.K.ok

    def solve(self, r1: Tensor, r2: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Solve for ``r1 (B, n)`` (entries of fixed variables ignored) and ``r2 (B, p + m)`` (None: zero).

        Returns ``x (B, n)`` (zero on the fixed variables) and the multipliers ``(B, p + m)``.
        """
        xk, nu = self.K.solve(r1.gather(-1, self.cols) * self.valid, r2)
        return torch.zeros_like(r1).scatter_(-1, self.cols, xk * self.valid), nu


def factor_active(
    P: Tensor | FactorCov, C: Tensor | None, free: Tensor, shift: float, pinned: Tensor | None = None
) -> ActiveKKT | ActiveLowRankKKT:
    """Factor the KKT system of an active set (see :class:`ActiveKKT`), refined on every solve.

    Parameters
    ----------
    P : Tensor of shape (B, n, n) or FactorCov
        A :class:`FactorCov` gives the low-rank :class:`~portfolio_layers.qp.lowrank.ActiveLowRankKKT`.
    C : Tensor of shape (B, p + m, n) or None
        Constraint rows held as equalities: ``A``, then ``G`` with its inactive rows zeroed.
    free : Tensor of shape (B, n), dtype bool
        Variables not held at a bound.
    shift : float
        Diagonal shift of the Cholesky factorizations (grown x100 where one fails).
    pinned : Tensor of shape (B, m), dtype bool, optional
        Inactive inequality rows (the last ``m`` rows of ``C``): their multiplier is pinned to 0.
    """
    if isinstance(P, FactorCov):
        return factor_active_lowrank(P, C, free, shift, pinned, AUGMENT)
    B, n = free.shape
    k = max(int(free.sum(-1).max()), 1)
    cols = torch.argsort((~free).to(torch.int8), dim=-1, stable=True)[:, :k]
    valid = free.gather(-1, cols).to(P.dtype)
    H = P.gather(-2, cols.unsqueeze(-1).expand(B, k, n)).gather(-1, cols.unsqueeze(-2).expand(B, k, k))
    H = H * valid.unsqueeze(-1) * valid.unsqueeze(-2)
    H.diagonal(dim1=-2, dim2=-1).add_(1.0 - valid)
    if C is not None:
        C = C.gather(-1, cols.unsqueeze(-2).expand(B, C.shape[-2], k)) * valid.unsqueeze(-2)
        H = torch.baddbmm(H, C.mT, C, alpha=AUGMENT)
    L, ok, Hs = _shifted_cholesky(H, torch.full((B,), shift, dtype=H.dtype, device=H.device))
    return ActiveKKT(_with_rows(L, ok, Hs, C, shift, 1.0, pinned), cols, valid)


def _with_rows(
    L: Tensor,
    ok: Tensor,
    H: Tensor | None,
    A: Tensor | None,
    shift: float,
    floor: float,
    pinned: Tensor | None = None,
) -> ReducedKKT:
    """Complete the factorization ``L`` of ``H`` with the shifted Cholesky of ``A H^-1 A'``.

    The Schur complement is shifted by ``shift * max(max diag, floor)``; ``pinned (B, m)`` adds 1 to
    the diagonal of its last ``m`` rows.
    """
    if A is None:
        return ReducedKKT(L, None, None, None, ok, H)
    HiAt = _chol_solve(L, A.mT)
    S = A @ HiAt
    if pinned is not None:
        m = pinned.shape[-1]
        S[:, -m:, -m:].diagonal(dim1=-2, dim2=-1).add_(pinned.to(S.dtype))
    scale = S.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(floor)
    Ls, ok_s, _ = _shifted_cholesky(S, shift * scale)
    return ReducedKKT(L, A, HiAt, Ls, ok & ok_s, H)


def _chol_solve(L: Tensor, R: Tensor) -> Tensor:
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


def factor_newton(
    P: Tensor | FactorCov,
    A: Tensor | None,
    G: Tensor | None,
    d_G: Tensor | None,
    d_x: Tensor,
    shift: float,
    ws: dict[str, Tensor],
) -> ReducedKKT | LowRankKKT:
    """Factor an interior-point Newton system, ``H = P + G' diag(d_G) G + diag(d_x)`` with rows ``A``.

    A dense ``P (B, n, n)`` gives a :class:`ReducedKKT` (``ws``: workspaces reused across
    iterations, filled on the first call); a :class:`FactorCov` the capacitance factorization
    :class:`~portfolio_layers.qp.lowrank.LowRankKKT` (``G`` kept as low-rank columns).
    """
    if isinstance(P, FactorCov):
        return factor_lowrank(P, d_x, A, G, None if G is None else d_G.reciprocal(), shift, return_G=False)
    k = P.shape[0]
    if "H" not in ws:  # reused memory: fresh 5 MB buffers each iteration cost page faults
        ws["H"], ws["L"] = torch.empty_like(P), torch.empty_like(P).mT  # L column-major, as LAPACK
    H = reduced_matrix(P, G, d_G, d_x, out=ws["H"][:k])
    return factor(H, A, shift, out=ws["L"][:k])


def factor_point(
    P: Tensor | FactorCov, d_x: Tensor, A: Tensor | None, G: Tensor | None, W: Tensor | None, shift: float
) -> ReducedKKT | AugmentedKKT | LowRankKKT:
    """Factor the backward's KKT system at an interior-point solution (``W = s / lam (B, m)`` or None).

    Dense: without general inequalities the reduced Cholesky with refinement, with them the LDL'
    of :class:`AugmentedKKT`. A :class:`FactorCov`: the same augmented system by its capacitance
    matrix (:class:`~portfolio_layers.qp.lowrank.LowRankKKT`, multipliers of ``[A; G]``).
    """
    if isinstance(P, FactorCov):
        return factor_lowrank(P, d_x, A, G, W, shift, return_G=True)
    if G is not None:
        return factor_augmented(P, d_x, A, G, W, shift)
    return factor(reduced_matrix(P, None, None, d_x), A, shift, refine=True)


@dataclass(frozen=True)
class AugmentedKKT(BatchRecord):
    """LDL' factorization of the symmetric indefinite system (the backward's, when ``m > 0``)

        [ Hb  A'  G'      ]
        [ A   -dI  0      ]      Hb = P + diag(d_x),  W = s / lam,
        [ G   0   -W - dI ]

    which keeps active inequality rows as (near) equalities instead of adding ``lam / s`` penalties
    of size ``1 / mu`` to ``H``: far better conditioned at a solution with active general rows.

    Attributes
    ----------
    LD, pivots : Tensor of shape (B, N, N), (B, N)
        ``torch.linalg.ldl_factor_ex`` of the matrix above (``N = n + p + m``).
    n : int
    ok : Tensor of shape (B,), dtype bool
    """

    LD: Tensor
    pivots: Tensor
    n: int
    ok: Tensor

    def solve(self, r1: Tensor, r2: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Solve with right side ``(r1 (B, n), r2 (B, p + m))`` (``r2`` None: zero).

        Returns ``dx (B, n)`` and the multipliers ``(B, p + m)`` of ``[A; G]``.
        """
        rhs = r1.new_zeros(self.LD.shape[0], self.LD.shape[-1], 1)
        rhs[:, : self.n, 0] = r1
        if r2 is not None:
            rhs[:, self.n :, 0] = r2
        sol = torch.linalg.ldl_solve(self.LD, self.pivots, rhs).squeeze(-1)
        return sol[:, : self.n], sol[:, self.n :]


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
    return AugmentedKKT(LD, piv, n, info == 0)
