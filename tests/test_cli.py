"""The command line end to end on a small slice of the embedded data (no network)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yfinance

from portfolio_layers.cli import main

SMALL = ["--start", "2021-01-01", "--lookback", "60", "--rebalance", "21", "--quiet"]


def test_backtest_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no backtests/configs/default.toml here: the built-in default run is used
    out = tmp_path / "run"
    code = main(
        ["backtest", *SMALL, "--strategies", "equal_weight,min_variance,mean_variance", "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "built-in default run" in captured.err
    assert "--start given without --trade-start" in captured.err
    lines = captured.out.splitlines()
    header = next(line for line in lines if "annual_return" in line)
    assert header.split() == [
        "annual_return",
        "annual_volatility",
        "sharpe",
        "sortino",
        "max_drawdown",
        "calmar",
        "turnover",
    ]
    assert any(line.startswith("min_variance") for line in lines)
    assert "Sharpe ratio vs equal_weight" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["equal_weight", "min_variance", "mean_variance"]
    returns = pd.read_csv(out / "returns.csv", index_col=0, parse_dates=True)
    assert list(returns.columns) == list(metrics) and returns.index[0] > pd.Timestamp("2021-03-01")
    for name in metrics:
        assert (out / "weights" / f"{name}.csv").is_file()
    config = (out / "config.toml").read_text()
    assert "lookback = 60" in config and 'start = "2021-01-01"' in config and "risk_aversion = 5.0" in config
    assert "trade_start" not in config
    assert (out / "report.html").stat().st_size > 10_000


def test_config_file_and_flags_override(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'prices = "sp500"\nstrategies = ["equal_weight", "inverse_volatility"]\nlookback = 30\n'
        "cost_bps = 50.0\nmax_weight = 0.5\n"
    )
    out = tmp_path / "run"
    code = main(
        [
            "backtest",
            "--config",
            str(cfg),
            *SMALL,
            "--cost-bps",
            "0",
            "--max-weight",
            "none",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    text = (out / "config.toml").read_text()
    assert "cost_bps = 0.0" in text and "lookback = 60" in text and "max_weight" not in text


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--strategies", "nope"], "unknown strategy 'nope'"),
        (["--lookback", "100000"], "too few rows"),
        (["--max-weight", "0.01"], "cannot be fully invested"),
        (["--max-weight", "abc"], "--max-weight must be a number"),
        (["--prices", "missing.csv"], "nor an existing CSV file"),
        (["--start", "2030-01-01"], "no rows between"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, capsys, args, match):
    code = main(["backtest", *SMALL, "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    message = err[err.index("error: ") :]
    assert match in " ".join(message.split()) and message.count("\n\n") == 0
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_numerical_failure_in_a_strategy_is_one_paragraph_and_exit_1(tmp_path, monkeypatch, capsys):
    import portfolio_layers.registry as registry

    class Broken:
        name = "equal_weight"

        def fit(self, prices):
            pass

        def weights(self, prices, current):
            raise RuntimeError("linalg.svd: The algorithm failed to converge\nsecond line of detail")

    monkeypatch.setattr(registry, "build_strategy", lambda name, config, periods_per_year=None: Broken())
    out = tmp_path / "x"
    code = main(["backtest", *SMALL, "--strategies", "equal_weight", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and "second line" not in err
    assert "error: strategy 'equal_weight' failed while choosing weights on 2021-" in " ".join(err.split())
    assert "checkpoint_dir" in err and not out.exists()


def test_unknown_config_key_via_entry_point(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("lookback = 60\nrebalanse = 5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "portfolio_layers.cli", "backtest", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown key(s) ['rebalanse']" in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


def test_data_download_fills_the_cache(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(tickers, start=None, end=None, **kwargs):
        calls.append(tickers)
        idx = pd.date_range(start, end, freq="B", inclusive="left")
        cols = pd.MultiIndex.from_product([["Close", "Open"], tickers], names=["Price", "Ticker"])
        return pd.DataFrame(100.0, index=idx, columns=cols)

    monkeypatch.setattr(yfinance, "download", fake)
    args = [
        "data",
        "download",
        "AAPL,MSFT",
        "--start",
        "2021-01-04",
        "--end",
        "2021-03-01",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--csv",
        str(tmp_path / "p.csv"),
    ]
    assert main(args) == 0
    assert main(args) == 0  # second time from the cache
    out = capsys.readouterr().out
    assert len(calls) == 1 and "cached in" in out
    prices = pd.read_csv(tmp_path / "p.csv", index_col=0)
    assert list(prices.columns) == ["AAPL", "MSFT"]


def test_data_download_offline_message(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(yfinance, "download", offline)
    code = main(
        [
            "data",
            "download",
            "AAPL",
            "--start",
            "2021-01-04",
            "--end",
            "2021-03-01",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "not cached" in err and "sp500" in err and "Traceback" not in err
