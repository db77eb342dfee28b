from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.backtest import BacktestConfig, default_config, run_backtest
from portfolio_layers.backtest.output import save_result
from portfolio_layers.data import load_prices
from portfolio_layers.errors import ConfigError
from portfolio_layers.registry import build_strategies, build_strategy

REPO = Path(__file__).resolve().parents[2]


def test_toml_roundtrip_and_overrides(tmp_path):
    cfg = default_config()
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert BacktestConfig.from_toml(path) == cfg
    new = cfg.override(lookback=60, start=None, cost_bps=0)
    assert new.lookback == 60 and new.start == cfg.start and new.cost_bps == 0.0


def test_nested_strategy_tables_roundtrip(tmp_path):
    # [params.e2e.train] (training settings of a learned strategy) is written inline and read back equal.
    cfg = default_config().override(params={"e2e": {"train": {"epochs": 2, "lr": 1e-3}, "max_weight": 0.3}})
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert BacktestConfig.from_toml(path).params == cfg.params


def test_default_toml_matches_built_in_default_run():
    from_file = BacktestConfig.from_toml(REPO / "backtests" / "configs" / "default.toml")
    built_in = default_config()
    for key in (
        "prices",
        "start",
        "end",
        "trade_start",
        "lookback",
        "rebalance",
        "cost_bps",
        "max_weight",
        "window",
    ):
        assert getattr(from_file, key) == getattr(built_in, key), key


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("lookbak = 10", r"unknown key\(s\) \['lookbak'\]"),
        ("lookback = 1", "'lookback' must be >= 2"),
        ("lookback = 2.5", "'lookback' must be an integer"),
        ("max_weight = 1.5", r"'max_weight' must be in \(0, 1\]"),
        ("cost_bps = -1", "'cost_bps' must be a finite number >= 0"),
        ("window = 'sliding'", "'window' must be one of"),
        ('strategies = ["a", "a"]', "lists a strategy twice"),
        (
            'strategies = ["equal_weight"]\n[params.min_variance]\nsolver = "qp"',
            r"\[params.min_variance\] is given",
        ),
        ("lookback = ", "not valid TOML"),
        ("seed = 12345678901234567890", r"'seed' must be in \[0, 4294967295\]"),
        ("seed = -1", r"'seed' must be in \[0, 4294967295\]"),
        ("benchmark = 3", r"'benchmark' must be the name of one of the strategies \['equal_weight', "),
        ("benchmark = ['equal_weight']", "'benchmark' must be the name of one of the strategies"),
        ("periods_per_year = 0", "'periods_per_year' must be a positive number"),
        ("periods_per_year = nan", "'periods_per_year' must be a positive number"),
        ("periods_per_year = '52'", "'periods_per_year' must be a positive number"),
    ],
)
def test_config_errors(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match):
        BacktestConfig.from_toml(path)


def test_a_toml_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("# café\nlookback = 60\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml is not UTF-8 text \(byte 0xe9 at position 5\)"):
        BacktestConfig.from_toml(path)


def test_an_empty_benchmark_means_no_tests_and_a_missing_one_is_named():
    assert BacktestConfig(benchmark="").benchmark is None
    BacktestConfig(benchmark=None).check_benchmark()
    config = BacktestConfig(strategies=("min_variance", "mean_variance"))
    with pytest.raises(
        ConfigError, match=r"'equal_weight' is not among the strategies run \['min_variance', "
    ):
        config.check_benchmark()


def test_the_data_keys_belong_to_the_prices_they_describe():
    config = default_config().override(end="2020-12-31", periods_per_year=252)
    assert config.with_prices("sp500") is config
    mine = config.with_prices("mine.csv")
    assert mine.prices == "mine.csv"
    assert (mine.start, mine.end, mine.trade_start, mine.max_weight, mine.periods_per_year) == (None,) * 5
    assert (mine.lookback, mine.strategies, mine.params) == (
        config.lookback,
        config.strategies,
        config.params,
    )


def test_unknown_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key"):
        BacktestConfig().override(lookbak=3)
    with pytest.raises(ConfigError, match="not found"):
        BacktestConfig.from_toml(tmp_path / "none.toml")


def test_save_writes_every_output(tmp_path):
    prices = load_prices("sp500", start="2021-06-01").iloc[:, :5]
    cfg = BacktestConfig(lookback=40, rebalance=21, strategies=("equal_weight", "min_variance"))
    res = run_backtest(prices, build_strategies(cfg), cfg)

    class WithDiag:
        name = "diag"

        def fit(self, prices):
            pass

        def weights(self, prices, current):
            return np.full(prices.shape[1], 1 / prices.shape[1])

        def diagnostics(self):
            return {"training curve": pd.DataFrame({"loss": [1.0, 0.5]})}

    res2 = run_backtest(prices, [WithDiag(), build_strategy("equal_weight", cfg)], cfg)
    save_result(res, tmp_path / "a")
    save_result(res2, tmp_path / "b")
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(metrics) == {"equal_weight", "min_variance"} and metrics["min_variance"]["sharpe"] is not None
    returns = pd.read_csv(tmp_path / "a" / "returns.csv", index_col=0, parse_dates=True)
    np.testing.assert_allclose(returns.to_numpy(), res.returns.to_numpy(), rtol=1e-9)
    weights = pd.read_csv(tmp_path / "a" / "weights" / "min_variance.csv", index_col=0, parse_dates=True)
    assert weights.shape == (len(res.turnover), 5)
    assert tomllib.loads((tmp_path / "a" / "config.toml").read_text())["lookback"] == 40
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # wealth, drawdowns, two weight plots
    assert "sharpe" in html and "max_drawdown" in html and "<script" not in html
    html2 = (tmp_path / "b" / "report.html").read_text()
    assert "diag: training curve" in html2
    assert html2.count("data:image/png;base64,") == 5  # + one diagnostics plot
    assert (tmp_path / "a" / "sharpe_tests.csv").is_file()
    assert (tmp_path / "b" / "diagnostics" / "diag" / "training_curve.csv").is_file()
    # The resolved config reflects the strategies actually run.
    assert tomllib.loads((tmp_path / "b" / "config.toml").read_text())["strategies"] == [
        "diag",
        "equal_weight",
    ]
    assert not list((tmp_path / "a").glob(".*.tmp"))
