"""Walk-forward backtests: configuration, schedule, engine, strategies, metrics, report.

Prices in, net daily returns and weights out; see :mod:`portfolio_layers.backtest.engine` for the protocol.
"""

from __future__ import annotations

from portfolio_layers.backtest.config import BacktestConfig, default_config
from portfolio_layers.backtest.engine import BacktestResult, build_strategy, run_backtest
from portfolio_layers.backtest.metrics import (
    METRIC_NAMES,
    SharpeTest,
    compute_metrics,
    sharpe_difference_test,
)
from portfolio_layers.backtest.splits import Step, walk_forward
from portfolio_layers.backtest.strategies import Strategy, available_strategies, make_strategy

__all__ = [
    "METRIC_NAMES",
    "BacktestConfig",
    "BacktestResult",
    "SharpeTest",
    "Step",
    "Strategy",
    "available_strategies",
    "build_strategy",
    "compute_metrics",
    "default_config",
    "make_strategy",
    "run_backtest",
    "sharpe_difference_test",
    "walk_forward",
]
