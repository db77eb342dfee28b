"""Performance metrics: pure functions of a series of net daily simple returns (rf = 0).

With ``A`` periods per year (252) and ``N`` returns ``r``:

- ``annual_return = prod(1 + r) ** (A / N) - 1``
- ``annual_volatility = std(r, ddof=1) * sqrt(A)``
- ``sharpe = mean(r) * A / annual_volatility``
- ``sortino = mean(r) * A / (sqrt(mean(min(r, 0) ** 2)) * sqrt(A))``
- ``max_drawdown``: largest fall from a running peak of wealth ``prod(1 + r)``, as a positive fraction (the
  initial wealth 1 counts as a peak)
- ``calmar = annual_return / max_drawdown``
- ``turnover``: mean turnover over the rebalances after the first (the first trade starts from cash).

Undefined ratios (zero denominator, too few returns) are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from portfolio_layers.errors import InputError

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


def _as_array(returns: pd.Series | np.ndarray, name: str = "returns") -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise InputError(f"{name} must be one-dimensional (N,), got shape {r.shape}.")
    if not np.isfinite(r).all():
        raise InputError(f"{name} hold non-finite values; metrics need finite daily returns.")
    if (r <= -1).any():
        raise InputError(f"{name} hold a return <= -100% (wealth wiped out); metrics are undefined.")
    return r


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(den) else float("nan")


def annual_return(returns: pd.Series | np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """Geometric annualised return ``prod(1 + r) ** (A / N) - 1`` of returns ``(N,)``."""
    r = _as_array(returns)
    if r.size == 0:
        return float("nan")
    return float(np.exp(np.log1p(r).sum() * periods / r.size) - 1.0)


def annual_volatility(returns: pd.Series | np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """``std(r, ddof=1) * sqrt(A)`` of returns ``(N,)``; NaN for fewer than 2 returns."""
    r = _as_array(returns)
    if r.size < 2:
        return float("nan")
    return float(r.std(ddof=1) * math.sqrt(periods))


def sharpe(returns: pd.Series | np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """Annualised Sharpe ratio ``mean(r) * A / annual_volatility`` (rf = 0) of returns ``(N,)``."""
    r = _as_array(returns)
    if r.size < 2:
        return float("nan")
    return _ratio(float(r.mean()) * periods, annual_volatility(r, periods))


def sortino(returns: pd.Series | np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """``mean(r) * A / (sqrt(mean(min(r, 0)^2)) * sqrt(A))`` of returns ``(N,)`` (target 0)."""
    r = _as_array(returns)
    if r.size == 0:
        return float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2))) * math.sqrt(periods)
    return _ratio(float(r.mean()) * periods, downside)


def wealth(returns: pd.Series | np.ndarray) -> np.ndarray:
    """Wealth ``cumprod(1 + r)`` after each period, starting from 1, shape (N,)."""
    return np.cumprod(1.0 + _as_array(returns))


def drawdowns(returns: pd.Series | np.ndarray) -> np.ndarray:
    """Drawdown after each period, ``1 - wealth / running_peak`` (initial wealth 1 is a peak), shape (N,)."""
    w = wealth(returns)
    peak = np.maximum.accumulate(np.concatenate([[1.0], w]))[1:]
    return 1.0 - w / peak


def max_drawdown(returns: pd.Series | np.ndarray) -> float:
    """Largest fall from a running peak of wealth, as a positive fraction (0 if wealth never falls)."""
    d = drawdowns(returns)
    return float(d.max()) if d.size else float("nan")


def calmar(returns: pd.Series | np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """``annual_return / max_drawdown``; NaN when there is no drawdown."""
    return _ratio(annual_return(returns, periods), max_drawdown(returns))


def mean_turnover(turnover: pd.Series | np.ndarray) -> float:
    """Mean of the turnover ``tau_t`` over the rebalances after the first; NaN with a single rebalance."""
    tau = np.asarray(turnover, dtype=np.float64)
    return float(tau[1:].mean()) if tau.size > 1 else float("nan")


def compute_metrics(
    returns: pd.Series | np.ndarray,
    turnover: pd.Series | np.ndarray | None = None,
    periods: int = PERIODS_PER_YEAR,
) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for one strategy.

    Parameters
    ----------
    returns : Series or array of shape (N,)
        Net daily simple returns.
    turnover : Series or array of shape (K,), optional
        Turnover at each of the K rebalances, in order; ``turnover`` is NaN without it.
    periods : int
        Periods per year ``A``.
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


@dataclass(frozen=True)
class SharpeTest:
    """Result of :func:`sharpe_difference_test`.

    Attributes
    ----------
    sharpe_a, sharpe_b : float
        Annualised Sharpe ratios of the two series.
    difference : float
        ``sharpe_a - sharpe_b`` (annualised).
    z : float
        Test statistic, asymptotically standard normal when the Sharpe ratios are equal.
    p_value : float
        Two-sided p-value ``2 * (1 - Phi(|z|))``.
    n_obs : int
        Number of paired returns N.
    """

    sharpe_a: float
    sharpe_b: float
    difference: float
    z: float
    p_value: float
    n_obs: int


def sharpe_difference_test(
    returns_a: pd.Series | np.ndarray,
    returns_b: pd.Series | np.ndarray,
    periods: int = PERIODS_PER_YEAR,
) -> SharpeTest:
    """Test equal Sharpe ratios of two paired return series (Jobson-Korkie 1981, Memmel 2003 correction).

    With per-period Sharpe ratios ``s_a = mean_a / sd_a``, ``s_b`` and the correlation ``rho`` of the two
    series over N paired periods (iid normal returns assumed), the asymptotic variance of ``s_a - s_b`` is
    ``V = (2 - 2 rho + (s_a^2 + s_b^2 - 2 s_a s_b rho^2) / 2) / N`` and ``z = (s_a - s_b) / sqrt(V)``.

    Parameters
    ----------
    returns_a, returns_b : Series or array of shape (N,)
        Paired daily returns (same dates), for example a strategy and a benchmark. Series are aligned on
        their index first.
    periods : int
        Periods per year, used only to annualise the reported Sharpe ratios.

    Returns
    -------
    SharpeTest
        ``z > 0`` means ``a`` has the higher Sharpe ratio; ``p_value`` is two-sided.
    """
    if isinstance(returns_a, pd.Series) and isinstance(returns_b, pd.Series):
        returns_a, returns_b = returns_a.align(returns_b, join="inner")
    a = _as_array(returns_a, "returns_a")
    b = _as_array(returns_b, "returns_b")
    if a.shape != b.shape:
        raise InputError(f"returns_a {a.shape} and returns_b {b.shape} must be paired (same length).")
    n = a.size
    if n < 3:
        raise InputError(f"the Sharpe-difference test needs at least 3 paired returns, got {n}.")
    sd_a, sd_b = a.std(ddof=1), b.std(ddof=1)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise InputError("a return series is constant; its Sharpe ratio is undefined.")
    s_a, s_b = a.mean() / sd_a, b.mean() / sd_b
    rho = float(np.corrcoef(a, b)[0, 1])
    var = (2.0 - 2.0 * rho + 0.5 * (s_a**2 + s_b**2 - 2.0 * s_a * s_b * rho**2)) / n
    diff = s_a - s_b
    if var <= 0:  # identical series: no difference to test
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = float(diff / math.sqrt(var))
    p_value = math.erfc(abs(z) / math.sqrt(2.0))
    scale = math.sqrt(periods)
    return SharpeTest(float(s_a * scale), float(s_b * scale), float(diff * scale), z, p_value, n)


__all__ = [
    "METRIC_NAMES",
    "PERIODS_PER_YEAR",
    "SharpeTest",
    "annual_return",
    "annual_volatility",
    "calmar",
    "compute_metrics",
    "drawdowns",
    "max_drawdown",
    "mean_turnover",
    "sharpe",
    "sharpe_difference_test",
    "sortino",
    "wealth",
]
