"""``fixed_point``: solve ``z = f(z)`` and differentiate through the equilibrium.

The solver (:mod:`~portfolio_layers.deq.solvers`) sets the update and the stopping rule; the adjoint
(:mod:`~portfolio_layers.deq.adjoint`: ``Implicit()``, ``JFB()``, ``Unrolled()``) sets how gradients
reach the parameters and inputs ``f`` closes over.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from portfolio_layers.deq.adjoint import JFB, Adjoint, Implicit, Unrolled
from portfolio_layers.deq.solution import DEQSolution, raise_for_failure
from portfolio_layers.deq.solvers import SolverLike, check_start, make_solver
from portfolio_layers.errors import ConfigError

DEFAULT_ADJOINT = Implicit()


def fixed_point(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    solver: SolverLike = "anderson",
    adjoint: Adjoint = DEFAULT_ADJOINT,
    damping: float = 0.0,
    trace: bool = False,
    throw: bool = True,
) -> tuple[Tensor, DEQSolution]:
    """Solve ``z = f(z)`` batch-element by batch-element and return a differentiable equilibrium.

    Parameters
    ----------
    f : callable, Tensor of shape (batch, ...) -> Tensor of the same shape
        The equilibrium map. It closes over its parameters and inputs; gradients reach them through the
        chosen adjoint. It must treat batch elements independently (per-element stopping relies on it).
        The forward iterations of ``Implicit`` and ``JFB`` run under ``torch.no_grad()``: compute
        parameter-only tensors (normalized weights, ...) before the call, not lazily inside ``f``.
    z0 : Tensor of shape (batch, ...)
        Initial guess (commonly zeros), floating-point and finite. The first dimension is the batch, with at
        least one element.
    solver : {"anderson", "broyden", "picard"} or a solver instance (``Anderson(m=5, max_iter=100)``, ...)
        The update and the stopping rule (``tol``, ``atol``, ``max_iter``; names take the defaults
        ``1e-4``, ``1e-6``, ``50``), see :class:`~portfolio_layers.deq.solvers.FixedPointSolver`.
    adjoint : Implicit, JFB or Unrolled
        How gradients are computed (default ``Implicit()``, see :mod:`~portfolio_layers.deq.adjoint`).
    damping : float in [0, 1)
        Solve the damped map ``(1 - damping) f(z) + damping z`` instead (same fixed points, better
        conditioned when ``f`` is expansive in some directions).
    trace : bool
        Record the residual of every element after every iteration in ``DEQSolution.trace``.
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

    Raises
    ------
    InputError
        ``z0`` is not a floating-point Tensor (:class:`ShapeError`: no batch dimension or an empty batch;
        :class:`NonFiniteError`: NaN or infinite values).
    ConvergenceError
        With ``throw=True``, when an element ends ``MAX_ITER`` or ``NONFINITE`` (``f`` turned non-finite).

    Examples
    --------
    >>> W = 0.5 * torch.eye(3)
    >>> x = torch.ones(4, 3, requires_grad=True)
    >>> z, sol = fixed_point(lambda z: z @ W.T + x, torch.zeros(4, 3))
    >>> z.sum().backward()  # x.grad == 2: d z*/dx = (I - W)^-1
    """
    if not isinstance(adjoint, Implicit | JFB | Unrolled):
        raise ConfigError(
            f"Unknown backward mode {adjoint!r}: pass an adjoint object, Implicit(), JFB() or Unrolled()."
        )
    if not 0.0 <= damping < 1.0:
        raise ConfigError(f"damping must be in [0, 1), got {damping}; 0 means no damping.")
    fwd = make_solver(solver)
    check_start(z0)
    fd = f if damping == 0 else (lambda z: (1.0 - damping) * f(z) + damping * z)
    z_out, res = adjoint.solve(fd, z0, fwd, trace=trace, throw=throw)
    sol = DEQSolution(
        status=res.status,
        iterations=res.iterations,
        abs_residual=res.abs_residual,
        rel_residual=res.rel_residual,
        solver=fwd.name,
        backward=adjoint.name,
        trace=res.trace,
    )
    if throw:
        hint = (
            "Try a larger max_iter (Anderson(max_iter=...)), an Anderson solver, damping=0.5, or make f "
            "contractive (spectral_normalize the cell's linear maps); pass throw=False to get the best "
            "iterate and statuses."
        )
        where = f"fixed_point ({fwd.name})"
        raise_for_failure(sol.status, sol.abs_residual, sol.iterations, where, hint=hint)
    return z_out, sol
