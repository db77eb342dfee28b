"""A run folder always holds exactly one complete run: fresh sibling + rename, refusal of non-empty folders,
--overwrite replaces only what the package wrote, a failure mid-way leaves the old run."""

from __future__ import annotations

import json

import pytest

from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.backtest import output as output_module
from portfolio_layers.backtest.output import MANIFEST, check_out_dir, save_result
from portfolio_layers.cli import main
from portfolio_layers.data import load_prices
from portfolio_layers.errors import ConfigError
from portfolio_layers.registry import build_strategies


def _run(*strategies: str):
    prices = load_prices("sp500", start="2021-06-01").iloc[:, :5]
    config = BacktestConfig(lookback=40, rebalance=21, strategies=strategies)
    return run_backtest(prices, build_strategies(config), config)


@pytest.fixture(scope="module")
def three():
    return _run("equal_weight", "min_variance", "mean_variance")


@pytest.fixture(scope="module")
def two():
    return _run("equal_weight", "inverse_volatility")


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _siblings(folder) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_the_manifest_lists_every_file_of_the_run(tmp_path, three):
    out = save_result(three, tmp_path / "run")
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(_files(out)) == sorted([*listed, MANIFEST])
    assert "weights/mean_variance.csv" in listed and "sharpe_tests.csv" in listed
    assert _siblings(out) == []  # no staging folder left


def test_a_non_empty_folder_is_refused_unless_overwrite(tmp_path, three, two):
    out = save_result(three, tmp_path / "run")
    before = _files(out)
    with pytest.raises(ConfigError, match="is not empty; pass --overwrite"):
        save_result(two, out)
    assert _files(out) == before
    save_result(two, out, overwrite=True)
    after = _files(out)
    # Exactly the second run: the first run's third strategy left no weights behind.
    assert "weights/mean_variance.csv" not in after and "weights/inverse_volatility.csv" in after
    assert sorted(after) == sorted([*json.loads(after[MANIFEST])["files"], MANIFEST])
    assert "inverse_volatility" in after["metrics.json"].decode()
    assert _siblings(out) == []


def test_an_empty_folder_is_taken(tmp_path, two):
    (tmp_path / "run").mkdir()
    save_result(two, tmp_path / "run")
    assert (tmp_path / "run" / MANIFEST).is_file()


@pytest.mark.parametrize(
    ("foreign", "named"),
    [("notes.txt", "notes.txt"), ("weights/mine.csv", "weights/mine.csv"), ("extra/a.txt", "extra")],
)
def test_overwrite_never_deletes_a_file_the_package_did_not_write(tmp_path, three, two, foreign, named):
    out = save_result(three, tmp_path / "run")
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("mine")
    before = _files(out)
    with pytest.raises(ConfigError, match=f"holds {named}, which this package did not write"):
        save_result(two, out, overwrite=True)
    assert _files(out) == before


def test_a_folder_without_manifest_is_refused_even_with_overwrite(tmp_path, two):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prices.csv").write_text("precious")
    with pytest.raises(ConfigError, match=f"has no {MANIFEST}"):
        save_result(two, tmp_path / "data", overwrite=True)
    assert (tmp_path / "data" / "prices.csv").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "file")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failure_during_the_save_leaves_the_old_run(tmp_path, monkeypatch, three, two, error):
    out = save_result(three, tmp_path / "run")
    before = _files(out)

    def failing(result, path):
        raise error

    monkeypatch.setattr(output_module, "write_report", failing)  # after the CSV files, before metrics.json
    with pytest.raises(type(error)):
        save_result(two, out, overwrite=True)
    assert _files(out) == before
    with pytest.raises(type(error)):
        save_result(two, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert _siblings(out) == []


def test_cli_refuses_a_run_folder_before_any_work_and_overwrites_on_request(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["backtest", "--start", "2021-06-01", "--lookback", "40", "--quiet"]
    args += ["--strategies", "equal_weight,min_variance"]
    assert main([*args, "--out", "run"]) == 0
    import portfolio_layers.backtest.engine as engine

    def no_work(*a, **k):
        raise AssertionError("the run started")

    monkeypatch.setattr(engine, "run_backtest", no_work)
    code = main([*args, "--out", "run"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "pass --overwrite" in err and "choose another folder" in err
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--strategies", "equal_weight", "--out", "run", "--overwrite"]) == 0
    assert not (tmp_path / "run" / "weights" / "min_variance.csv").exists()
    # Without --out: a new folder under backtests/results/ each time.
    assert main(args) == 0 and main(args) == 0
    runs = sorted((tmp_path / "backtests" / "results").iterdir())
    assert len(runs) == 2 and all((run / MANIFEST).is_file() for run in runs)
