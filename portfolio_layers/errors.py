"""Every exception of portfolio_layers, in one hierarchy.

Bad input raises a ``ValueError`` subclass (so ``except ValueError`` keeps working); a solver that
ran but failed raises a :class:`SolverError`. Messages say what is wrong, where, and what to try.
"""

from __future__ import annotations

from collections.abc import Sequence


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


class StrategyError(SolverError):
    """A strategy failed with an unexpected exception during a backtest (that exception is ``__cause__``)."""


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
    "StrategyError",
]
