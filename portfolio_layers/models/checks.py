"""Checks shared by the public entry points of the models: numeric settings, price tables, previous weights.

- :func:`number` declares a dataclass field with its :class:`Range`, :func:`check_fields` checks them all:
  every numeric field of :class:`~portfolio_layers.models.training.TrainConfig` and
  :class:`~portfolio_layers.models.strategy.E2EPortfolio` is checked at construction (type, finite, range),
  so a bad value in a TOML ``[params.NAME]`` table fails at validation (exit 2), not at the first fit;
- :func:`check_prices`: what ``fit`` and ``weights`` accept as prices;
- :func:`previous_weights`: the rule for the ``current`` weights that ``weights`` receives from the engine.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from portfolio_layers.errors import ConfigError, DataError, InputError, NonFiniteError, ShapeError

__all__ = [
    "MAX_SEED",
    "SUM_TOLERANCE",
    "Range",
    "check_fields",
    "check_prices",
    "number",
    "previous_weights",
]

#: Largest accepted seed: numpy's legacy seeding and the backtest's ``seed`` take 32-bit unsigned integers
#: (torch takes 64 bits; a fit seeds torch with ``seed * 100_003 + fold``, which stays far below that).
MAX_SEED = 2**32 - 1
#: How far from 1 the sum of the ``current`` weights may be (rounding), as in the engine's weight check.
SUM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: an integer or a finite real number, with optional bounds.

    Attributes
    ----------
    low, high : float, optional
        Bounds; ``None`` leaves that side open to infinity.
    low_open, high_open : bool
        Whether the bound itself is excluded.
    integer : bool
        Only integers (``bool`` is refused, and so is ``8.0``).
    optional : bool
        ``None`` is accepted too.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def describe(self) -> str:
        """``"positive (a finite number)"``, ``"in [0, 1) (a finite number)"``, ``">= 1 (an integer)"``..."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f"in {left}{_text(self.low)}, {_text(self.high)}{right}"
        elif self.low == 0 and self.low_open:
            bounds = "positive"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {_text(self.low)}"
        else:
            bounds = "finite"
        kind = "an integer" if self.integer else "a finite number"
        return f"{bounds} ({kind}{' or None' if self.optional else ''})"

    def accepts(self, value: object) -> bool:
        """Whether ``value`` is of the right type, finite and within the bounds."""
        if value is None:
            return self.optional
        wanted = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool | np.bool_) or not isinstance(value, wanted):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def check(self, where: str, value: object) -> None:
        """Raise :class:`ConfigError` naming ``where`` unless :meth:`accepts` ``value``."""
        if not self.accepts(value):
            raise ConfigError(f"{where} must be {self.describe()}, got {value!r}.")


def _text(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def number(default: object, **accepted: object) -> Any:
    """A dataclass field with a default and the :class:`Range` (keyword arguments) its values must lie in."""
    return field(default=default, metadata={"range": Range(**accepted)})


def check_fields(owner: object) -> None:
    """Check every field of the dataclass instance ``owner`` declared with :func:`number` (or a ``"range"`` in
    its metadata); the message names ``ClassName.field``.

    Raises
    ------
    ConfigError
        The first field outside its range.
    """
    for f in fields(owner):
        accepted = f.metadata.get("range")
        if accepted is not None:
            accepted.check(f"{type(owner).__name__}.{f.name}", getattr(owner, f.name))


def check_prices(prices: object, where: str, assets: Sequence[str] | None = None) -> None:
    """Raise a clear error unless ``prices`` is a date-indexed DataFrame of prices (``assets`` its columns).

    Parameters
    ----------
    prices : object
        What the caller passed as prices.
    where : str
        The call, for the message (``"e2e.weights"``).
    assets : sequence of str, optional
        The fitted columns, in order (``None`` before the first fit).

    Raises
    ------
    InputError
        Not a DataFrame.
    DataError
        No DatetimeIndex, no rows, non-numeric columns, or other columns than the fitted ones.
    """
    expected = "a pandas DataFrame of prices (not returns), indexed by date, one column per asset" + (
        "" if assets is None else f" with the fitted columns {list(assets)}"
    )
    if not isinstance(prices, pd.DataFrame):
        raise InputError(
            f"{where}: expected {expected}, got {type(prices).__name__}; wrap an array as "
            "pd.DataFrame(values, index=dates, columns=tickers)."
        )
    if not isinstance(prices.index, pd.DatetimeIndex):
        raise DataError(
            f"{where}: expected {expected}; the index is a {type(prices.index).__name__}: "
            "set the dates as the index (df.set_index(pd.to_datetime(df['date'])))."
        )
    if len(prices) == 0 or prices.shape[1] == 0:
        raise DataError(f"{where}: expected {expected}, got an empty table of shape {prices.shape}.")
    if assets is not None and tuple(map(str, prices.columns)) != tuple(assets):
        raise DataError(
            f"{where}: the prices have columns {list(prices.columns)} but the model was fitted on "
            f"{list(assets)}; pass the same assets in the same order."
        )
    not_numeric = [str(c) for c, t in prices.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if not_numeric:
        raise DataError(f"{where}: expected {expected}; columns {not_numeric} are not numeric.")


def previous_weights(current: object, n: int, where: str) -> np.ndarray | None:
    """The previous portfolio a turnover limit binds against, from the ``current`` weights of ``weights``.

    The rule: ``None`` or all zeros means no previous portfolio (the engine passes zeros before the first
    trade), returned as ``None``; otherwise the drifted weights of a fully invested portfolio, finite and
    summing to 1 within :data:`SUM_TOLERANCE` (returned as given, as float64).

    Parameters
    ----------
    current : array-like of shape (n,) or None
        Drifted weights before the trade.
    n : int
        Number of assets.
    where : str
        The call, for the message.

    Raises
    ------
    ShapeError
        Not of shape (n,).
    NonFiniteError
        NaN or infinite entries.
    InputError
        Nonzero weights that do not sum to 1.
    """
    if current is None:
        return None
    try:
        w = np.asarray(current, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: current must be {n} numbers or None, got {current!r}.") from exc
    if w.shape != (n,):
        raise ShapeError(f"{where}: current must have shape ({n},) (one weight per asset), got {w.shape}.")
    if not np.isfinite(w).all():
        raise NonFiniteError(
            f"{where}: current holds NaN or infinite weights at positions "
            f"{np.flatnonzero(~np.isfinite(w)).tolist()}; pass the drifted weights before the trade, or "
            "zeros (or None) when there is no previous portfolio."
        )
    if not w.any():
        return None
    if abs(w.sum() - 1.0) > SUM_TOLERANCE:
        raise InputError(
            f"{where}: current weights sum to {w.sum():.6g}; they must sum to 1 (the drifted weights of a "
            "fully invested portfolio) or be all zeros (no previous portfolio, before the first trade)."
        )
    return w
