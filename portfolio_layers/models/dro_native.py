"""Native batched solver of the distributionally robust layers of :mod:`portfolio_layers.models.dro`.

Both robust layers are written as smooth convex programs with inequality constraints,

``minimize_x f(x)  s.t.  g(x) <= 0,  a'x = 1``        (``a`` sums the weights ``z``)

solved for a whole batch by one infeasible primal-dual interior point with slacks ``s = -g(x)`` and
Mehrotra's predictor-corrector (see :func:`interior_point`), to ``tol = 1e-10`` relative on errors
rescaled to unit root mean square. Elements leave the batch as they converge, so a batch costs about
its mean number of steps rather than its largest; the few that Mehrotra's steps do not settle in
``rescue_after`` steps go on with damped Newton steps (:class:`IPMSettings`).

Eliminating ``ds`` and ``dlam`` leaves the symmetric positive definite system
``[H + J' diag(lam/s) J, a; a', 0]`` with ``H = hess f + sum_k lam_k hess g_k``; each problem class
factors it with its own structure (TV: the ``beta`` block is diagonal and eliminated).

The gradient is implicit: the KKT map ``K(x, lam, nu; theta) = (grad f + J'lam + a nu, -lam * g,
a'x - 1) = 0`` has the same matrix after elimination, so for an upstream ``v = dL/dx`` the solve
``[Hred, a; a', 0] (w, w_nu) = (v, 0)`` and ``lam * w_lam = -(lam/s) * J w`` give ``dL/dtheta =
-w' d(grad f + J'lam)/dtheta + (lam * w_lam)' dg/dtheta`` (autograd on the differentiable residuals at
the fixed solution). At the tolerance this is the derivative of the exact KKT system with the active
set of the solution: the backward takes the limit of the central path, ``lam/s -> 0`` for the
inactive constraints (``s > lam``; capped at 1e-9) and ``lam/s`` (``~ 1/tol``) kept for the active
ones. At finite ``mu`` a small free weight ``z_i`` would otherwise keep a barrier curvature
``mu / z_i^2`` that biases the gradient (1e-3 relative for ``z_i ~ 1e-4`` at ``mu ~ 1e-11``).

The problem classes (Hellinger and total variation: variables, constraints, structured Newton
systems) live in :mod:`portfolio_layers.models.dro_problems`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.models.dro_problems import PROBLEMS, Solve, _Problem


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
        Factor of the step while ``x`` is outside the domain of ``f`` (Hellinger: ``xi + lam > l_j``) or
        too close to its boundary.
    max_backtracks : int
        Such reductions at most per step.
    boundary : float
        Hellinger: a step keeps ``tau_j = xi + lam - l_j`` and ``lam`` above this fraction of their values
        (fraction to the boundary of the domain of ``f``, as ``0.99`` is for ``s`` and ``lam``). Without
        it, steps that land next to the boundary (``tau_j ~ 1e-6``) blow the gradient up and stalled 3
        elements in 17,000 solves of E2E-DRO training (worst case near a point mass, small ``lam``).
    rescue_after : int
        Newton steps after which the elements still running take damped steps: the plain Newton direction
        to the centring target ``rescue_sigma * mu`` (no predictor-corrector), halved until the squared
        norm of the KKT residuals at that target decreases (Armijo, ``1e-4``). Mehrotra's full steps can
        cycle on the nonlinear Hellinger problem (1 element in 22,000 solves of E2E-DRO training,
        residuals stuck near ``1e-3``); the damped steps converge. The ~99 % of elements that converge
        earlier never take them (at the E2E-DRO size 1 % need more than 25 steps).
    rescue_sigma : float
        Centring of those steps.
    """

    tol: float = 1e-10
    max_iter: int = 100
    backtrack: float = 0.5
    max_backtracks: int = 40
    boundary: float = 0.1
    rescue_after: int = 25
    rescue_sigma: float = 0.1


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


def _merit(
    problem: _Problem,
    x: Tensor,
    lam: Tensor,
    s: Tensor,
    nu: Tensor,
    a: Tensor,
    target: Tensor,
    r_d: Tensor | None = None,
    r_g: Tensor | None = None,
    r_p: Tensor | None = None,
) -> Tensor:
    """Squared norm of the KKT residuals at the complementarity ``target`` (``inf`` outside the domain)."""
    if r_d is None:
        f, grad = problem.objective(x)
        r_d = grad + problem.jac_t(x, lam) + nu[:, None] * a
        r_g = problem.constraints(x) + s
        r_p = (1.0 - x @ a)[:, None]
        inside = torch.isfinite(f)
    else:
        inside = torch.ones_like(nu, dtype=torch.bool)
    value = sum(r.square().sum(-1) for r in (r_d, r_g, r_p, s * lam - target[:, None]))
    return torch.where(inside, value, torch.full_like(value, torch.inf))


