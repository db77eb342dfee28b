"""The walk-forward engine: one generic loop for every strategy (see :mod:`portfolio_layers.backtest.splits`).

Protocol, for price rows ``0 .. T-1`` with simple returns ``R[s] = p[s] / p[s-1] - 1``:

1. At each rebalance row t (``t0, t0+k, ...`` with ``t0 = L``, or the first row on or after
   ``config.trade_start`` when that is later) a learning strategy is first re-trained when due
   (``fit(prices[train])``, rows ending at t), then ``weights(prices[t-L .. t], h^-)`` gives the target
   ``w_t``; ``h^-`` are the drifted weights just before the trade (zeros before the first trade).
2. Turnover ``tau_t = sum_i |w_t,i - h^-_i|`` costs ``c_t = cost_bps / 1e4 * tau_t``, subtracted from the
   return of row t+1.
3. From ``h[t] = w_t`` the weights drift: ``r[s] = sum_i h[s-1,i] R[s,i]``,
   ``h[s,i] = h[s-1,i] (1 + R[s,i]) / (1 + r[s])`` until the next rebalance.

Strategies only ever receive ``prices.iloc[view]`` or ``prices.iloc[train]``, slices that end at row t.
With exogenous features (``run_backtest(..., features=...)`` or ``config.features``), the engine aligns them
once to the price dates from the past only (:func:`~portfolio_layers.data.exogenous.align_features`: row t
holds the latest feature row dated on or before date t), checks that they cover the decisions
(:func:`~portfolio_layers.data.exogenous.check_coverage`), and hands every strategy the same rows as its
prices: ``fit(prices.iloc[train], features=F.iloc[train])``, ``weights(prices.iloc[view], h, features=
F.iloc[view])``. Without features the calls are ``fit(prices)`` and ``weights(prices, h)``.
Metrics and Sharpe tests annualise with the periods per year of the prices used (:func:`prepare_prices`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.backtest.metrics import METRIC_NAMES, compute_metrics
from portfolio_layers.backtest.result import BacktestResult
from portfolio_layers.backtest.splits import Step, walk_forward
from portfolio_layers.backtest.strategies import Strategy
from portfolio_layers.data.exogenous import align_features, check_coverage, load_features
from portfolio_layers.data.frequency import resolve_periods_per_year
from portfolio_layers.data.loaders import slice_dates
from portfolio_layers.data.validation import validate_prices
from portfolio_layers.errors import ConfigError, DataError, InputError, PortfolioLayersError, StrategyError

logger = logging.getLogger(__name__)

#: Largest accepted ``|sum(w) - 1|`` of the weights a strategy returns (they are then divided by their sum).
SUM_TOLERANCE = 1e-4


def _check_weights(w: Any, n: int, name: str, date: pd.Timestamp) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,):
        raise InputError(
            f"strategy {name!r} returned weights of shape {w.shape} on {date.date()}; expected ({n},)."
        )
    if not np.isfinite(w).all():
        raise InputError(f"strategy {name!r} returned non-finite weights on {date.date()}.")
    if abs(w.sum() - 1.0) > SUM_TOLERANCE:
        raise InputError(
            f"strategy {name!r} returned weights summing to {w.sum():.6g} on {date.date()}; they must "
            "sum to 1 "
            f"(within {SUM_TOLERANCE:g})."
        )
    return w / w.sum()


def _call(strategy: Strategy, doing: str, date: pd.Timestamp, method: Any, *args: Any, **kwargs: Any) -> Any:
    """``method(*args, **kwargs)``, with the strategy and date added to any error it raises.

    Our own errors keep their type and get a note; anything else (a numerical failure inside a model, a bug)
    becomes a :class:`StrategyError` whose message names the strategy, the step and the date.
    """
    where = f"strategy {strategy.name!r} failed while {doing} {date:%Y-%m-%d}"
    try:
        return method(*args, **kwargs)
    except PortfolioLayersError as exc:
        exc.add_note(f"({where}.)")
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise StrategyError(
            f"{where}: {type(exc).__name__}: {detail}. The run stopped there and wrote nothing. For a "
            "learned strategy, set checkpoint_dir in its [params.<strategy>] table so that a rerun resumes "
            "from its last completed fit, or try another seed or a smaller learning rate."
        ) from exc


def _simulate(
    strategy: Strategy,
    prices: pd.DataFrame,
    R: np.ndarray,
    steps: list[Step],
    cost_bps: float,
    progress: bool,
    features: pd.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run one strategy through the schedule.

    ``features`` (T, d), aligned with ``prices``, are sliced like them and passed as ``features=``; without
    them the strategy is called with prices only. Returns gross and net returns (T,) (NaN before row L+1),
    weights (K, n) and turnover (K,).
    """
    T, n = R.shape
    gross = np.full(T, np.nan)
    W = np.zeros((len(steps), n))
    tau = np.zeros(len(steps))
    h = np.zeros(n)
    bar = tqdm(steps, desc=strategy.name, unit="rebalance", disable=not progress, file=sys.stderr, leave=True)
    for i, step in enumerate(bar):
        date = prices.index[step.t]
        view_kw = {} if features is None else {"features": features.iloc[step.view]}
        if step.train is not None:
            fit_kw = {} if features is None else {"features": features.iloc[step.train]}
            _call(
                strategy, "fitting on the prices up to", date, strategy.fit, prices.iloc[step.train], **fit_kw
            )
        w = _call(
            strategy,
            "choosing weights on",
            date,
            strategy.weights,
            prices.iloc[step.view],
            h.copy(),
            **view_kw,
        )
        w = _check_weights(w, n, strategy.name, date)
        W[i], tau[i] = w, np.abs(w - h).sum()
        h = w.copy()
        for s in range(step.hold.start, step.hold.stop):
            r = float(h @ R[s])
            if r <= -1.0:
                raise InputError(
                    f"strategy {strategy.name!r} lost all its wealth on {prices.index[s].date()}."
                )
            gross[s] = r
            h = h * (1.0 + R[s]) / (1.0 + r)
    net = gross.copy()
    for step, t_i in zip(steps, tau, strict=True):
        net[step.t + 1] -= cost_bps / 1e4 * t_i
    return gross, net, W, tau


