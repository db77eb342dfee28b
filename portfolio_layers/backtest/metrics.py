"""Performance metrics and Sharpe-difference tests: pure functions of series of net simple returns (rf = 0).

With ``A`` periods per year (252 for daily returns, the default; 52 weekly, 12 monthly: see
:mod:`portfolio_layers.data.frequency`) and ``N`` returns ``r`` of one period each:

- ``annual_return = prod(1 + r) ** (A / N) - 1``
- ``annual_volatility = std(r, ddof=1) * sqrt(A)``
- ``sharpe = mean(r) * A / annual_volatility``
- ``sortino = mean(r) * A / (sqrt(mean(min(r, 0) ** 2)) * sqrt(A))``
- ``max_drawdown``: largest fall from a running peak of wealth ``prod(1 + r)``, as a positive fraction (the
  initial wealth 1 counts as a peak)
- ``calmar = annual_return / max_drawdown``
- ``turnover``: mean turnover over the rebalances after the first (the first trade starts from cash).

Undefined ratios (zero denominator, too few returns) are NaN. Tests of equal Sharpe ratios live in
:mod:`portfolio_layers.backtest.sharpe_tests`.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import pandas as pd

from portfolio_layers.errors import InputError

#: Default periods per year ``A`` (daily returns); pass ``periods`` for other frequencies.
PERIODS_PER_YEAR = 252

#: Metric names, in the order used everywhere (API, metrics.json, report, CLI table).
METRIC_NAMES = (
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "turnover",
)


def as_array(returns: pd.Series | np.ndarray, name: str = "returns") -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise InputError(f"{name} must be one-dimensional (N,), got shape {r.shape}.")
    if not np.isfinite(r).all():
        raise InputError(f"{name} hold non-finite values; metrics need finite returns.")
    if (r <= -1).any():
        raise InputError(f"{name} hold a return <= -100% (wealth wiped out); metrics are undefined.")
    return r


def check_periods(periods: int | float) -> float:
    number = isinstance(periods, Real) and not isinstance(periods, bool)
    if not number or not math.isfinite(periods) or periods <= 0:
        raise InputError(
            f"periods (per year) must be a positive finite number (252 daily, 52 weekly, 12 monthly), "
            f"got {periods!r}."
        )
    return float(periods)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(den) else float("nan")


def annual_return(returns: pd.Series | np.ndarray, periods: int | float = PERIODS_PER_YEAR) -> float:
    """Geometric annualised return ``prod(1 + r) ** (A / N) - 1`` of returns ``(N,)``."""
    r, a = as_array(returns), check_periods(periods)
    if r.size == 0:
        return float("nan")
    return float(np.exp(np.log1p(r).sum() * a / r.size) - 1.0)


def annual_volatility(returns: pd.Series | np.ndarray, periods: int | float = PERIODS_PER_YEAR) -> float:
    """``std(r, ddof=1) * sqrt(A)`` of returns ``(N,)``; NaN for fewer than 2 returns."""
    r, a = as_array(returns), check_periods(periods)
    if r.size < 2:
        return float("nan")
    return float(r.std(ddof=1) * math.sqrt(a))


def sharpe(returns: pd.Series | np.ndarray, periods: int | float = PERIODS_PER_YEAR) -> float:
    """Annualised Sharpe ratio ``mean(r) * A / annual_volatility`` (rf = 0) of returns ``(N,)``."""
    r, a = as_array(returns), check_periods(periods)
    if r.size < 2:
        return float("nan")
    return _ratio(float(r.mean()) * a, annual_volatility(r, a))


def sortino(returns: pd.Series | np.ndarray, periods: int | float = PERIODS_PER_YEAR) -> float:
    """``mean(r) * A / (sqrt(mean(min(r, 0)^2)) * sqrt(A))`` of returns ``(N,)`` (target 0)."""
    r, a = as_array(returns), check_periods(periods)
    if r.size == 0:
        return float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2))) * math.sqrt(a)
    return _ratio(float(r.mean()) * a, downside)


def wealth(returns: pd.Series | np.ndarray) -> np.ndarray:
    """Wealth ``cumprod(1 + r)`` after each period, starting from 1, shape (N,)."""
    return np.cumprod(1.0 + as_array(returns))


def drawdowns(returns: pd.Series | np.ndarray) -> np.ndarray:
    """Drawdown after each period, ``1 - wealth / running_peak`` (initial wealth 1 is a peak), shape (N,)."""
    w = wealth(returns)
    peak = np.maximum.accumulate(np.concatenate([[1.0], w]))[1:]
    return 1.0 - w / peak


def max_drawdown(returns: pd.Series | np.ndarray) -> float:
    """Largest fall from a running peak of wealth, as a positive fraction (0 if wealth never falls)."""
    d = drawdowns(returns)
    return float(d.max()) if d.size else float("nan")


def calmar(returns: pd.Series | np.ndarray, periods: int | float = PERIODS_PER_YEAR) -> float:
    """``annual_return / max_drawdown``; NaN when there is no drawdown."""
    return _ratio(annual_return(returns, periods), max_drawdown(returns))


def mean_turnover(turnover: pd.Series | np.ndarray) -> float:
    """Mean of the turnover ``tau_t`` over the rebalances after the first; NaN with a single rebalance."""
    tau = np.asarray(turnover, dtype=np.float64)
    return float(tau[1:].mean()) if tau.size > 1 else float("nan")


def compute_metrics(
    returns: pd.Series | np.ndarray,
    turnover: pd.Series | np.ndarray | None = None,
    periods: int | float = PERIODS_PER_YEAR,
) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for one strategy.

    Parameters
    ----------
    returns : Series or array of shape (N,)
        Net simple returns, one per period.
    turnover : Series or array of shape (K,), optional
        Turnover at each of the K rebalances, in order; ``turnover`` is NaN without it.
    periods : int or float
        Periods per year ``A`` of the returns (252 daily, 52 weekly, 12 monthly), used by every annualised
        metric.
    """
    return {
        "annual_return": annual_return(returns, periods),
        "annual_volatility": annual_volatility(returns, periods),
        "sharpe": sharpe(returns, periods),
        "sortino": sortino(returns, periods),
        "max_drawdown": max_drawdown(returns),
        "calmar": calmar(returns, periods),
        "turnover": mean_turnover(turnover) if turnover is not None else float("nan"),
    }


__all__ = [
    "METRIC_NAMES",
    "PERIODS_PER_YEAR",
    "annual_return",
    "annual_volatility",
    "as_array",
    "calmar",
    "check_periods",
    "compute_metrics",
    "drawdowns",
    "max_drawdown",
    "mean_turnover",
    "sharpe",
    "sortino",
    "wealth",
]
