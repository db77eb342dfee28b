"""Adjoints of :func:`~portfolio_layers.deq.fixed_point`: how gradients pass through the equilibrium.

An adjoint is a small frozen object with one method, ``solve(f, z0, solver, *, trace, throw)``, which runs
the forward solve and returns ``(z_out, result)``, ``z_out = f(z*)`` attached to the autograd graph:

- :class:`Implicit`: the forward iterations run without autograd. ``z_out`` is one re-engaged application
  of ``f``; its backward first solves the adjoint fixed point ``g = g J_f(z*) + dL/dz_out`` (vector-Jacobian
  products only, no Jacobian is formed), then back-propagates ``g`` through that single application of
  ``f`` to the parameters and inputs ``f`` closes over. Memory does not grow with the forward iterations.
- :class:`JFB`: Jacobian-free backprop, the gradient through the last application of ``f`` only
  (``g = dL/dz_out``); cheap, a descent direction when ``f`` is contractive, not the exact gradient.
- :class:`Unrolled`: plain autograd through every iteration (memory grows with the iterations); for checks
  and small problems.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from portfolio_layers.deq.solution import raise_for_failure
from portfolio_layers.deq.solvers import FixedPointSolver, IterateResult, SolverLike, iterate, make_solver
from portfolio_layers.errors import ConvergenceError

Map = Callable[[Tensor], Tensor]


@dataclass
class AdjointStats:
    """A record the caller passes to :class:`Implicit` and each of its backward passes fills in.

    Attributes are ``None`` until a backward pass ran; afterwards ``status``, ``iterations`` and
    ``abs_residual`` are tensors of shape (batch,) from the latest backward pass, and ``calls`` counts them.
    """

    status: Tensor | None = None
    iterations: Tensor | None = None
    abs_residual: Tensor | None = None
    calls: int = 0


def _equilibrium(f: Map, z0: Tensor, solver: FixedPointSolver, trace: bool) -> IterateResult:
    """The forward solve without autograd."""
    with torch.no_grad():
        return iterate(f, z0.detach(), solver, trace=trace)


@dataclass(frozen=True)
class Implicit:
    """Implicit differentiation: the backward solves the adjoint fixed point (module docstring).

    Attributes
    ----------
    solver : {"anderson", "broyden", "picard"}, a solver instance or None
        Solver and stopping rule of the adjoint solve; ``None`` takes the forward solver.
    record : AdjointStats, optional
        Filled in by every backward pass (status, iterations and residual of the adjoint solve).
    """

    solver: SolverLike | None = None
    record: AdjointStats | None = field(default=None, compare=False, repr=False)
    name: ClassVar[str] = "implicit"

    def __post_init__(self) -> None:
        if self.solver is not None:
            make_solver(self.solver)  # an unknown name fails here, not in the backward

    def solve(
        self, f: Map, z0: Tensor, solver: FixedPointSolver, *, trace: bool, throw: bool
    ) -> tuple[Tensor, IterateResult]:
        """Forward solve of ``z = f(z)``; ``z_out = f(z*)`` with the implicit backward attached."""
        res = _equilibrium(f, z0, solver, trace)
        if not torch.is_grad_enabled():
            return f(res.z), res
        z_in = res.z.detach().requires_grad_()
        z_pre = f(z_in)

        def vjp(g: Tensor) -> Tensor:
            (out,) = torch.autograd.grad(z_pre, z_in, g, retain_graph=True, allow_unused=True)
            return torch.zeros_like(g) if out is None else out  # None: f does not depend on z

        adjoint_solver = solver if self.solver is None else make_solver(self.solver)
        return _ImplicitBackward.apply(z_pre, vjp, _Backward(adjoint_solver, throw, self.record)), res


@dataclass(frozen=True)
class JFB:
    """Jacobian-free backprop: the gradient through the last application of ``f`` only."""

    name: ClassVar[str] = "jfb"

    def solve(
        self, f: Map, z0: Tensor, solver: FixedPointSolver, *, trace: bool, throw: bool
    ) -> tuple[Tensor, IterateResult]:
        """Forward solve of ``z = f(z)``; ``z_out = f(z*)`` differentiable through this one application."""
        res = _equilibrium(f, z0, solver, trace)
        return f(res.z), res


@dataclass(frozen=True)
class Unrolled:
    """Autograd through every forward iteration (memory grows with the iterations)."""

    name: ClassVar[str] = "unrolled"

    def solve(
        self, f: Map, z0: Tensor, solver: FixedPointSolver, *, trace: bool, throw: bool
    ) -> tuple[Tensor, IterateResult]:
        """Forward solve of ``z = f(z)`` with autograd on; ``z_out = f(z*)``."""
        res = iterate(f, z0, solver, trace=trace)
        return f(res.z), res


Adjoint = Implicit | JFB | Unrolled


@dataclass(frozen=True)
class _Backward:
    solver: FixedPointSolver
    throw: bool
    record: AdjointStats | None


class _ImplicitBackward(torch.autograd.Function):
    """Identity in the forward; in the backward, replaces ``v = dL/dz_out`` by the adjoint solution ``g``."""

    @staticmethod
    def forward(ctx, z_out: Tensor, vjp: Map, opts: _Backward) -> Tensor:
        ctx.vjp, ctx.opts = vjp, opts
        return z_out.clone()

    @staticmethod
    def backward(ctx, v: Tensor) -> tuple[Tensor, None, None]:
        opts: _Backward = ctx.opts
        if not torch.isfinite(v).all():
            return v, None, None  # upstream NaN/inf: nothing sensible to solve, pass it on
        vjp = ctx.vjp
        res = iterate(lambda g: vjp(g) + v, v, opts.solver)
        if opts.record is not None:
            opts.record.status, opts.record.iterations = res.status, res.iterations
            opts.record.abs_residual, opts.record.calls = res.abs_residual, opts.record.calls + 1
        hint = (
            "Try Implicit(solver=...) with a larger max_iter or tol, or an Anderson solver, or a more "
            "contractive f; adjoint=JFB() avoids the adjoint solve."
        )
        try:
            raise_for_failure(
                res.status,
                res.abs_residual,
                res.iterations,
                f"the adjoint fixed point of the implicit backward ({opts.solver.name})",
                hint=hint,
            )
        except ConvergenceError as err:
            if opts.throw:
                raise
            warnings.warn(f"{err} Using the best adjoint iterate.", RuntimeWarning, stacklevel=2)
        return res.z, None, None