def _first_row(index: pd.DatetimeIndex, trade_start: str | None) -> int | None:
    """Position of the first date ``>= trade_start`` (None when trading may start at row L)."""
    if trade_start is None:
        return None
    try:
        when = pd.Timestamp(trade_start)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"trade_start={trade_start!r} is not a date; use the form 2015-01-31.") from exc
    return int(index.searchsorted(when, side="left"))


def _aligned_features(
    features: pd.DataFrame | str | os.PathLike[str], index: pd.DatetimeIndex, decisions: pd.DatetimeIndex
) -> pd.DataFrame:
    """Checked features aligned with the price dates ``index`` (T, d), covering the ``decisions``."""
    label = "features" if isinstance(features, pd.DataFrame) else f"feature file {os.fspath(features)}"
    table = load_features(features)
    check_coverage(table, decisions[0], decisions[-1], label)
    return align_features(table, index)


def prepare_prices(prices: pd.DataFrame, config: BacktestConfig) -> tuple[pd.DataFrame, int | float]:
    """The prices a run of ``config`` uses, and their periods per year.

    Parameters
    ----------
    prices : DataFrame of shape (T, n)
        Prices, dates as index, one column per asset.
    config : BacktestConfig
        Its ``missing`` policy, ``start``/``end`` and ``periods_per_year`` are used.

    Returns
    -------
    prices : DataFrame of shape (T', n)
        Validated and sliced to ``config.start .. config.end``.
    periods_per_year : int or float
        ``config.periods_per_year`` when set, else inferred from the dates of the sliced prices.

    Raises
    ------
    DataError
        Bad prices, too few rows, or no clear frequency in the dates while ``periods_per_year`` is not set.
    """
    prices = validate_prices(prices, missing=config.missing)
    prices = slice_dates(prices, start=config.start, end=config.end, min_rows=config.lookback + 2)
    try:
        periods = resolve_periods_per_year(prices.index, config.periods_per_year)
    except DataError as exc:
        exc.add_note("(Set the config key periods_per_year, or --periods-per-year on the command line.)")
        raise
    return prices, periods


