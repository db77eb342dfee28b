"""Native batched solver of the distributionally robust layers of :mod:`portfolio_layers.models.dro`.

Both robust layers are written as smooth convex programs with inequality constraints,

``minimize_x f(x)  s.t.  g(x) <= 0,  a'x = 1``        (``a`` sums the weights ``z``)

solved for a whole batch by one infeasible primal-dual interior point with slacks ``s = -g(x)`` and
Mehrotra's predictor-corrector (see :func:`interior_point`), to ``tol = 1e-10`` relative on errors
rescaled to unit root mean square. Eliminating ``ds`` and ``dlam`` leaves the symmetric positive
definite system ``[H + J' diag(lam/s) J, a; a', 0]`` with ``H = hess f + sum_k lam_k hess g_k``; each
problem class factors it with its own structure (TV: the ``beta`` block is diagonal and eliminated).

The gradient is implicit: the KKT map ``K(x, lam, nu; theta) = (grad f + J'lam + a nu, -lam * g,
a'x - 1) = 0`` has the same matrix after elimination, so for an upstream ``v = dL/dx`` the solve
``[Hred, a; a', 0] (w, w_nu) = (v, 0)`` and ``lam * w_lam = -(lam/s) * J w`` give ``dL/dtheta =
-w' d(grad f + J'lam)/dtheta + (lam * w_lam)' dg/dtheta`` (autograd on the differentiable residuals at
the fixed solution). At the tolerance this is the derivative of the exact KKT system with the active
set of the solution: the backward takes the limit of the central path, ``lam/s -> 0`` for the
inactive constraints (``s > lam``; capped at 1e-9) and ``lam/s`` (``~ 1/tol``) kept for the active
ones. At finite ``mu`` a small free weight ``z_i`` would otherwise keep a barrier curvature
``mu / z_i^2`` that biases the gradient (1e-3 relative for ``z_i ~ 1e-4`` at ``mu ~ 1e-11``).

Problems (``E (B, N, n)`` errors in unit scale, ``a_j = eps_j'z - c``, ``l_j = a_j^2``, ``u = 1/N``):

- :class:`HellingerProblem`, ``x = (z, c, xi, lam)``: ``f = xi + delta lam + (1/N) sum_j lam s_j / (lam - s_j)
  - gamma y'z`` with ``s_j = l_j - xi``, domain ``tau_j = lam - s_j > 0``, constraints ``z >= 0, lam >= 0``.
  The worst-case distribution is ``p_j = r_j^2 / N`` with ``r_j = lam / tau_j``.
- :class:`TVProblem`, ``x = (z, c, v, t, beta)``: ``f = (delta/2)(v - t) + (1/N) sum_j beta_j - gamma y'z``,
  constraints ``l_j <= beta_j``, ``t <= beta_j``, ``l_j <= v``, ``z >= 0``, ``t <= v``, ``t >= 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Solve = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class IPMSettings:
    """Hyperparameters of the primal-dual interior point (unit-scale data).

    Attributes
    ----------
    tol : float
        Stop when the residuals ``grad f + J'lam + a nu`` and ``g + s`` (inf-norms) are below
        ``tol (1 + ||grad f||_inf)`` and the gap ``s'lam`` below ``tol (1 + |f|)``.
    max_iter : int
        Newton steps at most.
    backtrack : float
        Factor of the step while ``x`` is outside the domain of ``f`` (Hellinger: ``xi + lam > l_j``).
    max_backtracks : int
        Such reductions at most per step.
    """

    tol: float = 1e-10
    max_iter: int = 100
    backtrack: float = 0.5
    max_backtracks: int = 40


class _Problem:
    """Batched data ``E (B, N, n)``, ``y (B, n)``, ``gamma (B,)``, ``delta (B,)`` shared by both problems."""

    nx: int
    m: int

    def __init__(self, E: Tensor, y: Tensor, gamma: Tensor, delta: Tensor, ridge: float = 0.0) -> None:
        self.E, self.y, self.gamma, self.delta, self.ridge = E, y, gamma, delta, ridge
        self.B, self.N, self.n = E.shape

    def _linear(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``ridge ||z||^2 - gamma y'z`` ``(B,)`` and its gradient in ``z`` ``(B, n)``."""
        z = x[:, : self.n]
        value = self.ridge * z.square().sum(-1) - self.gamma * (self.y * z).sum(-1)
        return value, 2.0 * self.ridge * z - self.gamma[:, None] * self.y

    def residual(self, x: Tensor, x_extra: Tensor | None = None) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``a = E z - c`` and ``l = a^2``, each ``(B, N)``."""
        n = self.n
        a = (self.E @ x[:, :n, None]).squeeze(-1) - x[:, n, None]
        return a, a.square()

    def _zc_gradient(self, a: Tensor, w: Tensor) -> Tensor:
        """``sum_j w_j grad_{z,c} l_j = 2 M'(w a)`` with ``M = [E, -1]``, shape ``(B, n + 1)``."""
        wa = 2.0 * w * a
        return torch.cat([(self.E.mT @ wa[..., None]).squeeze(-1), -wa.sum(-1, keepdim=True)], -1)

    def _zc_gram(self, weights: Tensor) -> Tensor:
        """``M' diag(weights) M`` with ``M = [E, -1]``, shape ``(B, n + 1, n + 1)``."""
        M = torch.cat([self.E, -torch.ones_like(self.E[..., :1])], -1)
        return M.mT @ (weights[..., None] * M)


