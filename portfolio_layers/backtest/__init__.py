"""Walk-forward backtests: configuration, schedule, engine, strategies, metrics, report.

Prices in, net daily returns and weights out; see :mod:`portfolio_layers.backtest.engine` for the protocol.
Strategies are built by name in :mod:`portfolio_layers.registry`; the results are written by
:func:`~portfolio_layers.backtest.output.save_result` (files and report).
"""

from __future__ import annotations

from portfolio_layers.backtest.config import BacktestConfig, default_config
from portfolio_layers.backtest.engine import run_backtest
from portfolio_layers.backtest.metrics import METRIC_NAMES, compute_metrics
from portfolio_layers.backtest.result import BacktestResult
from portfolio_layers.backtest.sharpe_tests import SharpeTest, sharpe_difference_test
from portfolio_layers.backtest.splits import Step, walk_forward
from portfolio_layers.backtest.strategies import Strategy

__all__ = [
    "METRIC_NAMES",
    "BacktestConfig",
    "BacktestResult",
    "SharpeTest",
    "Step",
    "Strategy",
    "compute_metrics",
    "default_config",
    "run_backtest",
    "sharpe_difference_test",
    "walk_forward",
]
