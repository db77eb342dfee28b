"""Result of a QP solve: :class:`QPSolution` with a per-element :class:`Status`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from portfolio_layers.errors import ConvergenceError, InfeasibleError, SolverError


class Status(IntEnum):
    """Outcome of a solve for one batch element (stored as ``int8`` in ``QPSolution.status``)."""

    SOLVED = 0
    MAX_ITER = 1
    PRIMAL_INFEASIBLE = 2
    DUAL_INFEASIBLE = 3
    NUMERICAL_ERROR = 4

    @property
    def message(self) -> str:
        """A human-readable explanation with a suggested fix."""
        return _MESSAGES[self]


_MESSAGES = {
    Status.SOLVED: "solved to the requested tolerance",
    Status.MAX_ITER: (
        "hit max_iter before reaching the tolerance; raise max_iter, loosen tol, or rescale the "
        "problem (entries of P, q, A, G of very different magnitudes slow the interior point down)"
    ),
    Status.PRIMAL_INFEASIBLE: (
        "the constraints admit no solution (a Farkas certificate was found); for example a cap ub "
        "with n * ub < 1 under a full-investment constraint: relax the bounds or the constraints"
    ),
    Status.DUAL_INFEASIBLE: (
        "the problem is unbounded (the iterates diverge); add bounds, a leverage limit, or make P "
        "positive definite"
    ),
    Status.NUMERICAL_ERROR: (
        "numerical failure (non-finite iterates or a factorization that failed after regularization); "
        "check the conditioning of P and of the constraint rows, or use float64"
    ),
}


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
        return bool((self.status == Status.SOLVED).all())

    def messages(self) -> list[str]:
        """One message per distinct non-solved status, naming the batch indices."""
        out = []
        for code in torch.unique(self.status).tolist():
            if code == Status.SOLVED:
                continue
            idx = [tuple(i) for i in torch.nonzero(self.status == code).tolist()]
            out.append(f"{Status(code).name} at batch indices {_fmt(idx)}: {Status(code).message}")
        return out

    def raise_on_failure(self) -> None:
        """Raise the matching :class:`~portfolio_layers.errors.SolverError` if any element failed."""
        bad = self.status != Status.SOLVED
        if not bool(bad.any()):
            return
        idx = [tuple(i) for i in torch.nonzero(bad).tolist()]
        codes = set(torch.unique(self.status[bad]).tolist())
        text = "solve_qp failed: " + "; ".join(self.messages())
        if codes == {Status.PRIMAL_INFEASIBLE}:
            raise InfeasibleError(text, idx)
        if codes == {Status.MAX_ITER}:
            raise ConvergenceError(text, idx)
        raise SolverError(text + " (pass throw=False to get the statuses instead)", idx)


def _fmt(idx: list[tuple[int, ...]], limit: int = 10) -> str:
    shown = ", ".join(str(i[0]) if len(i) == 1 else str(i) for i in idx[:limit])
    if not idx or idx[0] == ():
        return "() (unbatched)"
    return f"[{shown}{', ...' if len(idx) > limit else ''}] ({len(idx)} in all)"