class HellingerProblem(_Problem):
    """The Hellinger dual in ``x = (z, c, xi, lam)`` (see the module docstring)."""

    def __init__(self, E: Tensor, y: Tensor, gamma: Tensor, delta: Tensor, ridge: float = 0.0) -> None:
        super().__init__(E, y, gamma, delta, ridge)
        self.nx, self.m = self.n + 3, self.n + 1
        self.general = torch.zeros(self.m, dtype=torch.bool, device=E.device)  # all bounds

    def start(self) -> Tensor:
        n = self.n
        z = torch.full((self.B, n), 1.0 / n, dtype=self.E.dtype, device=self.E.device)
        a = (self.E @ z[..., None]).squeeze(-1)
        c = a.mean(-1)
        loss = (a - c[:, None]).square()
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

    def objective(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f (B,)`` (``inf`` outside the domain) and its gradient ``(B, nx)``."""
        N = self.N
        a, tau, r, lam = self._parts(x)
        inside = (tau > 0).all(-1) & (lam > 0)
        lin, lin_grad = self._linear(x)
        f = x[:, -2] + self.delta * lam + lam * (r - 1).sum(-1) / N + lin
        f = torch.where(inside, f, torch.full_like(f, torch.inf))
        p = r.square() / N
        grad = torch.cat(
            [
                self._zc_gradient(a, p) + torch.cat([lin_grad, torch.zeros_like(lam[:, None])], -1),
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

        ``hess f = 2 W' diag(p) W + G' diag(2 / (N tau)) G`` with rows ``W_j = (eps_j, -1, 0, 0)`` and
        ``G_j = (1 - r_j) e_lam + r_j (2 a_j W_j - e_xi)`` (the perspective ``lam s / (lam - s)`` has the
        rank-one Hessian ``(2 / tau) (1 - r, r)(1 - r, r)'`` in ``(lam, s)``).
        """
        n, N, B = self.n, self.N, self.B
        a, tau, r, _ = self._parts(x)
        nx = self.nx
        K = x.new_zeros(B, nx + 1, nx + 1)
        K[:, : n + 1, : n + 1] = 2.0 * self._zc_gram(r.square() / N)
        M = torch.cat([self.E, -torch.ones_like(self.E[..., :1])], -1)
        G = torch.cat([(2.0 * r * a)[..., None] * M, -r[..., None], (1.0 - r)[..., None]], -1)
        K[:, :nx, :nx] += G.mT @ ((2.0 / (N * tau))[..., None] * G)
        idx = torch.cat([torch.arange(n), torch.tensor([nx - 1])]).to(x.device)
        K[:, idx, idx] += D
        K[:, idx[:n], idx[:n]] += 2.0 * self.ridge
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
        n = self.n
        z = torch.full((self.B, n), 1.0 / n, dtype=self.E.dtype, device=self.E.device)
        a = (self.E @ z[..., None]).squeeze(-1)
        c = a.mean(-1)
        loss = (a - c[:, None]).square()
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
        dl = 2.0 * a * ((self.E @ dx[:, :n, None]).squeeze(-1) - dx[:, n, None])
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
            Mdy = (self.E @ dy[:, :n, None]).squeeze(-1) - dy[:, n, None]
            db = (rb + C_zc * Mdy + D2 * dy[:, n + 2, None]) / Db
            return torch.cat([dy[:, : n + 3], db, dy[:, -1:]], -1)

        return solve


def _direction(
    problem: _Problem,
    solve: Solve,
    x: Tensor,
    lam: Tensor,
    s: Tensor,
    r_d: Tensor,
    r_g: Tensor,
    r_p: Tensor,
    r_c: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Newton direction ``(dx, dnu, dlam, ds)`` of ``grad f + J'lam + a nu = 0``, ``g + s = 0``,
    ``lam * s = target`` (complementarity residual ``r_c``) and ``a'x = 1``, with ``ds = -r_g - J dx``,
    ``dlam = (lam r_g - r_c + lam J dx) / s`` eliminated."""
    w = (lam * r_g - r_c) / s
    sol = solve(torch.cat([-r_d - problem.jac_t(x, w), r_p], -1))
    dx = sol[:, : x.shape[1]]
    Jdx = problem.jac(x, dx)
    return dx, sol[:, x.shape[1]], w + lam * Jdx / s, -r_g - Jdx


def _longest(s: Tensor, lam: Tensor, ds: Tensor, dlam: Tensor) -> Tensor:
    """Longest step in ``(0, 1]`` keeping ``s + step ds`` and ``lam + step dlam >= 0``, shape ``(B,)``."""
    both, d = torch.cat([s, lam], -1), torch.cat([ds, dlam], -1)
    return torch.where(d < 0, -both / d, torch.full_like(d, torch.inf)).amin(-1).clamp(max=1.0)


def interior_point(problem: _Problem, settings: IPMSettings) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Run the batched primal-dual interior point on ``problem``.

    Slacks ``s = -g(x)`` are variables (``g(x) + s = 0`` holds at convergence), so that the step to the
    boundary is on ``s`` and ``lam`` only, both linear: the curvature of the quadratic constraints cannot
    jam an iterate against them. Each step is Mehrotra's predictor-corrector: an affine direction, the
    centring ``sigma = (mu_aff / mu)^3``, a corrected direction, 0.99 of the longest step keeping
    ``s, lam > 0``, halved while ``x`` is outside the domain of ``f``.

    Returns
    -------
    x : Tensor of shape (B, nx)
    lam : Tensor of shape (B, m)
        Multipliers of ``g(x) <= 0``.
    s : Tensor of shape (B, m)
        Slacks, ``-g(x)`` to the tolerance.
    converged : Tensor of shape (B,), bool
    iterations : int
    """
    x = problem.start()
    B, nx, m = x.shape[0], problem.nx, problem.m
    a = torch.zeros(nx, dtype=x.dtype, device=x.device)
    a[: problem.n] = 1.0
    s = -problem.constraints(x)
    lam = 1.0 / (s * m)
    nu = x.new_zeros(B)
    converged = torch.zeros(B, dtype=torch.bool, device=x.device)
    iterations = 0
    for iterations in range(1, settings.max_iter + 1):  # noqa: B007 (the count is returned)
        f, grad = problem.objective(x)
        r_d = grad + problem.jac_t(x, lam) + nu[:, None] * a
        r_g = problem.constraints(x) + s
        gap = (s * lam).sum(-1)
        worst = torch.maximum(r_d.abs().amax(-1), r_g.abs().amax(-1))
        scale = 1.0 + grad.abs().amax(-1)  # relative test: gamma y_hat may dwarf the unit-scale risk
        converged = (worst <= settings.tol * scale) & (gap <= settings.tol * (1.0 + f.abs()))
        if bool(converged.all()):
            break
        solve = problem.newton(x, lam, lam / s)
        r_p = (1.0 - x @ a)[:, None]
        state = (problem, solve, x, lam, s, r_d, r_g, r_p)
        _, _, dlam, ds = _direction(*state, s * lam)  # affine (predictor)
        step = _longest(s, lam, ds, dlam)[:, None]
        mu = gap / m
        mu_aff = ((s + step * ds) * (lam + step * dlam)).sum(-1) / m
        sigma = (mu_aff / mu).clamp(0.0, 1.0).pow(3)
        target = torch.maximum(sigma * mu, mu.new_tensor(0.01 * settings.tol / m))  # no faster than r_d, r_g
        dx, dnu, dlam, ds = _direction(*state, s * lam - target[:, None] + ds * dlam)  # corrector
        step = torch.maximum(0.99 * mu.new_ones(()), 1.0 - mu).clamp(max=1.0) * _longest(s, lam, ds, dlam)
        todo = ~converged
        for _ in range(settings.max_backtracks):  # keep x in the domain of f
            xs = x + step[:, None] * dx
            ok = torch.isfinite(problem.objective(xs)[0])
            accept = todo & ok
            x = torch.where(accept[:, None], xs, x)
            lam = torch.where(accept[:, None], lam + step[:, None] * dlam, lam)
            s = torch.where(accept[:, None], s + step[:, None] * ds, s)
            nu = torch.where(accept, nu + step * dnu, nu)
            todo = todo & ~ok
            if not bool(todo.any()):
                break
            step = torch.where(todo, step * settings.backtrack, step)
    return x, lam, s, converged, iterations


#: Hellinger multiplier ``lam`` (unit scale) below which a solve that did not converge is taken to have
#: ``lam = 0`` at the optimum: the worst case is the largest loss, re-solved as the minimax problem.
VANISHING_LAM = 1e-6

#: Cap of the weights ``-lam/g`` of the general (not simple bound) constraints in the backward's matrix
#: (unit-scale data). At the solution the active constraints have weights ~ 1/tol; a rank-one term that
#: large swamps the Hessian in rounding (~1e-4 in the gradients of the TV layer), capped at 1e8 it is a
#: penalty accurate to ~1e-8. Bounds (``z >= 0``, ``lam >= 0``) enter the diagonal and stay exact.
BACKWARD_MAX_WEIGHT = 1e8
#: Largest weight ``lam/s`` kept for an inactive constraint (``s > lam``) in the backward's matrix.
BACKWARD_INACTIVE_WEIGHT = 1e-9

PROBLEMS: dict[str, type[HellingerProblem] | type[TVProblem]] = {
    "hellinger": HellingerProblem,
    "tv": TVProblem,
}


class _RobustWeights(torch.autograd.Function):
    """``z = argmin`` of a robust problem, with the implicit backward of the module docstring."""

    @staticmethod
    def forward(
        E: Tensor,
        y: Tensor,
        gamma: Tensor,
        delta: Tensor,
        ambiguity: str,
        settings: IPMSettings,
        ridge: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, lam, slack, converged, _ = interior_point(PROBLEMS[ambiguity](E, y, gamma, delta, ridge), settings)
        return x[:, : E.shape[-1]].clone(), x, lam, slack, converged

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
        E, y, gamma, delta, ambiguity, _, ridge = inputs
        _, x, lam, slack, converged = output
        ctx.save_for_backward(E, y, gamma, delta, x, lam, slack)
        ctx.ambiguity, ctx.ridge = ambiguity, ridge
        ctx.mark_non_differentiable(x, lam, slack, converged)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_z: Tensor, *_: Tensor) -> tuple:
        E, y, gamma, delta, x, lam, slack = ctx.saved_tensors
        with torch.no_grad():
            frozen = PROBLEMS[ctx.ambiguity](E, y, gamma, delta, ctx.ridge)
            # the limit of the central path: active constraints (lam > s) hold, inactive ones drop out
            # (but for a weight <= 1e-9 that keeps flat directions, TV's t when N delta / 2 is an integer,
            # invertible; they do not move z)
            D = lam / slack
            D = torch.where(frozen.general, D.clamp(max=BACKWARD_MAX_WEIGHT), D)
            D = torch.where(lam > slack, D, D.clamp(max=BACKWARD_INACTIVE_WEIGHT))
            solve = frozen.newton(x, lam, D)
            rhs = torch.zeros(x.shape[0], x.shape[1] + 1, dtype=x.dtype, device=x.device)
            rhs[:, : E.shape[-1]] = grad_z
            w = solve(rhs)[:, : x.shape[1]]
            lam_w = -D * frozen.jac(x, w)  # lam * w_lam, w_lam = J w / g
        params = [
            t.detach().requires_grad_(need)
            for t, need in zip((E, y, gamma, delta), ctx.needs_input_grad[:4], strict=True)
        ]
        wanted = [p for p in params if p.requires_grad]
        with torch.enable_grad():
            r_d, g = PROBLEMS[ctx.ambiguity](*params, ctx.ridge).residual(x, lam)
        pairs = [(o, v) for o, v in ((r_d, -w), (g, lam_w)) if o.requires_grad]
        found = (
            torch.autograd.grad([o for o, _ in pairs], wanted, [v for _, v in pairs], allow_unused=True)
            if wanted and pairs
            else [None] * len(wanted)
        )
        grads = iter(found)
        out = [next(grads) if p.requires_grad else None for p in params]
        out = [
            torch.zeros_like(p) if p.requires_grad and o is None else o
            for p, o in zip(params, out, strict=True)
        ]
        return (*out, None, None, None)


def robust_weights(
    E: Tensor,
    y: Tensor,
    gamma: Tensor,
    delta: Tensor,
    ambiguity: str,
    settings: IPMSettings,
    ridge: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Weights of the robust layer for ``E (B, N, n)``, ``y (B, n)``, ``gamma (B,)``, ``delta (B,)``, float64.

    The errors are rescaled to unit root mean square (``y`` by the square of the factor, which leaves
    the weights unchanged, so the factor carries no gradient). Where the Hellinger multiplier ``lam``
    is 0 at the optimum the worst case is the largest loss: always when ``delta >= 2 - 2/sqrt(N)`` (every
    point mass is in the ball), and when the minimax weights tie enough losses at the top that the
    uniform law on them is in the ball (large ``delta`` or a ``gamma y_hat`` that dwarfs the risk). The
    smooth Hellinger form degenerates there (``lam, tau -> 0``); these elements (``delta`` past the
    threshold, or not converged with ``lam < VANISHING_LAM``) are solved as the minimax problem, the
    total-variation problem with ``delta = 2``, and kept if its worst case ``p`` is in the Hellinger
    ball (zero gradient w.r.t. ``delta``, as the solution does not move with it).

    Returns
    -------
    z : Tensor of shape (B, n)
    converged : Tensor of shape (B,), bool
    """
    with torch.no_grad():
        rms = E.square().mean((-2, -1)).sqrt()
        s = torch.where(rms > 0, rms.reciprocal(), torch.ones_like(rms))
    E, y = E * s[:, None, None], y * s[:, None].square()
    if ambiguity == "tv":
        return _RobustWeights.apply(E, y, gamma, delta, "tv", settings, ridge)[::4]
    N = E.shape[-2]
    z = torch.empty_like(y)
    ok = torch.zeros_like(delta, dtype=torch.bool)
    minimax = delta >= 2.0 - 2.0 / N**0.5  # every point mass is in the ball
    if not bool(minimax.all()):
        rest = ~minimax
        zr, x, _, _, okr = _RobustWeights.apply(
            E[rest], y[rest], gamma[rest], delta[rest], "hellinger", settings, ridge
        )
        z, ok = z.index_put((rest,), zr), ok.index_put((rest,), okr)
        # lam -> 0 without convergence: the optimum has lam = 0, where the smooth form degenerates
        stalled = torch.zeros_like(ok).index_put((rest,), ~okr & (x[:, -1] < VANISHING_LAM))
        minimax = minimax | stalled
    if bool(minimax.any()):
        two = torch.full_like(delta[minimax], 2.0)
        zm, _, lam, _, okm = _RobustWeights.apply(
            E[minimax], y[minimax], gamma[minimax], two, "tv", settings, ridge
        )
        # accept only if the minimax worst case p = lam1 + lam3 (weights of the losses) is in the ball
        p = (lam[:, :N] + lam[:, 2 * N : 3 * N]).clamp(min=0.0)
        inside = (p.sqrt() - N**-0.5).square().sum(-1) <= delta[minimax] + 1e-6
        z, ok = z.index_put((minimax,), zm), ok.index_put((minimax,), okm & inside)
    return z, ok
