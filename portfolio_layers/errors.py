"""Every exception of portfolio_layers, in one hierarchy.

Bad input raises a ``ValueError`` subclass (so ``except ValueError`` keeps working); a solver that
ran but failed raises a :class:`SolverError`. Messages say what is wrong, where, and what to try.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any


class PortfolioLayersError(Exception):
    """Base class of every error raised on purpose by portfolio_layers."""


class InputError(PortfolioLayersError, ValueError):
    """Bad input: wrong shapes, non-finite values, invalid options."""


class ShapeError(InputError):
    """A tensor or array does not have the expected shape."""


class NonFiniteError(InputError):
    """An input holds NaN or infinite values."""


class NotPSDError(InputError):
    """A matrix that must be positive semidefinite is not."""


class DataError(InputError):
    """Market data is invalid (non-positive prices, unsorted dates, missing values, unknown tickers...)."""


class DataUnavailableError(DataError):
    """Data cannot be obtained (offline and not cached)."""


class LookAheadError(InputError):
    """A computation would use data after the decision date."""


class ConfigError(InputError):
    """A configuration (TOML file, CLI flags, keyword arguments) is invalid."""


class SolverError(PortfolioLayersError, RuntimeError):
    """A solver ran but did not succeed on some batch elements.

    Attributes
    ----------
    indices : tuple of tuple of int
        Batch indices of the failing elements.
    """

    def __init__(self, message: str, indices: Sequence[tuple[int, ...]] = ()) -> None:
        super().__init__(message)
        self.indices = tuple(tuple(int(i) for i in idx) for idx in indices)


class InfeasibleError(SolverError, ValueError):
    """The constraints admit no solution (for example a weight cap ``ub`` with ``n * ub < 1``)."""


class ConvergenceError(SolverError):
    """A solver hit its iteration limit before reaching the tolerance."""


class StrategyError(PortfolioLayersError, RuntimeError):
    """A strategy failed with an unexpected exception during a backtest (that exception is ``__cause__``).

    A failure in user or model code, not a solver's: it is not a :class:`SolverError`.
    """


class StatusCode(enum.IntEnum):
    """Base of every per-element status vocabulary of the package (code 0 means success).

    A solver family extends it with its own members, each written ``NAME = code, message, error``:
    the integer code stored in status tensors, a human message with a suggested fix, and the
    :class:`SolverError` subclass raised for it (``None`` for the success code). The QP layer's
    ``Status`` and the fixed-point solvers' ``Status`` both extend it, so callers test ``.ok`` or
    call :meth:`raise_for` and never compare a status with a bare number.
    """

    def __new__(cls, code: int, message: str = "", error: type[SolverError] | None = None) -> StatusCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.message = message
        member.error = error
        return member

    @property
    def ok(self) -> bool:
        """Whether this code means success."""
        return self.value == 0

    @classmethod
    def success(cls) -> StatusCode:
        """The success member (code 0)."""
        return cls(0)

    @classmethod
    def failed(cls, status: Any) -> Any:
        """Boolean mask of the failed elements of a status tensor (elementwise ``!= success``)."""
        return status != 0

    @classmethod
    def describe(cls, status: Any) -> list[str]:
        """One line per distinct failing code of a status tensor, naming its batch indices and message."""
        out = []
        for code in sorted({int(c) for c in status[cls.failed(status)].reshape(-1).tolist()}):
            idx = [tuple(int(j) for j in i) for i in (status == code).nonzero().tolist()]
            out.append(f"{cls(code).name} at batch indices {format_indices(idx)}: {cls(code).message}")
        return out

    @classmethod
    def raise_for(cls, status: Any, where: str, *, detail: str = "", hint: str = "") -> None:
        """Raise the error of the failing codes of a status tensor, if any element failed.

        Parameters
        ----------
        status : Tensor of shape (*batch,), integer
            Status codes of this vocabulary.
        where : str
            What was being solved, first words of the message (``"solve_qp"``, ``"fixed_point"``).
        detail : str, optional
            Extra facts (residuals, iterations) appended to the per-code messages.
        hint : str, optional
            What to try, appended last.

        Raises
        ------
        SolverError
            The error class of the failing code when all failures share one, else ``SolverError``;
            its ``indices`` name the failing batch elements.
        """
        bad = cls.failed(status)
        if not bool(bad.any()):
            return
        idx = [tuple(int(j) for j in i) for i in bad.nonzero().tolist()]
        codes = {cls(int(c)) for c in status[bad].reshape(-1).tolist()}
        errors = {c.error or SolverError for c in codes}
        error = errors.pop() if len(errors) == 1 else SolverError
        text = f"{where} failed: " + "; ".join(cls.describe(status))
        text += "" if text.endswith(".") else "."
        raise error(" ".join(t for t in (text, detail, hint) if t), idx)


def format_indices(idx: Sequence[tuple[int, ...]], limit: int = 10) -> str:
    """Batch indices for a message: ``[0, 3, 7] (3 in all)``, or ``() (unbatched)``."""
    if not idx or idx[0] == ():
        return "() (unbatched)"
    shown = ", ".join(str(i[0]) if len(i) == 1 else str(i) for i in idx[:limit])
    return f"[{shown}{', ...' if len(idx) > limit else ''}] ({len(idx)} in all)"


__all__ = [
    "ConfigError",
    "ConvergenceError",
    "DataError",
    "DataUnavailableError",
    "InfeasibleError",
    "InputError",
    "LookAheadError",
    "NonFiniteError",
    "NotPSDError",
    "PortfolioLayersError",
    "ShapeError",
    "SolverError",
    "StatusCode",
    "StrategyError",
    "format_indices",
]
