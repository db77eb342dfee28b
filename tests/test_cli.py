"""The command line end to end on a small slice of the embedded data (no network)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
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
    assert "z_lw" in captured.out and "p_value_lw" in captured.out
    assert "max_weight 0.25 from the built-in default run" in captured.out
    assert "frequency: daily (252 per year), inferred from the dates" in captured.out
    tests = pd.read_csv(out / "sharpe_tests.csv", index_col=0)
    assert list(tests.columns) == [
        "sharpe",
        "sharpe_difference",
        "z",
        "p_value",
        "z_lw",
        "p_value_lw",
        "lw_settings",
    ]
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
        (["--benchmark", "nope"], "benchmark 'nope' is not among the strategies run ['equal_weight', "),
        (["--strategies", "min_variance,mean_variance"], "benchmark 'equal_weight' is not among the"),
        (["--seed", "12345678901234567890"], "'seed' must be in [0, 4294967295]"),
        (["--periods-per-year", "0"], "'periods_per_year' must be a positive number"),
        (["--periods-per-year", "nan"], "'periods_per_year' must be a positive number"),
        (["--out", "."], "pass --overwrite"),
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


def test_no_benchmark_means_no_tests(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "backtest",
            *SMALL,
            "--strategies",
            "equal_weight,min_variance",
            "--benchmark",
            "",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Sharpe ratio vs" not in captured.out and not (out / "sharpe_tests.csv").exists()


def test_a_non_string_benchmark_in_the_config_is_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('strategies = ["equal_weight", "min_variance"]\nbenchmark = 3\n')
    code = main(["backtest", "--config", str(cfg), *SMALL, "--out", str(tmp_path / "x")])
    err = " ".join(capsys.readouterr().err.split())
    assert (
        code == 2
        and "'benchmark' must be the name of one of the strategies ['equal_weight', 'min_variance']" in err
    )


def _users_csv(path) -> None:
    idx = pd.bdate_range("2005-01-03", "2008-12-31")
    rng = np.random.default_rng(0)
    values = 100 * np.cumprod(1 + 0.01 * rng.standard_normal((len(idx), 4)), axis=0)
    pd.DataFrame(values, index=pd.Index(idx, name="date"), columns=list("ABCD")).to_csv(path)


def test_a_users_csv_keeps_its_own_dates_and_has_no_cap(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the built-in default run: sp500 from 2010, trading from 2013, 25% cap
    _users_csv(tmp_path / "mine.csv")
    args = ["backtest", "--prices", "mine.csv", "--strategies", "equal_weight,min_variance", "--quiet"]
    args += ["--lookback", "60"]
    assert main([*args, "--out", "run"]) == 0
    captured = capsys.readouterr()
    err, header = " ".join(captured.err.split()), captured.out
    assert "start 2010-01-01, trade_start 2013-01-01, max_weight 0.25 describe that data" in err
    assert "mine.csv: 4 assets, prices 2005-01-03 to 2008-12-31 (all the dates of the data)" in header
    assert "trading from 2005-03-28 (trade_start not set: row lookback 60)" in header
    assert "cap: none (max_weight not set)" in header
    returns = pd.read_csv(tmp_path / "run" / "returns.csv", index_col=0, parse_dates=True)
    assert returns.index[0] == pd.Timestamp("2005-03-29")
    config = (tmp_path / "run" / "config.toml").read_text()
    assert "start" not in config and "max_weight" not in config
    # Flags set them again, and the header says so.
    assert main([*args, "--start", "2006-01-02", "--max-weight", "0.5", "--out", "run2"]) == 0
    header = capsys.readouterr().out
    assert (
        "(start 2006-01-02 from --start)" in header
        and "0.5 per asset (max_weight 0.5 from --max-weight)" in header
    )


def test_a_toml_file_that_is_not_utf8_is_exit_2_naming_it(tmp_path, capsys):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes("# café\nlookback = 60\n".encode("latin-1"))
    code = main(["backtest", "--config", str(cfg), "--out", str(tmp_path / "x")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err and "latin1.toml is not UTF-8 text" in err


@pytest.mark.parametrize(
    ("table", "named"),
    [("[params.e2e]\nseed = 12345678901234567890", "seed"), ("[params.e2e.train]\nlr = nan", "lr")],
)
def test_a_bad_strategy_table_is_exit_2_before_the_run(tmp_path, monkeypatch, capsys, table, named):
    # The constructors validate their tables when the CLI builds the strategies, before the run.
    import portfolio_layers.backtest.engine as engine

    def no_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(engine, "run_backtest", no_run)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'strategies = ["equal_weight", "e2e"]\n{table}\n')
    code = main(["backtest", "--config", str(cfg), *SMALL, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and named in err, err


def test_help_lists_the_strategies_and_the_defaults(capsys):
    from portfolio_layers.registry import available_strategies

    with pytest.raises(SystemExit) as info:
        main(["backtest", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in available_strategies())
    assert (
        "TOML config (default: backtests/configs/default.toml if present in the current folder, else" in text
    )
    for default in (
        "(default: 252)",
        "(default: 21)",
        "(default: 10)",
        "(default: rolling)",
        "(default: raise)",
    ):
        assert default in text
    assert "(default: 0.25 on sp500, none on other data)" in text
    assert "(default: inferred from the dates" in text


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


def _weekly_features(path, start="2020-06-05", end="2022-12-30") -> None:
    index = pd.date_range(start, end, freq="W-FRI")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(len(index), 2)), index=index, columns=["mkt", "rate"])
    frame.to_csv(path, index_label="date")


def test_features_are_named_in_the_header_and_recorded(tmp_path, capsys):
    features = tmp_path / "factors.csv"
    _weekly_features(features)
    base = ["backtest", *SMALL, "--strategies", "equal_weight,inverse_volatility"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    plain = capsys.readouterr().out
    assert "features:" not in plain
    code = main([*base, "--features", str(features), "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"features: {features}, 2 column(s) (mkt, rate)" in captured.out
    assert "latest row dated on or before t" in captured.out
    # Classical strategies ignore the features: the same table.
    table = plain[plain.index("annual_return") :]
    assert captured.out[captured.out.index("annual_return") :] == table
    config = (tmp_path / "run" / "config.toml").read_text()
    assert f"features = {json.dumps(str(features))}" in config
    # --features none drops the features of a config file.
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'features = {json.dumps(str(features))}\nstrategies = ["equal_weight"]\n')
    code = main(
        ["backtest", "--config", str(cfg), *SMALL, "--features", "none", "--out", str(tmp_path / "n")]
    )
    assert code == 0 and "features:" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "not found"),
        ("date,mkt\n2020-01-03,1\n2020-01-10,x\n", "column 'mkt' holds non-numeric values"),
        ("date,mkt,mkt\n2020-01-03,1,2\n", "['mkt'] appear more than once"),
        (
            "date,mkt\n2020-01-03,1\n2020-01-10,\n2020-01-17,2\n",
            "'mkt' has 1 missing value(s), the first on 2020-01-10",
        ),
        ("date,mkt\n2023-01-06,1\n2023-01-13,2\n", "has no feature row dated on or before it"),
    ],
    ids=["missing", "non-numeric", "duplicate-column", "nan-hole", "no-overlap"],
)
def test_bad_feature_files_are_exit_2_naming_the_file(tmp_path, capsys, text, match):
    path = tmp_path / "feat.csv"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    args = ["backtest", *SMALL, "--strategies", "equal_weight", "--features", str(path)]
    code = main([*args, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    message = " ".join(err[err.index("error: ") :].split())
    assert match in message and "feat.csv" in message
    assert not (tmp_path / "x" / "metrics.json").exists()
