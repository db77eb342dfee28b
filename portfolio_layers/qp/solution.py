"""Result of a QP solve: :class:`QPSolution` with a per-element :class:`Status`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from portfolio_layers.errors import ConvergenceError, InfeasibleError, SolverError, StatusCode


class Status(StatusCode):
    """Outcome of a solve for one batch element (stored as ``int8`` in ``QPSolution.status``)."""

    SOLVED = 0, "solved to the requested tolerance"
    MAX_ITER = (
        1,
        "hit max_iter before reaching the tolerance; raise max_iter, loosen tol, or rescale the "
        "problem (entries of P, q, A, G of very different magnitudes slow the interior point down)",
        ConvergenceError,
    )
    PRIMAL_INFEASIBLE = (
        2,
        "the constraints admit no solution (found from the bounds, lb > ub included, or by a Farkas "
        "certificate); for example a cap ub with n * ub < 1 under a full-investment constraint: relax "
        "the bounds or the constraints",
        InfeasibleError,
    )
    DUAL_INFEASIBLE = (
        3,
        "the problem is unbounded (the iterates diverge); add bounds, a leverage limit, or make P "
        "positive definite",
        SolverError,
    )
    NUMERICAL_ERROR = (
        4,
        "numerical failure (non-finite iterates or a factorization that failed after regularization); "
        "check the conditioning of P and of the constraint rows, or use float64",
        SolverError,
    )


@dataclass(frozen=True)
class QPSolution:
    """Solution of ``minimize 1/2 x'Px - q'x  s.t.  Ax = b, Gx <= h, lb <= x <= ub``.

    Attributes
    ----------
    x : Tensor of shape (*batch, n)
        Primal solution (differentiable w.r.t. every input of :func:`solve_qp`).
    y : Tensor of shape (*batch, p)
        Multipliers of ``Ax = b`` (Lagrangian ``... + y'(Ax - b)``). NaN where the backend gives none.
    lam : Tensor of shape (*batch, m)
        Multipliers of ``Gx <= h`` (>= 0). NaN where the backend gives none.
    z_lower, z_upper : Tensor of shape (*batch, n)
        Multipliers of ``lb <= x`` and ``x <= ub`` (>= 0; 0 where the bound is infinite).
    status : Tensor of shape (*batch,), dtype int8
        A :class:`Status` code per element.
    iterations : Tensor of shape (*batch,), dtype int32
        Iterations spent on each element (0 for backends that do not report them).
    primal_residual, dual_residual, duality_gap : Tensor of shape (*batch,)
        Infinity norms of ``Ax - b`` / ``max(Gx - h, 0)`` / bound violation, of the Lagrangian
        gradient, and the total complementarity ``lam's + z_l'(x - lb) + z_u'(ub - x)``.
    """

    x: Tensor
    y: Tensor
    lam: Tensor
    z_lower: Tensor
    z_upper: Tensor
    status: Tensor
    iterations: Tensor
    primal_residual: Tensor
    dual_residual: Tensor
    duality_gap: Tensor

    @property
    def ok(self) -> bool:
        """True when every batch element is :attr:`Status.SOLVED`."""
        return not bool(Status.failed(self.status).any())

    def messages(self) -> list[str]:
        """One message per distinct non-solved status, naming the batch indices."""
        return Status.describe(self.status)

    def raise_on_failure(self) -> None:
        """Raise the matching :class:`~portfolio_layers.errors.SolverError` if any element failed.

        :class:`~portfolio_layers.errors.InfeasibleError` when every failure is infeasible,
        :class:`~portfolio_layers.errors.ConvergenceError` when every failure hit ``max_iter``,
        else :class:`~portfolio_layers.errors.SolverError`; the error names the batch indices.
        """
        Status.raise_for(self.status, "solve_qp", hint="Or pass throw=False to get the statuses instead.")
