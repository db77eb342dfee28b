"""The outcome of a walk-forward backtest, read by the engine, the writer and the report.

:class:`BacktestResult` holds the returns, weights, turnover and metrics of every strategy of a run and
derives wealth, drawdowns and Sharpe-difference tests (Jobson-Korkie beside Ledoit-Wolf) from the returns; it
writes nothing (see :mod:`~portfolio_layers.backtest.output` and :mod:`~portfolio_layers.backtest.report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.backtest.metrics import drawdowns
from portfolio_layers.backtest.sharpe_tests import (
    DEFAULT_BLOCK_LENGTH,
    DEFAULT_N_BOOT,
    MIN_OBS_LEDOIT_WOLF,
    sharpe_difference_test,
)
from portfolio_layers.errors import ConfigError

#: Columns of :meth:`BacktestResult.sharpe_tests`: Jobson-Korkie (``z``, ``p_value``) and Ledoit-Wolf
#: studentized circular block bootstrap (``z_lw``, ``p_value_lw``, ``lw_settings``).
SHARPE_TEST_COLUMNS = ("sharpe", "sharpe_difference", "z", "p_value", "z_lw", "p_value_lw", "lw_settings")


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
    _sharpe_tests: dict[tuple[Any, ...], pd.DataFrame] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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

    def sharpe_tests(
        self,
        benchmark: str | None = None,
        *,
        block_length: int = DEFAULT_BLOCK_LENGTH,
        n_boot: int = DEFAULT_N_BOOT,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Sharpe-difference tests of each strategy vs ``benchmark``: Jobson-Korkie and Ledoit-Wolf.

        ``z``/``p_value``: Jobson-Korkie with Memmel's correction (iid normal returns).
        ``z_lw``/``p_value_lw``: Ledoit & Wolf (2008), the HAC-studentized statistic with the p-value of the
        studentized circular block bootstrap, valid for heavy-tailed and autocorrelated returns;
        ``lw_settings`` says how it ran (block length, resamples, seed, HAC bandwidth). A pair with fewer than
        ``max(MIN_OBS_LEDOIT_WOLF, 2 * block_length)`` returns gets NaN there. See
        :func:`~portfolio_layers.backtest.sharpe_tests.sharpe_difference_test`.

        Parameters
        ----------
        benchmark : str, optional
            A strategy of this result; default ``config.benchmark``.
        block_length : int
            Bootstrap block length (default 5, a week of daily returns).
        n_boot : int
            Bootstrap resamples (default 4999: p-values resolve to 1/5000).
        seed : int
            Seed of the bootstrap (the same seed gives the same p-values).

        Returns
        -------
        DataFrame of shape (S - 1, 7)
            Index strategy, columns :data:`SHARPE_TEST_COLUMNS` (``sharpe``, ``sharpe_difference``, ``z``,
            ``p_value``, ``z_lw``, ``p_value_lw``, ``lw_settings``); Sharpe ratios annualised with
            :attr:`periods_per_year`.
        """
        benchmark = benchmark or self.config.benchmark
        if benchmark not in self.returns.columns:
            raise ConfigError(
                f"benchmark {benchmark!r} is not among the strategies {self.strategies}; choose one of them."
            )
        key = (benchmark, block_length, n_boot, seed)
        if key not in self._sharpe_tests:
            self._sharpe_tests[key] = self._compute_sharpe_tests(benchmark, block_length, n_boot, seed)
        return self._sharpe_tests[key].copy()

    def _compute_sharpe_tests(
        self, benchmark: str, block_length: int, n_boot: int, seed: int
    ) -> pd.DataFrame:
        bench = self.returns[benchmark]
        rows = {}
        for name in self.strategies:
            if name == benchmark:
                continue
            jk = sharpe_difference_test(self.returns[name], bench, self.periods_per_year)
            needed = max(MIN_OBS_LEDOIT_WOLF, 2 * block_length)
            if jk.n_obs >= needed:
                lw = sharpe_difference_test(
                    self.returns[name],
                    bench,
                    self.periods_per_year,
                    method="ledoit_wolf_bootstrap",
                    block_length=block_length,
                    n_boot=n_boot,
                    seed=seed,
                )
                z_lw, p_lw, settings = lw.z, lw.p_value, lw.settings
            else:
                z_lw, p_lw = float("nan"), float("nan")
                settings = f"not computed: {jk.n_obs} paired returns, at least {needed} needed"
            rows[name] = (jk.sharpe_a, jk.difference, jk.z, jk.p_value, z_lw, p_lw, settings)
        return pd.DataFrame.from_dict(rows, orient="index", columns=list(SHARPE_TEST_COLUMNS))


__all__ = ["SHARPE_TEST_COLUMNS", "BacktestResult"]
