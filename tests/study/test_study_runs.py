"""Studies end to end: the summary by hand, resume, a failing task, the same runs on every executor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from study_helpers import SMALL, SerialExecutor

from portfolio_layers.backtest.metrics import METRIC_NAMES
from portfolio_layers.backtest.sharpe_tests import sharpe_difference_test
from portfolio_layers.errors import ConfigError
from portfolio_layers.study.executors import LocalExecutor, RayExecutor
from portfolio_layers.study.runner import run_study


def _metrics(folder, strategy):
    return json.loads((folder / "metrics.json").read_text())[strategy]


def test_summary_matches_a_hand_computation(small_study):
    outcome, out = small_study
    runs = out / "runs"
    a, b = (_metrics(runs / f"e2e-seed{s}", "e2e") for s in (0, 1))
    row = pd.read_csv(out / "summary.csv").set_index("strategy").loc["e2e"]
    assert row["seeds"] == 2
    for metric in METRIC_NAMES:
        assert row[f"{metric}_mean"] == pytest.approx((a[metric] + b[metric]) / 2, rel=1e-9)
        assert row[f"{metric}_std"] == pytest.approx(abs(a[metric] - b[metric]) / np.sqrt(2), rel=1e-9)
    differences, p_values = [], []
    for seed in (0, 1):
        mine = pd.read_csv(runs / f"e2e-seed{seed}" / "returns.csv", index_col=0)["e2e"]
        bench = pd.read_csv(runs / f"equal_weight-seed{seed}" / "returns.csv", index_col=0)["equal_weight"]
        assert mine.index.equals(bench.index)  # the benchmark ran on the same dates
        # the Sharpe difference is the difference of the two runs' own Sharpe ratios
        own = _metrics(runs / f"e2e-seed{seed}", "e2e")["sharpe"]
        bench_sharpe = _metrics(runs / f"equal_weight-seed{seed}", "equal_weight")["sharpe"]
        test = sharpe_difference_test(mine, bench, 252)
        assert test.difference == pytest.approx(own - bench_sharpe, rel=1e-6)
        differences.append(test.difference)
        p_values.append(test.p_value)
    assert row["sharpe_difference_mean"] == pytest.approx(np.mean(differences), rel=1e-9)
    assert (row["p_value_min"], row["p_value_max"]) == pytest.approx((min(p_values), max(p_values)))
    assert np.isfinite(row["val_loss_mean"])  # from the training diagnostics of the learned strategy
    bench_row = pd.read_csv(out / "summary.csv").set_index("strategy").loc["equal_weight"]
    assert bench_row["sharpe_std"] == 0.0 and bench_row["sharpe_difference_mean"] == 0.0
    text = (out / "summary.md").read_text()
    assert f"{row['sharpe_mean']:.3f} ± {row['sharpe_std']:.3f}" in text
    assert "e2e-seed0" in (out / "report.html").read_text()
    assert len(pd.read_csv(out / "runs.csv")) == 4


def test_resume_runs_only_the_missing_task(study_copy):
    runs = study_copy / "runs"
    before = pd.read_csv(study_copy / "runs.csv")
    shutil.rmtree(runs / "e2e-seed1")
    staging = runs / ".e2e-seed1.tmp-0badc0de"  # what a writer killed outright leaves behind
    staging.mkdir()
    (staging / "returns.csv").write_text("date,e2e\n")
    outcome = run_study(SMALL, [0, 1], SerialExecutor(), study_copy, progress=False)
    assert [o.run_id for o in outcome.outcomes] == ["e2e-seed1"]
    assert sorted(outcome.skipped) == ["e2e-seed0", "equal_weight-seed0", "equal_weight-seed1"]
    assert not staging.exists()
    pd.testing.assert_frame_equal(pd.read_csv(study_copy / "runs.csv"), before)


def test_a_run_of_another_configuration_is_refused(study_copy):
    changed = SMALL.override(cost_bps=25.0)
    with pytest.raises(ConfigError, match="another configuration"):
        run_study(changed, [0, 1], SerialExecutor(), study_copy, progress=False)


def test_a_failing_task_is_reported_and_the_others_finish(tmp_path):
    config = SMALL.override(params={"e2e": {"window": 5000}})  # no training sample: fails at the first fit
    outcome = run_study(config, [0], SerialExecutor(), tmp_path, progress=False)
    assert [o.run_id for o in outcome.failed] == ["e2e-seed0"]
    assert "DataError" in outcome.failed[0].error and "training" in outcome.failed[0].error
    assert (tmp_path / "runs" / "equal_weight-seed0" / "metrics.json").is_file()
    assert not (tmp_path / "runs" / "e2e-seed0").exists()
    assert "Traceback" in (tmp_path / "errors" / "e2e-seed0.txt").read_text()
    assert "- e2e-seed0" in (tmp_path / "summary.md").read_text()
    # fixed and started again, only the failed task runs, and its error file goes
    fixed = run_study(SMALL, [0], SerialExecutor(), tmp_path, progress=False)
    assert [o.run_id for o in fixed.outcomes] == ["e2e-seed0"] and not fixed.failed
    assert not (tmp_path / "errors" / "e2e-seed0.txt").exists()


def _same_runs(out, reference):
    numeric = [*METRIC_NAMES, "sharpe_difference", "p_value", "val_loss"]
    mine = pd.read_csv(out / "runs.csv").set_index("run_id").sort_index()[numeric]
    ref = pd.read_csv(reference / "runs.csv").set_index("run_id").sort_index()[numeric]
    pd.testing.assert_frame_equal(mine, ref, check_exact=True)


def test_local_pool_gives_the_same_runs(small_study, tmp_path):
    _, reference = small_study
    outcome = run_study(SMALL, [0, 1], LocalExecutor(2), tmp_path, progress=False)
    assert not outcome.failed and len(outcome.outcomes) == 4
    _same_runs(tmp_path, reference)


@pytest.mark.ray
def test_ray_gives_the_same_runs(small_study, tmp_path):
    pytest.importorskip("ray", reason='ray is not installed (pip install -e ".[ray]")')
    _, reference = small_study
    outcome = run_study(SMALL, [0, 1], RayExecutor(workers=2), tmp_path, progress=False)
    assert not outcome.failed and len(outcome.outcomes) == 4
    _same_runs(tmp_path, reference)


def test_grid_points_are_scored_on_validation_and_development(study_copy):
    grid = {"e2e": [{"d_model": 4}, {"d_model": 6, "train": {"lr": 0.001}}]}
    outcome = run_study(SMALL, [0], SerialExecutor(), study_copy, grid=grid, progress=False)
    assert outcome.skipped == ["equal_weight-seed0"]  # the benchmark run is shared with the earlier study
    assert len(outcome.outcomes) == 2 and not outcome.failed
    summary = pd.read_csv(study_copy / "summary.csv", keep_default_na=False)
    points = summary[summary["strategy"] == "e2e"]
    assert sorted(points["params"]) == ["d_model=4", "d_model=6, train.lr=0.001"]
    assert np.isfinite(points["val_loss_mean"].astype(float)).all()
    text = (study_copy / "summary.md").read_text()
    assert "## Grid search" in text and "never on a test period" in text
