"""``fixed_point``: solve ``z = f(z)`` and differentiate through the equilibrium.

Backward modes (the ``backward`` argument):

- ``"implicit"``: the forward iterations run without autograd. The returned tensor is one re-engaged
  application ``z_out = f(z*)``; its backward first solves the adjoint fixed point
  ``g = g J_f(z*) + dL/dz_out`` with a solver from the same family (vector-Jacobian products only,
  no Jacobian is formed), then back-propagates ``g`` through that single application of ``f`` to the
  parameters and inputs ``f`` closes over. Memory does not grow with the number of forward iterations.
- ``"jfb"``: Jacobian-free backprop, the gradient through the last application of ``f`` only
  (``g = dL/dz_out``); cheap, a descent direction when ``f`` is contractive, not the exact gradient.
- ``"unrolled"``: plain autograd through every iteration (memory grows with the iterations); for
  checks and small problems.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from portfolio_layers.deq.solution import DEQSolution, Status, raise_if_failed
from portfolio_layers.deq.solvers import SolverLike, iterate, make_solver
from portfolio_layers.deq.stability import jacobian_penalty
from portfolio_layers.errors import ConfigError, ConvergenceError

BACKWARDS = ("implicit", "jfb", "unrolled")


@dataclass
class AdjointStats:
    """Diagnostics of the adjoint solve, filled in by each backward pass of ``backward="implicit"``.

    Attributes are ``None`` until a backward pass ran; afterwards ``status``, ``iterations`` and
    ``abs_residual`` are tensors of shape (batch,) from the latest backward pass, and ``calls`` counts them.
    """

    status: Tensor | None = None
    iterations: Tensor | None = None
    abs_residual: Tensor | None = None
    calls: int = 0


@dataclass(frozen=True)
class _AdjointOptions:
    solver: SolverLike
    tol: float
    atol: float
    max_iter: int
    throw: bool
    stats: AdjointStats


class _ImplicitBackward(torch.autograd.Function):
    """Identity in the forward; in the backward, replaces ``v = dL/dz_out`` by the adjoint solution ``g``."""

    @staticmethod
    def forward(ctx, z_out: Tensor, vjp: Callable[[Tensor], Tensor], opts: _AdjointOptions) -> Tensor:
        ctx.vjp, ctx.opts = vjp, opts
        return z_out.clone()

    @staticmethod
    def backward(ctx, v: Tensor) -> tuple[Tensor, None, None]:
        opts: _AdjointOptions = ctx.opts
        if not torch.isfinite(v).all():
            return v, None, None  # upstream NaN/inf: nothing sensible to solve, pass it on
        vjp = ctx.vjp
        res = iterate(
            lambda g: vjp(g) + v,
            v,
            make_solver(opts.solver),
            tol=opts.tol,
            atol=opts.atol,
            max_iter=opts.max_iter,
        )
        opts.stats.status, opts.stats.iterations = res.status, res.iterations
        opts.stats.abs_residual, opts.stats.calls = res.abs_residual, opts.stats.calls + 1
        if not bool((res.status == Status.CONVERGED).all()):
            name = make_solver(opts.solver).name
            sol = DEQSolution(
                res.status, res.iterations, res.abs_residual, res.rel_residual, name, "implicit"
            )
            hint = (
                "Try a larger backward_max_iter or backward_tol, backward_solver='anderson', or a more "
                "contractive f; backward='jfb' avoids the adjoint solve."
            )
            try:
                raise_if_failed(sol, "the adjoint fixed point of the implicit backward", hint=hint)
            except ConvergenceError as err:
                if opts.throw:
                    raise
                warnings.warn(f"{err} Using the best adjoint iterate.", RuntimeWarning, stacklevel=2)
        return res.z, None, None


def _check_options(tol: float, atol: float, max_iter: int, damping: float, backward: str, what: str) -> None:
    if backward not in BACKWARDS:
        raise ConfigError(f"Unknown backward mode {backward!r}: use one of {list(BACKWARDS)}.")
    if not (tol >= 0 and atol >= 0 and tol + atol > 0):
        raise ConfigError(f"{what}: tol and atol must be >= 0 and not both zero, got tol={tol}, atol={atol}.")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ConfigError(f"{what}: max_iter must be a non-negative integer, got {max_iter}.")
    if not 0.0 <= damping < 1.0:
        raise ConfigError(f"damping must be in [0, 1), got {damping}; 0 means no damping.")


def fixed_point(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    solver: SolverLike = "anderson",
    tol: float = 1e-4,
    atol: float = 1e-6,
    max_iter: int = 50,
    backward: str = "implicit",
    backward_solver: SolverLike | None = None,
    backward_tol: float | None = None,
    backward_atol: float | None = None,
    backward_max_iter: int | None = None,
    damping: float = 0.0,
    trace: bool = False,
    jacobian_samples: int = 0,
    throw: bool = True,
) -> tuple[Tensor, DEQSolution]:
    """Solve ``z = f(z)`` batch-element by batch-element and return a differentiable equilibrium.

    Parameters
    ----------
    f : callable, Tensor of shape (batch, ...) -> Tensor of the same shape
        The equilibrium map. It closes over its parameters and inputs; gradients reach them through the
        chosen backward mode. It must treat batch elements independently (per-element stopping relies on it).
        The forward iterations of the "implicit" and "jfb" modes run under ``torch.no_grad()``: compute
        parameter-only tensors (normalized weights, ...) before the call, not lazily inside ``f``.
    z0 : Tensor of shape (batch, ...)
        Initial guess (commonly zeros). The first dimension is the batch.
    solver : {"anderson", "broyden", "picard"} or a solver instance (``Anderson(m=5)``, ...)
    tol, atol : float
        Element ``b`` has converged when ``||f(z_b) - z_b|| <= atol + tol * ||f(z_b)||`` (norms over the
        flattened element). The relative part accepts any ``z`` that is a fixed point to relative accuracy
        ``tol``, including a far-off iterate when ``f(z) - z`` stays bounded; set ``tol=0`` for an
        absolute criterion only.
    max_iter : int
        Maximum number of solver updates in the forward solve.
    backward : {"implicit", "jfb", "unrolled"}
        How gradients are computed (module docstring).
    backward_solver, backward_tol, backward_atol, backward_max_iter
        Settings of the adjoint solve of ``backward="implicit"``; default to the forward ones.
    damping : float in [0, 1)
        Solve the damped map ``(1 - damping) f(z) + damping z`` instead (same fixed points, better
        conditioned when ``f`` is expansive in some directions).
    trace : bool
        Record the residual of every element after every iteration in ``DEQSolution.trace``.
    jacobian_samples : int
        If > 0 (and autograd is on), ``DEQSolution.jacobian_loss`` holds a Hutchinson estimate of
        ``||J_f(z*)||_F^2 / dim`` with that many probe vectors (see :func:`jacobian_penalty`).
    throw : bool
        If True, raise :class:`~portfolio_layers.errors.ConvergenceError` naming the failing batch elements
        when an element does not converge (forward, or adjoint in the backward); if False, return the best
        iterate and the per-element ``status`` (a failed adjoint solve then warns).

    Returns
    -------
    z_star : Tensor of shape (batch, ...)
        ``f`` applied once more to the best iterate, attached to the autograd graph.
    solution : DEQSolution
        Per-element status, iterations and residuals.

    Examples
    --------
    >>> W = 0.5 * torch.eye(3)
    >>> x = torch.ones(4, 3, requires_grad=True)
    >>> z, sol = fixed_point(lambda z: z @ W.T + x, torch.zeros(4, 3))
    >>> z.sum().backward()  # x.grad == 2: d z*/dx = (I - W)^-1
    """
    _check_options(tol, atol, max_iter, damping, backward, "fixed_point")
    fwd_solver = make_solver(solver)
    bwd = _AdjointOptions(
        solver=make_solver(backward_solver if backward_solver is not None else fwd_solver),
        tol=tol if backward_tol is None else backward_tol,
        atol=atol if backward_atol is None else backward_atol,
        max_iter=max_iter if backward_max_iter is None else backward_max_iter,
        throw=throw,
        stats=AdjointStats(),
    )
    if backward == "implicit":
        _check_options(bwd.tol, bwd.atol, bwd.max_iter, damping, backward, "backward")

    fd = f if damping == 0 else (lambda z: (1.0 - damping) * f(z) + damping * z)
    opts = {"tol": tol, "atol": atol, "max_iter": int(max_iter), "trace": trace}
    if backward == "unrolled":
        res = iterate(fd, z0, fwd_solver, **opts)
        z_out = fd(res.z)
    else:
        with torch.no_grad():
            res = iterate(fd, z0.detach(), fwd_solver, **opts)
        z_star = res.z.detach()
        if backward == "implicit" and torch.is_grad_enabled():
            z_in = z_star.requires_grad_()
            z_pre = fd(z_in)

            def vjp(g: Tensor) -> Tensor:
                (out,) = torch.autograd.grad(z_pre, z_in, g, retain_graph=True, allow_unused=True)
                return torch.zeros_like(g) if out is None else out  # None: f does not depend on z

            z_out = _ImplicitBackward.apply(z_pre, vjp, bwd)
        else:
            z_out = fd(z_star)

    jac = None
    if jacobian_samples > 0 and torch.is_grad_enabled():
        jac = jacobian_penalty(f, res.z.detach(), samples=jacobian_samples)
    sol = DEQSolution(
        status=res.status,
        iterations=res.iterations,
        abs_residual=res.abs_residual,
        rel_residual=res.rel_residual,
        solver=fwd_solver.name,
        backward=backward,
        trace=res.trace,
        jacobian_loss=jac,
        adjoint=bwd.stats if backward == "implicit" else None,
    )
    if throw:
        raise_if_failed(sol, "fixed_point")
    return z_out, sol
