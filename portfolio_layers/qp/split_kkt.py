"""Newton systems of the split L1 problem (:mod:`portfolio_layers.qp.l1`), reduced to ``n x n``.

Over ``z = [x, u, v]`` the interior point's reduced system is

    [ H_x  0    A'  I  ] [dx ]   [r_x]      H_x = P + G' diag(d_G) G + diag(d_x)
    [ 0    K  0   -J'  ] [duv] = [r_uv]     K = diag(D_u, D_v) + d_t e e'   (e = 1, 2n entries)
    [ A    0    0   0  ] [dy ]   [r_y]      J = [I, -I]
    [ I   -J    0   0  ] [dw ]   [r_w]

with the barrier terms ``D_u = z_u / u``, ``D_v = z_v / v`` and ``d_t = lam_t / s_t`` of the limit row
(0 without a limit). Eliminating ``duv = K^-1 (r_uv + J'dw)`` and then ``dw = M^-1 (dx - r_w - J K^-1
r_uv)``, ``M = J K^-1 J'``, leaves the ``n x n`` system of the problem on ``x`` alone,

    [ H_x + M^-1  A' ] [dx]   [r_x + M^-1 (r_w + J K^-1 r_uv)]
    [ A           0  ] [dy] = [r_y                            ],

and by Sherman-Morrison (twice) ``M^-1 = diag(S) + gamma (S c)(S c)'`` with ``a = 1 / D_u``, ``b = 1 /
D_v``, ``S = 1 / (a + b)``, ``c = a - b`` and ``gamma = d_t / (1 + d_t sum(4 a b S))`` (a form without
cancellation). ``H_x + M^-1`` is ``P`` plus a diagonal plus one rank-one term: factored by the dense
Cholesky of :func:`~portfolio_layers.qp.kkt.factor_newton`, or, for a :class:`FactorCov`, as the
factor form with one extra factor column ``sqrt(gamma) S c`` (``O(n k^2)``).

Near a solution ``a`` or ``b`` of a trading asset is of order ``1 / mu`` and ``gamma`` too when the
limit binds, so the products are not formed naively: ``M^-1 J K^-1 r`` is expanded into terms
that stay bounded (:meth:`SplitKKT._mjk`), and of ``du``, ``dv`` the one with the smaller barrier
term comes from ``K^-1`` while the other follows from the row ``dx - du + dv = r_w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.qp.factor import FactorCov
from portfolio_layers.qp.kkt import ReducedKKT, factor_newton
from portfolio_layers.qp.lowrank import LowRankKKT
from portfolio_layers.qp.problem import BatchRecord, QPData


@dataclass(frozen=True)
class SplitKKT(BatchRecord):
    """The reduced Newton system of a split problem (module docstring), for a batch ``B``.

    Attributes
    ----------
    core : ReducedKKT or LowRankKKT
        Factorization of ``[H_x + M^-1, A'; A, 0]``.
    a, b, S, Sc : Tensor of shape (B, n)
        ``1 / D_u``, ``1 / D_v``, ``S`` and ``S c``.
    dt, T, W, gamma : Tensor of shape (B,)
        ``d_t``, ``sum(a + b)``, ``sum(4 a b S)`` and ``gamma`` (all 0 but ``T`` without a limit).
    p : int
        Rows of ``A``.
    """

    core: ReducedKKT | LowRankKKT
    a: Tensor
    b: Tensor
    S: Tensor
    Sc: Tensor
    dt: Tensor
    T: Tensor
    W: Tensor
    gamma: Tensor
    p: int

    @property
    def ok(self) -> Tensor:
        """False where the factorization failed even after regularization, shape (B,)."""
        return self.core.ok

    def _rho(self, ru: Tensor, rv: Tensor) -> tuple[Tensor, Tensor]:
        """``sigma = e'D^-1 [ru; rv]`` and ``rho = d_t sigma / (1 + d_t T)``, shape (B,)."""
        sigma = (self.a * ru + self.b * rv).sum(-1)
        return sigma, self.dt * sigma / (1.0 + self.dt * self.T)

    def _minv(self, y: Tensor) -> Tensor:
        """``M^-1 y``."""
        return self.S * y + (self.gamma * (self.Sc * y).sum(-1)).unsqueeze(-1) * self.Sc

    def _mjk(self, ru: Tensor, rv: Tensor) -> Tensor:
        """``M^-1 J K^-1 [ru; rv] = S p - rho S c + gamma Q S c`` with ``p = a ru - b rv`` and the
        bounded ``Q = sigma / (1 + d_t T) - 2 sum(a b S (ru + rv)) + rho W``."""
        sigma, rho = self._rho(ru, rv)
        Q = (
            sigma / (1.0 + self.dt * self.T)
            - 2.0 * (self.a * self.b * self.S * (ru + rv)).sum(-1)
            + rho * self.W
        )
        return self.S * (self.a * ru - self.b * rv) + (self.gamma * Q - rho).unsqueeze(-1) * self.Sc

    def solve(self, r1: Tensor, r2: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Solve for ``r1 (B, 3n)`` and ``r2 (B, p + n)`` (rows ``[A 0 0; I -I I]``; None: zero).

        Returns ``dz (B, 3n)`` and the multipliers ``(B, p + n)`` of the rows.
        """
        n = self.S.shape[-1]
        rx, ru, rv = r1[:, :n], r1[:, n : 2 * n], r1[:, 2 * n :]
        r20 = None if r2 is None or self.p == 0 else r2[:, : self.p]
        rw = r1.new_zeros(r1.shape[0], n) if r2 is None else r2[:, self.p :]
        mjk = self._mjk(ru, rv)
        dx, dy = self.core.solve(rx + self._minv(rw) + mjk, r20)
        dw = self._minv(dx - rw) - mjk
        ru, rv = ru + dw, rv - dw
        rho = self._rho(ru, rv)[1].unsqueeze(-1)
        du, dv = self.a * (ru - rho), self.b * (rv - rho)
        trade = dx - rw  # = du - dv
        big = self.a >= self.b
        du, dv = torch.where(big, trade + dv, du), torch.where(big, dv, du - trade)
        return torch.cat([dx, du, dv], -1), dw if dy is None else torch.cat([dy, dw], -1)


def factor_split(d: QPData, d_G: Tensor | None, d_x: Tensor, shift: float, ws: dict[str, Tensor]) -> SplitKKT:
    """Factor the Newton system of the split problem ``d`` (see :func:`portfolio_layers.qp.l1.split`).

    Parameters
    ----------
    d : QPData
        The split problem (``d.P`` a ``SplitCost``, ``d.A``/``d.G`` ``SplitRows``).
    d_G : Tensor of shape (B, m + 1) or (B, m) or None
        ``lam / s`` of the rows of ``G``, then of the limit row when there is one.
    d_x : Tensor of shape (B, 3n)
        The bound barrier terms of ``z``.
    shift : float
        Diagonal shift of the core factorization.
    ws : dict
        Workspaces of the dense core factorization (see ``kkt.factor_newton``).
    """
    n, P = d.P.n, d.P.P
    dxx, Du, Dv = d_x[:, :n], d_x[:, n : 2 * n], d_x[:, 2 * n :]
    a, b = Du.reciprocal(), Dv.reciprocal()
    S = (a + b).reciprocal()
    T, W = (a + b).sum(-1), (4.0 * a * b * S).sum(-1)
    m0 = 0 if d.G is None else d.G.r
    G0, dG0 = (d.G.core, d_G[:, :m0]) if m0 else (None, None)
    if d.l1.tau is None:
        dt = gamma = torch.zeros_like(T)
        Sc = torch.zeros_like(S)
        Pc = P
    else:
        dt = d_G[:, -1]
        gamma = dt / (1.0 + dt * W)
        Sc = S * (a - b)
        col = (gamma.sqrt().unsqueeze(-1) * Sc).unsqueeze(-1)
        if isinstance(P, FactorCov):
            Pc = FactorCov(torch.cat([P.F, col], -1), P.d)
        else:
            Pc = torch.baddbmm(P, col, col.mT)
    core = factor_newton(Pc, d.A.core, G0, dG0, dxx + S, shift, ws)
    return SplitKKT(core, a, b, S, Sc, dt, T, W, gamma, d.A.r)