def interior_point(problem: _Problem, settings: IPMSettings) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the batched primal-dual interior point on ``problem``.

    Slacks ``s = -g(x)`` are variables (``g(x) + s = 0`` holds at convergence), so that the step to the
    boundary is on ``s`` and ``lam`` only, both linear: the curvature of the quadratic constraints cannot
    jam an iterate against them. Each step is Mehrotra's predictor-corrector: an affine direction, the
    centring ``sigma = (mu_aff / mu)^3``, a corrected direction, 0.99 of the longest step keeping
    ``s, lam > 0``, halved while ``x`` is outside the domain of ``f`` or too close to its boundary.

    The elements are independent: an element that meets the tolerance leaves the batch (its iterate is
    final), and the others go on as a smaller batch (``problem.subset``), so that the cost of a step
    follows the elements still running rather than the slowest one.

    Returns
    -------
    x : Tensor of shape (B, nx)
    lam : Tensor of shape (B, m)
        Multipliers of ``g(x) <= 0``.
    s : Tensor of shape (B, m)
        Slacks, ``-g(x)`` to the tolerance.
    converged : Tensor of shape (B,), bool
    iterations : Tensor of shape (B,), int64
        Newton steps taken by each element.
    """
    x = problem.start()
    B, nx, m = x.shape[0], problem.nx, problem.m
    a = torch.zeros(nx, dtype=x.dtype, device=x.device)
    a[: problem.n] = 1.0
    s = -problem.constraints(x)
    lam = 1.0 / (s * m)
    nu = x.new_zeros(B)
    out = [x.clone(), lam.clone(), s.clone()]
    converged_out = torch.zeros(B, dtype=torch.bool, device=x.device)
    iterations = torch.full((B,), settings.max_iter, dtype=torch.long, device=x.device)
    active = torch.arange(B, device=x.device)  # the elements still running, in the batch order
    for it in range(settings.max_iter):
        f, grad = problem.objective(x)
        r_d = grad + problem.jac_t(x, lam) + nu[:, None] * a
        r_g = problem.constraints(x) + s
        gap = (s * lam).sum(-1)
        worst = torch.maximum(r_d.abs().amax(-1), r_g.abs().amax(-1))
        scale = 1.0 + grad.abs().amax(-1)  # relative test: gamma y_hat may dwarf the unit-scale risk
        converged = (worst <= settings.tol * scale) & (gap <= settings.tol * (1.0 + f.abs()))
        if bool(converged.any()):
            done = active[converged]
            for o, v in zip(out, (x, lam, s), strict=True):
                o[done] = v[converged]
            converged_out[done] = True
            iterations[done] = it
            keep = ~converged
            if not bool(keep.any()):
                break
            active, x, lam, s, nu = active[keep], x[keep], lam[keep], s[keep], nu[keep]
            r_d, r_g, gap = r_d[keep], r_g[keep], gap[keep]
            problem = problem.subset(keep)
        solve = problem.newton(x, lam, lam / s)
        r_p = (1.0 - x @ a)[:, None]
        state = (problem, solve, x, lam, s, r_d, r_g, r_p)
        mu = gap / m
        floor = mu.new_tensor(0.01 * settings.tol / m)  # no faster than r_d, r_g
        rescue = it >= settings.rescue_after
        if rescue:  # damped Newton steps to a fixed centring (see IPMSettings.rescue_after)
            target = torch.maximum(settings.rescue_sigma * mu, floor)
            dx, dnu, dlam, ds = _direction(*state, s * lam - target[:, None])
            merit = _merit(problem, x, lam, s, nu, a, target, r_d, r_g, r_p)
        else:
            _, _, dlam, ds = _direction(*state, s * lam)  # affine (predictor)
            step = _longest(s, lam, ds, dlam)[:, None]
            mu_aff = ((s + step * ds) * (lam + step * dlam)).sum(-1) / m
            sigma = (mu_aff / mu).clamp(0.0, 1.0).pow(3)
            target = torch.maximum(sigma * mu, floor)
            dx, dnu, dlam, ds = _direction(*state, s * lam - target[:, None] + ds * dlam)  # corrector
        step = torch.maximum(0.99 * mu.new_ones(()), 1.0 - mu).clamp(max=1.0) * _longest(s, lam, ds, dlam)
        todo = torch.ones_like(step, dtype=torch.bool)
        for _ in range(settings.max_backtracks):  # keep x in the domain of f (rescue: lower the merit)
            xs, lams, ss, nus = (
                x + step[:, None] * dx,
                lam + step[:, None] * dlam,
                s + step[:, None] * ds,
                nu + step * dnu,
            )
            if rescue:
                ok = _merit(problem, xs, lams, ss, nus, a, target) <= (1.0 - 1e-4 * step) * merit
            else:
                ok = problem.keeps_interior(x, xs, settings.boundary)
            accept = todo & ok
            x = torch.where(accept[:, None], xs, x)
            lam = torch.where(accept[:, None], lams, lam)
            s = torch.where(accept[:, None], ss, s)
            nu = torch.where(accept, nus, nu)
            todo = todo & ~ok
            if not bool(todo.any()):
                break
            step = torch.where(todo, step * settings.backtrack, step)
    else:  # max_iter steps: the elements still running keep their last iterate, not converged
        for o, v in zip(out, (x, lam, s), strict=True):
            o[active] = v
    return *out, converged_out, iterations


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
