"""Sampling frequency of a date index: how many return periods make a year.

Annualised metrics (volatility ``std * sqrt(A)``, Sharpe ``mean * A / (std * sqrt(A))``) need the number
``A`` of periods per year. :func:`infer_periods_per_year` reads it from the dates;
:func:`resolve_periods_per_year` takes a user's override instead when one is given.

The rule uses the median spacing ``m`` between consecutive dates, in calendar days, so that holidays, weekends
and a few missing rows do not move it:

============  ================  =====================================  ===========
frequency     median ``m``      spacings counted as regular            ``A``
============  ================  =====================================  ===========
daily         ``m <= 1.5``      0.5 to 4.5 days (weekends, holidays)   252, or 365
weekly        5 to 9            5 to 9 days (a holiday moves a close)  52
monthly       25 to 35          25 to 35 days (28-31, business ends)   12
quarterly     80 to 100         80 to 100 days                         4
annual        350 to 380        350 to 380 days                        1
============  ================  =====================================  ===========

Daily data is 252 (trading days) unless more than 10% of its dates fall on a Saturday or Sunday (markets open
every day, such as crypto-currencies), then 365. At least 75% of the spacings must be regular: a few missing
weeks or months pass, an index that mixes frequencies or has no clear one is an error asking for
``periods_per_year``.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import pandas as pd

from portfolio_layers.errors import ConfigError, DataError

#: Minimum number of dates needed to infer a frequency (two spacings).
MIN_DATES = 3
#: Minimum share of spacings that must lie in the regular range of the inferred frequency.
MIN_REGULAR_SHARE = 0.75
#: Share of weekend dates above which daily data counts as 365 periods per year.
WEEKEND_SHARE_365 = 0.10

# (name, periods per year, median range, regular-spacing range), spacings in calendar days.
_FREQUENCIES = (
    ("daily", 252, (0.5, 1.5), (0.5, 4.5)),
    ("weekly", 52, (5.0, 9.0), (5.0, 9.0)),
    ("monthly", 12, (25.0, 35.0), (25.0, 35.0)),
    ("quarterly", 4, (80.0, 100.0), (80.0, 100.0)),
    ("annual", 1, (350.0, 380.0), (350.0, 380.0)),
)

_WORDS = {
    252: "daily",
    365: "daily (7 days a week)",
    52: "weekly",
    12: "monthly",
    4: "quarterly",
    1: "annual",
}

_ASK = "pass periods_per_year (for example 252 for daily, 52 for weekly, 12 for monthly returns)"


def infer_periods_per_year(index: pd.DatetimeIndex) -> int:
    """Periods per year of a date index, from the median spacing of its dates (see the module docstring).

    Parameters
    ----------
    index : DatetimeIndex of length T
        Dates of a price or return table, unique and increasing.

    Returns
    -------
    int
        252 (business-daily), 365 (daily including weekends), 52, 12, 4 or 1.

    Raises
    ------
    DataError
        Not a DatetimeIndex, fewer than :data:`MIN_DATES` dates, unsorted or repeated dates, or no clear
        frequency (the message gives the median spacing and asks for ``periods_per_year``).
    """
    if not isinstance(index, pd.DatetimeIndex):
        raise DataError(
            f"inferring the data frequency needs a DatetimeIndex, got {type(index).__name__}; {_ASK}."
        )
    if len(index) < MIN_DATES:
        raise DataError(
            f"cannot infer the data frequency from {len(index)} date(s) (at least {MIN_DATES} needed); "
            f"{_ASK}."
        )
    days = np.asarray((index[1:] - index[:-1]) / pd.Timedelta(days=1), dtype=np.float64)
    if (days <= 0).any():
        raise DataError(
            "cannot infer the data frequency: the dates are not unique and increasing; sort them."
        )
    median = float(np.median(days))
    for name, periods, (lo, hi), (reg_lo, reg_hi) in _FREQUENCIES:
        if lo <= median <= hi:
            regular = float(np.mean((days >= reg_lo) & (days <= reg_hi)))
            if regular < MIN_REGULAR_SHARE:
                raise DataError(
                    f"the dates look {name} (median spacing {median:g} days) but only {regular:.0%} of the "
                    f"spacings are {reg_lo:g}-{reg_hi:g} days: the index is irregular; {_ASK}."
                )
            if periods == 252 and float(np.mean(index.day_of_week >= 5)) > WEEKEND_SHARE_365:
                return 365
            return periods
    raise DataError(
        f"cannot infer the data frequency: the median spacing of the dates is {median:g} days, which is not "
        f"daily (1), weekly (7), monthly (~30), quarterly (~91) or annual (~365); {_ASK}."
    )


def resolve_periods_per_year(index: pd.DatetimeIndex, override: int | float | None = None) -> int | float:
    """``override`` when given (validated), else :func:`infer_periods_per_year` of ``index``.

    Parameters
    ----------
    index : DatetimeIndex of length T
        Dates of the data; only read when ``override`` is None.
    override : int or float, optional
        Periods per year chosen by the user, a positive finite number.

    Raises
    ------
    ConfigError
        ``override`` is not a positive finite number.
    DataError
        No override and no clear frequency in ``index``.
    """
    if override is None:
        return infer_periods_per_year(index)
    if isinstance(override, bool) or not isinstance(override, Real):
        raise ConfigError(
            f"periods_per_year must be a number such as 252, 52 or 12, got {type(override).__name__} "
            f"{override!r}."
        )
    if not math.isfinite(override) or override <= 0:
        raise ConfigError(
            "periods_per_year must be positive and finite (252 daily, 52 weekly, 12 monthly), "
            f"got {override!r}."
        )
    return override


def describe_frequency(periods: int | float) -> str:
    """Words for a report header: ``"daily"``, ``"weekly"``, ``"monthly"``... or ``"N periods per year"``."""
    return _WORDS.get(periods) or f"{periods:g} periods per year"


__all__ = ["MIN_DATES", "describe_frequency", "infer_periods_per_year", "resolve_periods_per_year"]
