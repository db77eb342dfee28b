"""The two robust problems of :mod:`portfolio_layers.models.dro_native`, batched, with their Newton systems.

Each problem class holds the batch data, its starting point, the objective ``f`` and constraints
``g(x) <= 0`` with the products ``J dx`` and ``J'w``, the differentiable residuals that the implicit
backward differentiates, and a structured factorization of ``[H + J' diag(D) J, a; a', 0]`` returned
as a solve; the interior point and the backward of :mod:`~portfolio_layers.models.dro_native` run on
this interface.

Problems (``E (B, N, n)`` errors in unit scale, ``a_j = eps_j'z - c``, ``l_j = a_j^2``, ``u = 1/N``):

- :class:`HellingerProblem`, ``x = (z, c, xi, lam)``: ``f = xi + delta lam + (1/N) sum_j lam s_j / (lam - s_j)
  - gamma y'z`` with ``s_j = l_j - xi``, domain ``tau_j = lam - s_j > 0``, constraints ``z >= 0, lam >= 0``.
  The worst-case distribution is ``p_j = r_j^2 / N`` with ``r_j = lam / tau_j``.
- :class:`TVProblem`, ``x = (z, c, v, t, beta)``: ``f = (delta/2)(v - t) + (1/N) sum_j beta_j - gamma y'z``,
  constraints ``l_j <= beta_j``, ``t <= beta_j``, ``l_j <= v``, ``z >= 0``, ``t <= v``, ``t >= 0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Solve = Callable[[Tensor], Tensor]


class _Problem:
    """Batched data ``E (B, N, n)``, ``y (B, n)``, ``gamma (B,)``, ``delta (B,)`` shared by both problems.

    ``Et`` holds ``E`` transposed and contiguous, ``(B, n, N)``: the products ``E z`` run as row vectors
    against it (``z' E'``), several times faster than batched matrix-vector products on ``E``.
    """

    nx: int
    m: int

    def __init__(self, E: Tensor, y: Tensor, gamma: Tensor, delta: Tensor, ridge: float = 0.0) -> None:
        self.E, self.y, self.gamma, self.delta, self.ridge = E, y, gamma, delta, ridge
        self.Et = E.mT.contiguous()
        self.B, self.N, self.n = E.shape

    def subset(self, keep: Tensor) -> _Problem:
        """The same problem class on the batch elements ``keep`` (a bool mask or indices)."""
        return type(self)(self.E[keep], self.y[keep], self.gamma[keep], self.delta[keep], self.ridge)

    def keeps_interior(self, x: Tensor, xs: Tensor, fraction: float) -> Tensor:
        """Whether the step from ``x`` to ``xs`` stays in the domain of ``f``, shape ``(B,)``."""
        return torch.isfinite(self.objective(xs)[0])

    def _linear(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``ridge ||z||^2 - gamma y'z`` ``(B,)`` and its gradient in ``z`` ``(B, n)``."""
        z = x[:, : self.n]
        value = self.ridge * z.square().sum(-1) - self.gamma * (self.y * z).sum(-1)
        return value, 2.0 * self.ridge * z - self.gamma[:, None] * self.y

    def residual(self, x: Tensor, x_extra: Tensor | None = None) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _equal_weight(self) -> tuple[Tensor, Tensor, Tensor]:
        """The starting point's ``z = 1/n`` ``(B, n)``, ``c`` the mean of ``E z`` ``(B,)`` and the losses
        ``(E z - c)^2`` ``(B, N)``."""
        z = torch.full((self.B, self.n), 1.0 / self.n, dtype=self.E.dtype, device=self.E.device)
        a = (self.E @ z[..., None]).squeeze(-1)
        c = a.mean(-1)
        return z, c, (a - c[:, None]).square()

    def _losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``a = E z - c`` and ``l = a^2``, each ``(B, N)``."""
        n = self.n
        a = (x[:, None, :n] @ self.Et).squeeze(1) - x[:, n, None]
        return a, a.square()

    def _mt(self, w: Tensor) -> Tensor:
        """``M'w = (E'w, -sum w)`` with ``M = [E, -1]`` for ``w (B, k, N)``, shape ``(B, k, n + 1)``."""
        return torch.cat([w @ self.E, -w.sum(-1, keepdim=True)], -1)

    def _zc_gradient(self, a: Tensor, w: Tensor) -> Tensor:
        """``sum_j w_j grad_{z,c} l_j = 2 M'(w a)`` with ``M = [E, -1]``, shape ``(B, n + 1)``."""
        return self._mt((2.0 * w * a)[:, None, :]).squeeze(1)

    def _zc_gram(self, weights: Tensor) -> Tensor:
        """``M' diag(weights) M`` with ``M = [E, -1]``, shape ``(B, n + 1, n + 1)``."""
        B, n = self.B, self.n
        out = weights.new_empty(B, n + 1, n + 1)
        out[:, :n, :n] = (self.Et * weights[:, None, :]) @ self.E
        col = weights[:, None, :] @ self.E  # (B, 1, n)
        out[:, n, :n] = out[:, :n, n] = -col.squeeze(1)
        out[:, n, n] = weights.sum(-1)
        return out


