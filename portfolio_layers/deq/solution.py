"""Result of a fixed-point solve: :class:`DEQSolution` and its :class:`Status` codes."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from portfolio_layers.errors import ConvergenceError, StatusCode


class Status(StatusCode):
    """Per-batch-element outcome of a fixed-point solve (stored as ``int64``)."""

    CONVERGED = 0, "converged: the residual ||f(z) - z|| is below atol + tol * ||f(z)||"
    MAX_ITER = (
        1,
        "hit max_iter before reaching the tolerance; the best iterate found is returned",
        ConvergenceError,
    )
    NONFINITE = (
        2,
        "f produced NaN or infinite values (at the start or after some iterations: the map diverged or "
        "overflowed); the finite iterate with the lowest residual is returned",
        ConvergenceError,
    )


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
        Name of the adjoint: ``"implicit"``, ``"jfb"`` or ``"unrolled"``.
    trace : Tensor of shape (iterations + 1, batch) or None
        Absolute residual of every element after every iteration (only with ``trace=True``).
    """

    status: Tensor
    iterations: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    solver: str
    backward: str
    trace: Tensor | None = None

    @property
    def converged(self) -> Tensor:
        """Tensor of shape (batch,), bool: elements with status ``CONVERGED``."""
        return ~Status.failed(self.status)

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


def raise_for_failure(
    status: Tensor, abs_residual: Tensor, iterations: Tensor, where: str, *, hint: str
) -> None:
    """:meth:`Status.raise_for` with the worst residual and the iteration count of the failing elements.

    Parameters
    ----------
    status, abs_residual, iterations : Tensor of shape (batch,)
        As in :class:`DEQSolution`.
    where : str
        What was solved, with its solver (``"fixed_point (anderson)"``).
    hint : str
        What to try.
    """
    failed = Status.failed(status)
    if bool(failed.any()):
        detail = (
            f"Absolute residual up to {float(abs_residual[failed].max()):.3e} after "
            f"{int(iterations.max())} iterations."
        )
        Status.raise_for(status, where, detail=detail, hint=hint)
