"""The E2E-DRO reproduction script: the paper's score, and its quick mode end to end through the engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "backtests" / "e2edro" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("e2edro_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_geometric_sharpe_by_hand(run) -> None:
    r = np.array([0.01, -0.02, 0.03, 0.005])
    growth = np.prod(1 + r) ** (52 / 4) - 1
    assert run.geometric_sharpe(r) == pytest.approx(growth / (np.std(r) * np.sqrt(52)))
    assert run.geometric_sharpe(pd.Series([np.nan, *r])) == pytest.approx(run.geometric_sharpe(r))
    with pytest.raises(ValueError, match="at least 2"):
        run.geometric_sharpe([0.01])


def test_prices_compound_the_published_returns(run) -> None:
    prices = run.weekly_prices(run.REPO / "data" / "e2edro" / "asset_weekly.csv")
    returns = pd.read_csv(run.REPO / "data" / "e2edro" / "asset_weekly.csv", index_col=0, parse_dates=True)
    np.testing.assert_allclose(
        prices.pct_change().iloc[1:].to_numpy(), returns.iloc[1:].to_numpy(), atol=1e-12
    )


def test_quick_mode_runs_every_strategy_through_the_engine(run, tmp_path, capsys) -> None:
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    scores = pd.read_csv(tmp_path / "scores_seed0.csv")
    assert scores["strategy"].tolist() == ["equal_weight", "pto_nominal", "e2e_nominal", "e2e_dro"]
    assert (scores["weeks"] == 25).all() and (scores["first"] == "2012-07-13").all()
    assert np.isfinite(scores["score"]).all()
    fits = pd.read_csv(tmp_path / "diagnostics_seed0_e2e_dro_fits.csv")
    assert len(fits) == 2 and (fits["epochs"] == 2).all() and fits["delta"].notna().all()
    out = capsys.readouterr().out
    assert "| e2e_dro | 1 (0) |" in out and "1.30" in out


def test_quick_mode_of_the_deq_prediction_layers(run, tmp_path) -> None:
    config = run.HERE / "deq_family.toml"
    assert run.main(["--quick", "--config", str(config), "--seeds", "1", "--out", str(tmp_path)]) == 0
    scores = pd.read_csv(tmp_path / "scores_seed1.csv")
    assert scores["strategy"].tolist() == ["equal_weight", "e2e_nominal_deq", "e2e_dro_deq"]
    assert (scores["weeks"] == 25).all() and np.isfinite(scores["score"]).all()
    fits = pd.read_csv(tmp_path / "diagnostics_seed1_e2e_dro_deq_fits.csv")
    assert len(fits) == 2 and (fits["epochs"] == 2).all()