class HellingerProblem(_Problem):
    """The Hellinger dual in ``x = (z, c, xi, lam)`` (see the module docstring)."""

    def __init__(self, E: Tensor, y: Tensor, gamma: Tensor, delta: Tensor, ridge: float = 0.0) -> None:
        super().__init__(E, y, gamma, delta, ridge)
        self.nx, self.m = self.n + 3, self.n + 1
        self.general = torch.zeros(self.m, dtype=torch.bool, device=E.device)  # all bounds

    def start(self) -> Tensor:
        z, c, loss = self._equal_weight()
        xi = loss.mean(-1)
        spread = loss.amax(-1) - xi
        lam = torch.maximum((loss.var(-1, correction=0) / self.delta).sqrt(), 2.0 * spread) + 1e-3 * (
            1.0 + xi
        )
        return torch.cat([z, c[:, None], xi[:, None], lam[:, None]], -1)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``a (B, N)``, ``tau = lam + xi - l (B, N)``, ``r = lam / tau (B, N)`` and ``lam (B,)``."""
        a, loss = self._losses(x)
        xi, lam = x[:, -2], x[:, -1]
        tau = lam[:, None] + xi[:, None] - loss
        return a, tau, lam[:, None] / tau, lam

    def keeps_interior(self, x: Tensor, xs: Tensor, fraction: float) -> Tensor:
        """Whether the step from ``x`` to ``xs`` keeps ``tau_j`` and ``lam`` above ``fraction`` times their
        values at ``x`` (inside the domain ``tau_j, lam > 0``, away from its boundary), shape ``(B,)``."""
        _, tau, _, lam = self._parts(x)
        _, tau_s, _, lam_s = self._parts(xs)
        return (tau_s > fraction * tau).all(-1) & (lam_s > fraction * lam)

    def objective(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f (B,)`` (``inf`` outside the domain) and its gradient ``(B, nx)``."""
        N = self.N
        a, tau, r, lam = self._parts(x)
        inside = (tau > 0).all(-1) & (lam > 0)
        lin, lin_grad = self._linear(x)
        f = x[:, -2] + self.delta * lam + lam * (r - 1).sum(-1) / N + lin
        f = torch.where(inside, f, torch.full_like(f, torch.inf))
        p = r.square() / N
        zc = self._zc_gradient(a, p)
        grad = torch.cat(
            [
                zc[:, : self.n] + lin_grad,
                zc[:, self.n :],
                (1.0 - p.sum(-1))[:, None],
                (self.delta - (1.0 - r).square().sum(-1) / N)[:, None],
            ],
            -1,
        )
        return f, grad

    def constraints(self, x: Tensor) -> Tensor:
        """``g = (-z, -lam)``, shape ``(B, n + 1)``."""
        return -torch.cat([x[:, : self.n], x[:, -1:]], -1)

    def jac_t(self, x: Tensor, w: Tensor) -> Tensor:
        """``J'w`` for ``w (B, m)``."""
        zero = torch.zeros_like(w[:, :2])
        return -torch.cat([w[:, : self.n], zero, w[:, -1:]], -1)

    def jac(self, x: Tensor, dx: Tensor) -> Tensor:
        """``J dx`` for ``dx (B, nx)``."""
        return self.constraints(dx)

    def residual(self, x: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """``grad f + J'lam`` and ``g``: differentiable w.r.t. the data (for the implicit gradient)."""
        return self.objective(x)[1] + self.jac_t(x, lam), self.constraints(x)

    def newton(self, x: Tensor, lam: Tensor, D: Tensor) -> Solve:
        """Factor ``[hess f + J'diag(D)J, a; a', 0]`` and return its solve ``(B, nx + 1) -> (B, nx + 1)``.

        ``hess f = 2 W' diag(p) W + G' diag(q) G`` with ``q = 2 / (N tau)``, rows ``W_j = (M_j, 0, 0)``,
        ``M_j = (eps_j, -1)`` and ``G_j = (2 r_j a_j M_j, -r_j, 1 - r_j)`` (the perspective ``lam s /
        (lam - s)`` has the rank-one Hessian ``(2 / tau) (1 - r, r)(1 - r, r)'`` in ``(lam, s)``). Its
        blocks are assembled from one weighted Gram matrix and three products with ``M'``:
        ``(z,c)``: ``M' diag(2p + 4 q r^2 a^2) M``, ``(z,c)-xi``: ``-M'(2 q r^2 a)``, ``(z,c)-lam``:
        ``M'(2 q r (1 - r) a)``, and the ``(xi, lam)`` block ``sum_j q_j (r_j^2, -r_j (1 - r_j); .,
        (1 - r_j)^2)``.
        """
        n, N, B, nx = self.n, self.N, self.B, self.nx
        a, tau, r, _ = self._parts(x)
        q = 2.0 / (N * tau)
        qr, rc = q * r, 1.0 - r
        w_zc = 2.0 * r.square() / N + 4.0 * qr * r * a.square()
        cols = self._mt(torch.stack([w_zc, -2.0 * qr * r * a, 2.0 * qr * rc * a], 1))  # (B, 3, n + 1)
        K = x.new_zeros(B, nx + 1, nx + 1)
        K[:, :n, :n] = (self.Et * w_zc[:, None, :]) @ self.E
        K[:, : n + 1, n] = K[:, n, : n + 1] = -cols[:, 0]  # the c column of M' diag(w_zc) M
        K[:, : n + 1, n + 1] = K[:, n + 1, : n + 1] = cols[:, 1]
        K[:, : n + 1, n + 2] = K[:, n + 2, : n + 1] = cols[:, 2]
        K[:, n + 1, n + 1] = (qr * r).sum(-1)
        K[:, n + 1, n + 2] = K[:, n + 2, n + 1] = -(qr * rc).sum(-1)
        K[:, n + 2, n + 2] = (q * rc.square()).sum(-1) + D[:, -1]
        diag = torch.arange(n, device=x.device)
        K[:, diag, diag] += D[:, :n] + 2.0 * self.ridge
        K[:, :n, nx] = 1.0
        K[:, nx, :n] = 1.0
        LU, piv = torch.linalg.lu_factor(K)
        return lambda rhs: torch.linalg.lu_solve(LU, piv, rhs[..., None]).squeeze(-1)


class TVProblem(_Problem):
    """The total-variation dual in ``x = (z, c, v, t, beta)`` (see the module docstring)."""

    def __init__(self, E: Tensor, y: Tensor, gamma: Tensor, delta: Tensor, ridge: float = 0.0) -> None:
        super().__init__(E, y, gamma, delta, ridge)
        self.nx, self.m = self.n + 3 + self.N, 3 * self.N + self.n + 2
        self.general = torch.ones(self.m, dtype=torch.bool, device=E.device)
        self.general[3 * self.N : 3 * self.N + self.n] = False  # z >= 0

    def start(self) -> Tensor:
        z, c, loss = self._equal_weight()
        scale = 1.0 + loss.mean(-1)
        v = loss.amax(-1) + scale
        t = 0.5 * loss.mean(-1)
        beta = torch.maximum(loss, t[:, None]) + 0.5 * scale[:, None]
        return torch.cat([z, c[:, None], v[:, None], t[:, None], beta], -1)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = self.n
        return x[:, n + 1], x[:, n + 2], x[:, n + 3 :]

    def objective(self, x: Tensor) -> tuple[Tensor, Tensor]:
        N = self.N
        v, t, beta = self._split(x)
        half = 0.5 * self.delta
        lin, lin_grad = self._linear(x)
        f = half * (v - t) + beta.sum(-1) / N + lin
        grad = torch.cat(
            [
                lin_grad,
                torch.zeros_like(half[:, None]),
                half[:, None],
                -half[:, None],
                torch.full_like(beta, 1.0 / N),
            ],
            -1,
        )
        return f, grad

    def constraints(self, x: Tensor) -> Tensor:
        """``g = (l - beta, t - beta, l - v, -z, t - v, -t)``, shape ``(B, 3N + n + 2)``."""
        _, loss = self._losses(x)
        v, t, beta = self._split(x)
        return torch.cat(
            [
                loss - beta,
                t[:, None] - beta,
                loss - v[:, None],
                -x[:, : self.n],
                (t - v)[:, None],
                -t[:, None],
            ],
            -1,
        )

    def _pieces(self, w: Tensor) -> tuple[Tensor, ...]:
        N, n = self.N, self.n
        return w[:, :N], w[:, N : 2 * N], w[:, 2 * N : 3 * N], w[:, 3 * N : 3 * N + n], w[:, -2], w[:, -1]

    def jac_t(self, x: Tensor, w: Tensor) -> Tensor:
        a, _ = self._losses(x)
        w1, w2, w3, w4, w5, w6 = self._pieces(w)
        zc = self._zc_gradient(a, w1 + w3) - torch.cat([w4, torch.zeros_like(w5[:, None])], -1)
        return torch.cat([zc, (-w3.sum(-1) - w5)[:, None], (w2.sum(-1) + w5 - w6)[:, None], -w1 - w2], -1)

    def jac(self, x: Tensor, dx: Tensor) -> Tensor:
        n = self.n
        a, _ = self._losses(x)
        dl = 2.0 * a * ((dx[:, None, :n] @ self.Et).squeeze(1) - dx[:, n, None])
        dv, dt, db = self._split(dx)
        return torch.cat(
            [dl - db, dt[:, None] - db, dl - dv[:, None], -dx[:, :n], (dt - dv)[:, None], -dt[:, None]], -1
        )

    def residual(self, x: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        return self.objective(x)[1] + self.jac_t(x, lam), self.constraints(x)

    def newton(self, x: Tensor, lam: Tensor, D: Tensor) -> Solve:
        """Solve ``[hess + J'diag(D)J, a; a', 0]`` by eliminating ``beta`` (its block is diagonal).

        In ``y = (z, c, v, t)`` the Schur complement is, with ``M = [E, -1]`` and ``Db = D1 + D2``,
        ``(z,c)``: ``2 M' diag(lam1 + lam3) M + 4 M' diag(a^2 (D1 D2 / Db + D3)) M + diag(D4)``,
        ``(z,c)-v``: ``-2 M'(D3 a)``, ``(z,c)-t``: ``-2 M'(a D1 D2 / Db)``, ``v-v``: ``sum D3 + D5``,
        ``t-t``: ``sum D1 D2 / Db + D5 + D6``, ``v-t``: ``-D5``; then ``dbeta = (r_b - C dy) / Db`` with
        ``C_j = -(2 D1_j a_j M_j, D2_j e_t)``.
        """
        n, N, B = self.n, self.N, self.B
        a, _ = self._losses(x)
        l1, _, l3, _, _, _ = self._pieces(lam)
        D1, D2, D3, D4, D5, D6 = self._pieces(D)
        Db = (D1 + D2).clamp(min=torch.finfo(D.dtype).tiny)  # >0: beta_j = max(l_j, t) binds one
        harm = D1 * D2 / Db
        ny = n + 3
        K = x.new_zeros(B, ny + 1, ny + 1)
        K[:, : n + 1, : n + 1] = self._zc_gram(2.0 * (l1 + l3) + 4.0 * a.square() * (harm + D3))
        diag = torch.arange(n, device=x.device)
        K[:, diag, diag] += D4 + 2.0 * self.ridge
        zv = -self._zc_gradient(a, D3)
        zt = -self._zc_gradient(a, harm)
        K[:, : n + 1, n + 1], K[:, n + 1, : n + 1] = zv, zv
        K[:, : n + 1, n + 2], K[:, n + 2, : n + 1] = zt, zt
        K[:, n + 1, n + 1] = D3.sum(-1) + D5
        K[:, n + 2, n + 2] = harm.sum(-1) + D5 + D6
        K[:, n + 1, n + 2] = K[:, n + 2, n + 1] = -D5
        K[:, :n, ny] = 1.0
        K[:, ny, :n] = 1.0
        LU, piv = torch.linalg.lu_factor(K)
        C_zc = 2.0 * D1 * a  # C_j = -(C_zc_j M_j, D2_j e_t)

        def solve(rhs: Tensor) -> Tensor:
            rb = rhs[:, n + 3 : n + 3 + N]
            s = rb / Db  # the Schur right-hand side is r_y - C' diag(1/Db) r_b
            zero = torch.zeros_like(s[:, :1])
            ry = torch.cat([rhs[:, : n + 3], rhs[:, -1:]], -1) + torch.cat(
                [self._zc_gradient(a, D1 * s), zero, (D2 * s).sum(-1, keepdim=True), zero], -1
            )
            dy = torch.linalg.lu_solve(LU, piv, ry[..., None]).squeeze(-1)
            Mdy = (dy[:, None, :n] @ self.Et).squeeze(1) - dy[:, n, None]
            db = (rb + C_zc * Mdy + D2 * dy[:, n + 2, None]) / Db
            return torch.cat([dy[:, : n + 3], db, dy[:, -1:]], -1)

        return solve


PROBLEMS: dict[str, type[HellingerProblem] | type[TVProblem]] = {
    "hellinger": HellingerProblem,
    "tv": TVProblem,
}
