"""The outcome of a walk-forward backtest, read by the engine, the writer and the report.

:class:`BacktestResult` holds the returns, weights, turnover and metrics of every strategy of a run and
derives wealth, drawdowns and Sharpe-difference tests from the returns; it writes nothing (see
:mod:`~portfolio_layers.backtest.output` and :mod:`~portfolio_layers.backtest.report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.backtest.metrics import drawdowns, sharpe_difference_test
from portfolio_layers.errors import ConfigError


@dataclass(frozen=True)
class BacktestResult:
    """Outcome of :func:`~portfolio_layers.backtest.engine.run_backtest`, one column (or key) per strategy.

    Attributes
    ----------
    returns : DataFrame of shape (N, S)
        Net returns (one per price row) of rows ``t0+1 .. T-1`` (dates as index), ``t0`` the first rebalance
        row (``L``, or the first row on or after ``config.trade_start`` if later).
    gross_returns : DataFrame of shape (N, S)
        Returns before costs.
    weights : dict of str to DataFrame of shape (K, n)
        Target weights ``w_t`` by rebalance date.
    turnover : DataFrame of shape (K, S)
        ``tau_t`` by rebalance date (the first one is the initial purchase from cash).
    metrics : DataFrame of shape (S, 7)
        Columns :data:`~portfolio_layers.backtest.metrics.METRIC_NAMES`.
    config : BacktestConfig
        The configuration that was run.
    fit_dates : DatetimeIndex
        Rebalance dates at which ``fit`` was called (the same for every strategy).
    periods_per_year : int or float
        Return periods per year ``A`` that annualised the metrics and Sharpe ratios:
        ``config.periods_per_year`` when set, else inferred from the dates of the prices
        (:func:`~portfolio_layers.data.frequency.resolve_periods_per_year`).
    diagnostics : dict of str to dict of str to DataFrame
        ``strategy.diagnostics()`` for the strategies that offer it.
    seconds : dict of str to float
        Wall time of each strategy's loop.
    """

    returns: pd.DataFrame
    gross_returns: pd.DataFrame
    weights: dict[str, pd.DataFrame]
    turnover: pd.DataFrame
    metrics: pd.DataFrame
    config: BacktestConfig
    fit_dates: pd.DatetimeIndex
    periods_per_year: int | float
    diagnostics: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        """Strategy names in run order."""
        return list(self.returns.columns)

    def wealth(self) -> pd.DataFrame:
        """Cumulative wealth ``cumprod(1 + r)`` of the net returns, shape (N, S), starting from 1."""
        return (1.0 + self.returns).cumprod()

    def drawdowns(self) -> pd.DataFrame:
        """Drawdown from the running peak of wealth, positive fractions, shape (N, S)."""
        return self.returns.apply(lambda col: pd.Series(drawdowns(col.to_numpy()), index=col.index))

    def sharpe_tests(self, benchmark: str | None = None) -> pd.DataFrame:
        """Sharpe-difference test (Jobson-Korkie with Memmel's correction) of each strategy vs ``benchmark``.

        Parameters
        ----------
        benchmark : str, optional
            A strategy of this result; default ``config.benchmark``.

        Returns
        -------
        DataFrame of shape (S - 1, 4)
            Index strategy, columns ``sharpe``, ``sharpe_difference``, ``z``, ``p_value``.
        """
        benchmark = benchmark or self.config.benchmark
        if benchmark not in self.returns.columns:
            raise ConfigError(f"benchmark {benchmark!r} is not among the strategies {self.strategies}.")
        rows = {}
        for name in self.strategies:
            if name == benchmark:
                continue
            test = sharpe_difference_test(self.returns[name], self.returns[benchmark], self.periods_per_year)
            rows[name] = {
                "sharpe": test.sharpe_a,
                "sharpe_difference": test.difference,
                "z": test.z,
                "p_value": test.p_value,
            }
        return pd.DataFrame.from_dict(
            rows, orient="index", columns=["sharpe", "sharpe_difference", "z", "p_value"]
        )


__all__ = ["BacktestResult"]