def run_backtest(
    prices: pd.DataFrame,
    strategies: Sequence[Strategy],
    config: BacktestConfig | None = None,
    features: pd.DataFrame | str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
) -> BacktestResult:
    """Walk-forward backtest of several strategies on the same prices and schedule.

    Parameters
    ----------
    prices : DataFrame of shape (T, n)
        Prices (not returns), dates as index, one column per asset; sliced to ``config.start .. config.end``
        (:func:`prepare_prices`, which also gives the periods per year of the metrics).
    strategies : sequence of Strategy
        The strategy objects to run, with unique names (build them from ``config`` with
        :func:`portfolio_layers.registry.build_strategies`).
    config : BacktestConfig, optional
        Protocol parameters; default ``BacktestConfig()``. The result's config lists the strategies
        actually run (:meth:`BacktestConfig.with_strategies`).
    features : DataFrame of shape (T_f, d), str or path-like, optional
        Exogenous market-level features (dates as index, one column per feature) or the path of their CSV
        file (:func:`~portfolio_layers.data.exogenous.load_features`); default ``config.features`` (None:
        no features). They are aligned to the price dates from the past only, must cover the decisions
        (a feature row dated on or before the first rebalance date, none missing until the last) and are
        passed to every strategy, sliced like the prices (see the module docstring).
    progress : bool
        Show one progress bar per strategy on stderr.

    Returns
    -------
    BacktestResult

    Raises
    ------
    DataError
        Bad prices or features, or features that do not cover the decisions.
    """
    config = config or BacktestConfig()
    prices, periods = prepare_prices(prices, config)
    if features is None:
        features = config.features
    strategies = list(strategies)
    for item in strategies:
        if not isinstance(item, Strategy):
            raise ConfigError(
                f"run_backtest takes strategy objects, got {item!r}; build them by name with "
                "portfolio_layers.registry.make_strategy or build_strategies(config)."
            )
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ConfigError(f"strategy names must be unique, got {names}.")
    config = config.with_strategies(names)  # record what actually runs (config.toml, report)
    P = prices.to_numpy()
    R = np.zeros_like(P)
    R[1:] = P[1:] / P[:-1] - 1.0
    steps = walk_forward(
        len(prices),
        config.lookback,
        config.rebalance,
        retrain_every=config.retrain_every,
        train_window=config.train_window,
        window=config.window,
        first_row=_first_row(prices.index, config.trade_start),
    )
    dates = prices.index[[s.t for s in steps]]
    aligned = None if features is None else _aligned_features(features, prices.index, dates)
    t0 = steps[0].t
    held = prices.index[t0 + 1 :]
    returns, gross_returns, turnover, weights, metrics, diagnostics, seconds = {}, {}, {}, {}, {}, {}, {}
    for strategy in strategies:
        tic = time.perf_counter()
        gross, net, W, tau = _simulate(strategy, prices, R, steps, config.cost_bps, progress, aligned)
        seconds[strategy.name] = time.perf_counter() - tic
        logger.info("%s: %d rebalances in %.1fs", strategy.name, len(steps), seconds[strategy.name])
        returns[strategy.name] = net[t0 + 1 :]
        gross_returns[strategy.name] = gross[t0 + 1 :]
        turnover[strategy.name] = tau
        weights[strategy.name] = pd.DataFrame(W, index=dates, columns=prices.columns)
        metrics[strategy.name] = compute_metrics(returns[strategy.name], tau, periods)
        diag = getattr(strategy, "diagnostics", None)
        if callable(diag):
            diagnostics[strategy.name] = dict(diag())
    return BacktestResult(
        returns=pd.DataFrame(returns, index=held),
        gross_returns=pd.DataFrame(gross_returns, index=held),
        weights=weights,
        turnover=pd.DataFrame(turnover, index=dates),
        metrics=pd.DataFrame.from_dict(metrics, orient="index", columns=list(METRIC_NAMES)),
        config=config,
        fit_dates=prices.index[[s.t for s in steps if s.train is not None]],
        periods_per_year=periods,
        diagnostics=diagnostics,
        seconds=seconds,
    )


__all__ = ["SUM_TOLERANCE", "prepare_prices", "run_backtest"]
