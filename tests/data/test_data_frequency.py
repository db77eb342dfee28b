from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.backtest import metrics as M
from portfolio_layers.data import load_prices
from portfolio_layers.data.frequency import (
    describe_frequency,
    infer_periods_per_year,
    resolve_periods_per_year,
)
from portfolio_layers.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def daily():
    return load_prices("sp500")


def _last_trading_day_of_each(prices: pd.DataFrame, period: str) -> pd.DataFrame:
    """Rows on the real last trading day of each period (a holiday Friday gives a Thursday date)."""
    return prices.groupby(prices.index.to_period(period)).tail(1)


def test_embedded_daily_weekly_monthly(daily):
    assert infer_periods_per_year(daily.index) == 252
    assert infer_periods_per_year(daily.resample("W-FRI").last().index) == 52
    assert infer_periods_per_year(daily.resample("ME").last().index) == 12
    assert infer_periods_per_year(daily.resample("QE").last().index) == 4
    assert infer_periods_per_year(daily.resample("YE").last().index) == 1


def test_holiday_shifted_dates_and_a_few_missing_periods(daily):
    weekly = _last_trading_day_of_each(daily, "W-FRI")
    assert (weekly.index.day_of_week != 4).any()  # some weeks end on a Thursday (holiday Friday)
    assert infer_periods_per_year(weekly.index) == 52
    rng = np.random.default_rng(0)
    keep = rng.random(len(weekly)) > 0.1  # about 10% of the weeks missing
    assert infer_periods_per_year(weekly.index[keep]) == 52
    assert infer_periods_per_year(_last_trading_day_of_each(daily, "M").index) == 12
    assert infer_periods_per_year(daily.index[rng.random(len(daily)) > 0.05]) == 252


def test_calendar_daily_data_is_365():
    assert infer_periods_per_year(pd.date_range("2020-01-01", periods=400, freq="D")) == 365


def test_weekly_sharpe_annualised_with_52_matches_the_daily_one(daily):
    # equal-weight returns; 252 on weekly returns inflates the Sharpe ratio by sqrt(252 / 52) ~ 2.2
    day = daily.pct_change().dropna().mean(axis=1)
    week = daily.resample("W-FRI").last().pct_change().dropna().mean(axis=1)
    periods = infer_periods_per_year(week.index)
    assert M.sharpe(week, periods=periods) == pytest.approx(M.sharpe(day), abs=0.1)
    assert M.sharpe(week) > 2.0  # the silent error of the issue (2.12 vs 1.02)


def test_irregular_or_short_index_asks_for_periods_per_year(daily):
    mixed = daily.index[:1000].append(daily.resample("ME").last().index[60:])  # 1000 days, 336 months
    with pytest.raises(DataError, match=r"irregular.*periods_per_year"):
        infer_periods_per_year(mixed)
    every_other_fortnight = pd.date_range("2020-01-01", periods=50, freq="14D")
    with pytest.raises(DataError, match=r"median spacing of the dates is 14 days.*periods_per_year"):
        infer_periods_per_year(every_other_fortnight)
    with pytest.raises(DataError, match=r"2 date\(s\).*periods_per_year"):
        infer_periods_per_year(daily.index[:2])
    with pytest.raises(DataError, match="DatetimeIndex"):
        infer_periods_per_year(pd.RangeIndex(10))
    with pytest.raises(DataError, match="unique and increasing"):
        infer_periods_per_year(daily.index[:10][::-1])


def test_override(daily):
    assert resolve_periods_per_year(daily.index, None) == 252
    assert resolve_periods_per_year(pd.RangeIndex(3), 26) == 26  # the index is not read
    assert resolve_periods_per_year(daily.index, 250.5) == 250.5
    for bad in (0, -52, math.nan, math.inf, True, "52"):
        with pytest.raises(ConfigError, match="periods_per_year"):
            resolve_periods_per_year(daily.index, bad)


def test_describe_frequency():
    assert describe_frequency(252) == "daily"
    assert describe_frequency(52.0) == "weekly"
    assert describe_frequency(12) == "monthly"
    assert describe_frequency(26) == "26 periods per year"
