"""Result of a fixed-point solve: :class:`DEQSolution`, its :class:`Status` codes and the ``throw`` policy."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from portfolio_layers.errors import ConvergenceError


class Status(enum.IntEnum):
    """Per-batch-element outcome of a fixed-point solve."""

    CONVERGED = 0
    MAX_ITER = 1
    NONFINITE = 2

    @property
    def message(self) -> str:
        """A human-readable explanation of the status."""
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "converged: the residual ||f(z) - z|| is below atol + tol * ||f(z)||",
    Status.MAX_ITER: "hit max_iter before reaching the tolerance; the best iterate found is returned",
    Status.NONFINITE: "f produced NaN or infinite values at every iterate tried for this element",
}


@dataclass(frozen=True)
class DEQSolution:
    """Diagnostics of :func:`~portfolio_layers.deq.fixed_point`, one entry per batch element.

    Attributes
    ----------
    status : Tensor of shape (batch,), int64
        A :class:`Status` code per element.
    iterations : Tensor of shape (batch,), int64
        Solver updates applied to each element before it stopped (converged elements are frozen).
    abs_residual : Tensor of shape (batch,)
        ``||f(z) - z||_2`` at the returned iterate (flattened over the non-batch dimensions).
    rel_residual : Tensor of shape (batch,)
        ``abs_residual / ||f(z)||_2``.
    solver : str
        Name of the forward solver.
    backward : str
        Backward mode: ``"implicit"``, ``"jfb"`` or ``"unrolled"``.
    trace : Tensor of shape (iterations + 1, batch) or None
        Absolute residual of every element after every iteration (only with ``trace=True``).
    adjoint : AdjointStats or None
        With ``backward="implicit"``: status, iterations and residual of the adjoint solve, filled in by
        each backward pass (the only mutable part of the result).
    jacobian_loss : Tensor of shape () or None
        Hutchinson estimate of ``||J_f(z*)||_F^2 / dim`` averaged over the batch, differentiable in the
        parameters of ``f`` (only with ``jacobian_samples > 0``). Add ``weight * jacobian_loss`` to the
        training loss to keep the equilibrium well conditioned.
    """

    status: Tensor
    iterations: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    solver: str
    backward: str
    trace: Tensor | None = None
    jacobian_loss: Tensor | None = None
    adjoint: Any = None

    @property
    def converged(self) -> Tensor:
        """Tensor of shape (batch,), bool: elements with status ``CONVERGED``."""
        return self.status == Status.CONVERGED

    @property
    def all_converged(self) -> bool:
        """Whether every batch element converged."""
        return bool(self.converged.all())

    def summary(self) -> str:
        """One line: how many elements converged, iterations and the worst residual."""
        n_ok = int(self.converged.sum())
        return (
            f"{self.solver}: {n_ok}/{self.status.numel()} converged, iterations max "
            f"{int(self.iterations.max())} mean {float(self.iterations.float().mean()):.1f}, "
            f"abs residual max {float(self.abs_residual.max()):.2e}, "
            f"rel residual max {float(self.rel_residual.max()):.2e}"
        )


def raise_if_failed(sol: DEQSolution, where: str, *, hint: str | None = None) -> None:
    """Raise :class:`ConvergenceError` naming the failing batch elements, if any.

    Parameters
    ----------
    sol : DEQSolution
        The solution to check.
    where : str
        What was being solved (``"fixed_point"``, ``"adjoint fixed point"``), used in the message.
    hint : str, optional
        What to try, replacing the default advice.
    """
    failed = torch.nonzero(sol.status != Status.CONVERGED).flatten().tolist()
    if not failed:
        return
    shown = failed[:10]
    more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    statuses = sorted({Status(int(sol.status[i])).name for i in failed})
    worst = float(sol.abs_residual[failed].max())
    if hint is None:
        hint = (
            "Try a larger max_iter, solver='anderson', damping=0.5, or make f contractive "
            "(spectral_normalize the cell's linear maps); pass throw=False to get the best iterate "
            "and statuses."
        )
    raise ConvergenceError(
        f"{where} ({sol.solver}) failed for batch elements {shown}{more}: status {', '.join(statuses)}, "
        f"absolute residual up to {worst:.3e} after {int(sol.iterations.max())} iterations. {hint}",
        indices=[(i,) for i in failed],
    )
