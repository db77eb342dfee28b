"""Frequency in the backtest: periods per year inferred from the dates used (or set), in metrics, Sharpe
tests, the result, the CLI header and the settings handed to strategies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from portfolio_layers import registry
from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.backtest.metrics import sharpe
from portfolio_layers.cli import main
from portfolio_layers.data import load_prices
from portfolio_layers.errors import ConfigError, DataError
from portfolio_layers.registry import STRATEGIES, Entry, build_strategies, strategy_kwargs


@pytest.fixture(scope="module")
def daily() -> pd.DataFrame:
    return load_prices("sp500", start="2013-01-01").iloc[:, :6]


@pytest.fixture(scope="module")
def weekly(daily) -> pd.DataFrame:
    return daily.resample("W-FRI").last()


def _config(**changes) -> BacktestConfig:
    base = {
        "strategies": ("equal_weight", "min_variance"),
        "lookback": 52,
        "rebalance": 4,
        "max_weight": None,
    }
    return BacktestConfig(**{**base, **changes})


def test_weekly_prices_are_annualised_with_52(daily, weekly):
    config = _config()
    result = run_backtest(weekly, build_strategies(config), config)
    assert result.periods_per_year == 52
    r = result.returns["equal_weight"]
    assert result.metrics.loc["equal_weight", "sharpe"] == pytest.approx(sharpe(r, 52), rel=1e-12)
    assert result.metrics.loc["equal_weight", "annual_volatility"] == pytest.approx(
        r.std(ddof=1) * math.sqrt(52), rel=1e-12
    )
    # The same portfolio held on the daily prices over the same dates: about the same Sharpe ratio (with 252
    # the weekly one would be sqrt(252 / 52) = 2.2 times larger).
    daily_config = _config(lookback=252, rebalance=20)
    daily_result = run_backtest(daily, build_strategies(daily_config), daily_config)
    assert daily_result.periods_per_year == 252
    weekly_sharpe = result.metrics.loc["equal_weight", "sharpe"]
    daily_sharpe = daily_result.metrics.loc["equal_weight", "sharpe"]
    assert abs(weekly_sharpe - daily_sharpe) < 0.25 * daily_sharpe
    # The Sharpe tests annualise with the same number.
    tests = result.sharpe_tests("equal_weight")
    assert tests.loc["min_variance", "sharpe"] == pytest.approx(
        result.metrics.loc["min_variance", "sharpe"], rel=1e-12
    )


def test_the_override_replaces_the_inferred_frequency(weekly):
    config = _config(periods_per_year=12)
    result = run_backtest(weekly, build_strategies(config), config)
    assert result.periods_per_year == 12
    r = result.returns["min_variance"]
    assert result.metrics.loc["min_variance", "sharpe"] == pytest.approx(sharpe(r, 12), rel=1e-12)


def test_the_frequency_is_inferred_after_date_slicing(daily, weekly):
    # Daily rows before 2016, weekly rows after: the run from 2016 on is weekly.
    mixed = pd.concat([daily.loc[:"2015-12-31"], weekly.loc["2016-01-01":]])
    config = _config(start="2016-01-01")
    assert run_backtest(mixed, build_strategies(config), config).periods_per_year == 52
    with pytest.raises(DataError, match="periods_per_year") as info:
        run_backtest(mixed, build_strategies(_config()), _config())
    assert "--periods-per-year" in " ".join(info.value.__notes__)


@pytest.mark.parametrize("value", [0, -52, float("nan"), float("inf"), "52", True])
def test_bad_periods_per_year_is_a_config_error(value):
    with pytest.raises(ConfigError, match="'periods_per_year' must be a positive number"):
        BacktestConfig(periods_per_year=value)


class Annualising:
    """A constructor that takes ``periods_per_year``, and records it."""

    def __init__(self, *, name: str = "?", periods_per_year: float = 252.0) -> None:
        self.name, self.periods_per_year = name, periods_per_year

    def fit(self, prices):
        pass

    def weights(self, prices, current):
        return np.full(prices.shape[1], 1.0 / prices.shape[1])


def test_periods_per_year_reaches_only_the_constructors_that_take_it(monkeypatch):
    monkeypatch.setattr(registry, "STRATEGIES", {**STRATEGIES, "annual": Entry(Annualising)})
    config = BacktestConfig(strategies=("annual", "equal_weight"), benchmark=None)
    # Inferred frequency not known yet: nothing passed, the constructor's default holds.
    assert "periods_per_year" not in strategy_kwargs("annual", config)
    annual, equal = build_strategies(config, 52)
    assert annual.periods_per_year == 52 and not hasattr(equal, "periods_per_year")
    # An explicit config value is passed without a resolved one; a [params.NAME] value wins.
    assert strategy_kwargs("annual", config.override(periods_per_year=12))["periods_per_year"] == 12
    tabled = config.override(params={"annual": {"periods_per_year": 365}})
    assert build_strategies(tabled, 52)[0].periods_per_year == 365


def _write_csv(path, index) -> None:
    rng = np.random.default_rng(0)
    values = 100 * np.cumprod(1 + 0.01 * rng.standard_normal((len(index), 3)), axis=0)
    pd.DataFrame(values, index=pd.DatetimeIndex(index, name="date"), columns=["A", "B", "C"]).to_csv(path)


def test_cli_header_says_weekly_and_an_irregular_index_is_exit_2(tmp_path, capsys):
    csv = tmp_path / "weekly.csv"
    _write_csv(csv, pd.date_range("2015-01-02", periods=200, freq="W-FRI"))
    args = ["backtest", "--prices", str(csv), "--strategies", "equal_weight,inverse_volatility"]
    args += ["--lookback", "52", "--rebalance", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "frequency: weekly (52 per year), inferred from the dates" in out
    assert main([*args, "--periods-per-year", "50", "--out", str(tmp_path / "s")]) == 0
    assert "frequency: 50 per year, set by --periods-per-year" in capsys.readouterr().out

    irregular = tmp_path / "irregular.csv"
    days = np.cumsum(np.random.default_rng(1).choice([1, 3, 9, 20, 40], size=150))
    _write_csv(irregular, pd.Timestamp("2015-01-02") + pd.to_timedelta(days, unit="D"))
    args[2] = str(irregular)
    code = main([*args, "--out", str(tmp_path / "x")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err
    assert "irregular" in err and "--periods-per-year" in err
    assert not (tmp_path / "x").exists()
    assert main([*args, "--periods-per-year", "52", "--out", str(tmp_path / "y")]) == 0
