"""A small study on a short slice of the embedded data, run once per test module in this process."""

from __future__ import annotations

import shutil

import pytest
import torch

from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.study.runner import run_study

#: Six months of trading (2020-06 to 2020-12) after a year of history; the learned strategy is small and
#: fitted once.
SMALL = BacktestConfig(
    start="2019-01-01",
    end="2020-12-31",
    trade_start="2020-06-01",
    strategies=("equal_weight", "e2e"),
    lookback=252,
    retrain_every=1000,
    train_window=300,
    benchmark="equal_weight",
    params={"e2e": {"d_model": 4, "window": 20, "cov_window": 60}},
)


class SerialExecutor:
    """Runs the tasks one after another in this process (torch's thread count restored afterwards)."""

    returns_results = False

    def map_unordered(self, fn, tasks):
        threads = torch.get_num_threads()
        try:
            for task in tasks:
                yield task, fn(task)
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """The study of SMALL with seeds 0 and 1, run serially: (outcome, folder)."""
    out = tmp_path_factory.mktemp("study")
    outcome = run_study(SMALL, [0, 1], SerialExecutor(), out, progress=False)
    assert not outcome.failed, [o.error for o in outcome.failed]
    return outcome, out


@pytest.fixture
def study_copy(small_study, tmp_path):
    """A copy of the small study's folder that a test may change."""
    _, out = small_study
    return shutil.copytree(out, tmp_path / "study")
