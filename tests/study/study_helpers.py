"""The small study of the tests (a short slice of the embedded data), and an in-process executor."""

from __future__ import annotations

import torch

from portfolio_layers.backtest.config import BacktestConfig

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
