"""Command line: ``portfolio-layers backtest ...``, ``study ...`` and ``data download ...``.

Errors end with a one-paragraph message on stderr and a non-zero exit status (2 for bad input or
configuration, 1 for anything else, 130 on Ctrl-C); progress bars go to stderr, the metrics table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from portfolio_layers.study.cli import add_study_parser, run_study_command

if TYPE_CHECKING:
    from portfolio_layers.backtest.config import BacktestConfig
    from portfolio_layers.backtest.result import BacktestResult

DEFAULT_CONFIG = Path("backtests") / "configs" / "default.toml"
DEFAULT_RESULTS = Path("backtests") / "results"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``epilog`` may be a function, called only when the help is shown.

    The backtest help lists the strategies of the registry, whose import (torch) would slow every command.
    """

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _strategies_epilog() -> str:
    from portfolio_layers.registry import available_strategies

    return (
        f"strategies: {', '.join(available_strategies())} (options of each in [params.NAME] tables of the "
        "config). The defaults above are those of the default run, on the embedded sp500 data; a config "
        "file's values replace them, and flags replace both. The run header says which start, trade start, "
        "cap and periods per year were used and where they came from."
    )


def _parser() -> argparse.ArgumentParser:
    from portfolio_layers.backtest.config import default_config

    d = default_config()
    parser = argparse.ArgumentParser(
        prog="portfolio-layers",
        description="Differentiable portfolio layers: walk-forward backtests and market data.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bt = sub.add_parser(
        "backtest",
        help="run a walk-forward backtest",
        description="Run a walk-forward backtest. Flags override the config file; without --config, "
        f"{DEFAULT_CONFIG} is used if it exists in the current folder, else the built-in default run (the "
        "same values).",
        epilog=_strategies_epilog,
    )
    bt.add_argument(
        "--config",
        type=Path,
        help=f"TOML config (default: {DEFAULT_CONFIG} if present in the current folder, else the built-in "
        "default run)",
    )
    bt.add_argument(
        "--prices",
        help=f"embedded dataset name or CSV path (default: {d.prices}); another source than the config's "
        "drops the config's start, end, trade start, cap and periods per year (they describe its data)",
    )
    bt.add_argument(
        "--features",
        help="CSV of exogenous market-level features (first column dates, one column per feature), given to "
        "every strategy beside the prices; a decision on date t sees the latest feature row dated on or "
        "before t. A relative path is read from the current folder; 'none' drops the config's "
        "(default: none)",
    )
    bt.add_argument(
        "--strategies",
        help=f"comma-separated strategy names, listed below (default: {','.join(d.strategies)})",
    )
    bt.add_argument(
        "--lookback", type=int, help=f"rows L seen by a strategy at each rebalance (default: {d.lookback})"
    )
    bt.add_argument("--rebalance", type=int, help=f"rows k between rebalances (default: {d.rebalance})")
    bt.add_argument(
        "--retrain-every",
        type=int,
        help=f"rows between re-trainings of learning strategies (default: {d.retrain_every})",
    )
    bt.add_argument(
        "--train-window", type=int, help=f"rows of the rolling training window (default: {d.train_window})"
    )
    bt.add_argument(
        "--window", choices=["rolling", "expanding"], help=f"training window type (default: {d.window})"
    )
    bt.add_argument(
        "--cost-bps",
        type=float,
        help=f"proportional cost in basis points of turnover (default: {d.cost_bps:g})",
    )
    bt.add_argument(
        "--max-weight",
        help=f"per-asset cap in (0, 1], or 'none' to remove the cap (default: {d.max_weight:g} on "
        f"{d.prices}, none on other data)",
    )
    bt.add_argument(
        "--start",
        help=f"first price date kept, YYYY-MM-DD (default: {d.start} on {d.prices}, the first date of "
        "other data)",
    )
    bt.add_argument("--end", help="last price date kept, YYYY-MM-DD (default: the last date of the data)")
    bt.add_argument(
        "--trade-start",
        help=f"first date a trade may happen; earlier rows are history only (default: {d.trade_start} on "
        f"{d.prices}, row --lookback of other data)",
    )
    bt.add_argument(
        "--periods-per-year",
        type=float,
        help="return periods per year used to annualise metrics, e.g. 252 daily, 52 weekly, 12 monthly "
        "(default: inferred from the dates; an irregular index needs it)",
    )
    bt.add_argument("--seed", type=int, help=f"seed passed to strategies that take one (default: {d.seed})")
    bt.add_argument(
        "--benchmark",
        help="strategy the others are tested against (Sharpe difference), one of the strategies run, or '' "
        f"for no tests (default: {d.benchmark})",
    )
    bt.add_argument(
        "--missing", choices=["raise", "ffill", "drop"], help=f"missing-price policy (default: {d.missing})"
    )
    bt.add_argument(
        "--out",
        type=Path,
        help=f"output folder, new or empty (default: {DEFAULT_RESULTS}/<UTC timestamp>/)",
    )
    bt.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (only a folder holding nothing but a run this package wrote)",
    )
    bt.add_argument("--quiet", action="store_true", help="no progress bars")

    add_study_parser(sub)

    data = sub.add_parser("data", help="market data", description="Market data commands.")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser(
        "download",
        help="download daily adjusted closes from Yahoo Finance into the cache",
        description="Download daily adjusted closes from Yahoo Finance into the on-disk cache (a cached "
        "request is not downloaded again), and optionally write them to a CSV usable with --prices.",
    )
    dl.add_argument("tickers", nargs="+", help="symbols, e.g. AAPL MSFT or AAPL,MSFT")
    dl.add_argument("--start", required=True, help="first date (YYYY-MM-DD)")
    dl.add_argument("--end", required=True, help="end date, exclusive (YYYY-MM-DD)")
    dl.add_argument(
        "--cache-dir", type=Path, help="cache folder (default $PORTFOLIO_LAYERS_CACHE or ~/.cache/...)"
    )
    dl.add_argument("--refresh", action="store_true", help="download again even if cached")
    dl.add_argument(
        "--missing", choices=["raise", "ffill", "drop"], default="raise", help="missing-price policy (raise)"
    )
    dl.add_argument("--csv", type=Path, help="also write the prices to this CSV file")
    return parser


def _resolve_config(args: argparse.Namespace) -> tuple[BacktestConfig, dict[str, str]]:
    """The config of the run, and where each value of its data keys comes from (for the run header)."""
    from portfolio_layers.backtest.config import DATA_KEYS, BacktestConfig, default_config
    from portfolio_layers.errors import ConfigError

    if args.config is not None:
        config = BacktestConfig.from_toml(args.config)
        source = f"config {args.config}"
    elif DEFAULT_CONFIG.is_file():
        config = BacktestConfig.from_toml(DEFAULT_CONFIG)
        source = f"config {DEFAULT_CONFIG}"
    else:
        print(f"note: {DEFAULT_CONFIG} not found here; using the built-in default run.", file=sys.stderr)
        config = default_config()
        source = "the built-in default run"
    if args.prices is not None and args.prices != config.prices:
        dropped = [f"{key} {getattr(config, key)}" for key in DATA_KEYS if getattr(config, key) is not None]
        if dropped:
            print(
                f"note: --prices {args.prices} replaces {config.prices} of {source}; its "
                f"{', '.join(dropped)} describe that data and are not used (give them as flags to set them).",
                file=sys.stderr,
            )
        config = config.with_prices(args.prices)
    if args.features is not None:
        features = None if args.features.lower() == "none" else args.features
        config = dataclasses.replace(config, features=features)
    changes = {
        "lookback": args.lookback,
        "rebalance": args.rebalance,
        "retrain_every": args.retrain_every,
        "train_window": args.train_window,
        "window": args.window,
        "cost_bps": args.cost_bps,
        "start": args.start,
        "end": args.end,
        "trade_start": args.trade_start,
        "seed": args.seed,
        "benchmark": args.benchmark,
        "missing": args.missing,
        "periods_per_year": args.periods_per_year,
    }
    if args.strategies is not None:
        config = config.with_strategies(s.strip() for s in args.strategies.split(",") if s.strip())
    if args.start is not None and args.trade_start is None and config.trade_start is not None:
        # A new period: trade from row L of it, not from the config's trade_start.
        print(
            f"note: --start given without --trade-start: trading starts {args.lookback or config.lookback} "
            f"rows after {args.start} (the config's trade_start {config.trade_start} is not used).",
            file=sys.stderr,
        )
        config = dataclasses.replace(config, trade_start=None)
    config = config.override(**changes)
    if args.max_weight is not None:
        if args.max_weight.lower() == "none":
            config = dataclasses.replace(config, max_weight=None)
        else:
            try:
                value = float(args.max_weight)
            except ValueError:
                raise ConfigError(
                    f"--max-weight must be a number in (0, 1] or 'none', got {args.max_weight!r}."
                ) from None
            config = dataclasses.replace(config, max_weight=value)
    flags = {key: f"--{key.replace('_', '-')}" for key in DATA_KEYS if getattr(args, key) is not None}
    origins = {key: flags.get(key, source) for key in DATA_KEYS}
    return config, origins


def _default_out() -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = DEFAULT_RESULTS / stamp
    i = 1
    while out.exists():
        out = DEFAULT_RESULTS / f"{stamp}-{i}"
        i += 1
    return out


def _format_table(frame: pd.DataFrame) -> str:
    return frame.to_string(float_format=lambda v: f"{v:.4f}", na_rep="n/a")


def _header(
    config: BacktestConfig,
    origins: dict[str, str],
    prices: pd.DataFrame,
    result: BacktestResult,
    features: pd.DataFrame | None = None,
) -> str:
    """The run header: data, dates, cap, frequency and features used, and where each setting came from."""
    from portfolio_layers.data.frequency import describe_frequency

    def origin(key: str, value: object) -> str:
        return f"{key} {value} from {origins[key]}"

    kept = [origin(key, getattr(config, key)) for key in ("start", "end") if getattr(config, key) is not None]
    r = result.returns
    trade = (
        origin("trade_start", config.trade_start)
        if config.trade_start is not None
        else f"trade_start not set: row lookback {config.lookback}"
    )
    cap = (
        f"{config.max_weight:g} per asset ({origin('max_weight', config.max_weight)})"
        if config.max_weight is not None
        else "none (max_weight not set)"
    )
    periods = result.periods_per_year
    words = describe_frequency(periods)
    frequency = f"{periods:g} per year" if words.endswith("per year") else f"{words} ({periods:g} per year)"
    how = (
        "inferred from the dates"
        if config.periods_per_year is None
        else f"set by {origins['periods_per_year']}"
    )
    lines = [
        f"{config.prices}: {prices.shape[1]} assets, prices {prices.index[0].date()} to "
        f"{prices.index[-1].date()} ({'; '.join(kept) or 'all the dates of the data'})",
        f"trading from {result.turnover.index[0].date()} ({trade}): {len(r)} net returns "
        f"{r.index[0].date()} to {r.index[-1].date()}, {len(result.turnover)} rebalances, lookback "
        f"{config.lookback}, rebalance {config.rebalance}, costs {config.cost_bps:g} bps",
        f"cap: {cap}",
        f"frequency: {frequency}, {how}",
    ]
    if features is not None:
        names = ", ".join(features.columns)
        lines.append(
            f"features: {config.features}, {features.shape[1]} column(s) ({names}), {len(features)} rows "
            f"{features.index[0].date()} to {features.index[-1].date()}; a decision on date t uses the "
            "latest row dated on or before t"
        )
    return "\n".join(lines)


def _backtest(args: argparse.Namespace) -> int:
    from portfolio_layers.backtest.engine import prepare_prices, run_backtest
    from portfolio_layers.backtest.output import check_out_dir, save_result
    from portfolio_layers.backtest.sharpe_tests import DEFAULT_BLOCK_LENGTH, DEFAULT_N_BOOT
    from portfolio_layers.data.exogenous import load_features
    from portfolio_layers.data.loaders import load_prices
    from portfolio_layers.registry import build_strategies, strategy_parameters

    tic = time.perf_counter()
    # Every check before any work: config, strategy names, benchmark, output folder, data and frequency,
    # then the strategies (their constructors validate their [params.NAME] tables).
    config, origins = _resolve_config(args)
    for name in config.strategies:
        strategy_parameters(name)  # an unknown name raises, listing the available ones
    config.check_benchmark()
    out = check_out_dir(args.out, args.overwrite) if args.out is not None else _default_out()
    prices = load_prices(config.prices, missing=config.missing)
    used, periods = prepare_prices(prices, config)
    features = None if config.features is None else load_features(config.features)  # checked early
    strategies = build_strategies(config, periods)
    # The engine reads config.features itself, so that its coverage errors name the file.
    result = run_backtest(prices, strategies, config, progress=not args.quiet)
    save_result(result, out, overwrite=args.overwrite)
    print(_header(config, origins, used, result, features))
    print(_format_table(result.metrics))
    if config.benchmark is not None and result.returns.shape[1] > 1:
        print(
            f"\nSharpe ratio vs {config.benchmark}: Jobson-Korkie/Memmel test (z, p_value; iid normal "
            "returns) and Ledoit-Wolf studentized circular block bootstrap (z_lw, p_value_lw; blocks of "
            f"{DEFAULT_BLOCK_LENGTH}, {DEFAULT_N_BOOT} resamples, seed 0):"
        )
        print(_format_table(result.sharpe_tests().drop(columns="lw_settings")))
    print(f"\nresults in {out} ({time.perf_counter() - tic:.1f}s)", file=sys.stderr)
    return 0


def _download(args: argparse.Namespace) -> int:
    from portfolio_layers.atomic import atomic_write_text
    from portfolio_layers.data.yahoo import cache_path, default_cache_dir, download_prices

    tickers = [t for arg in args.tickers for t in arg.replace(",", " ").split()]
    prices = download_prices(
        tickers, args.start, args.end, cache_dir=args.cache_dir, refresh=args.refresh, missing=args.missing
    )
    folder = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    start, end = pd.Timestamp(args.start).date().isoformat(), pd.Timestamp(args.end).date().isoformat()
    where = cache_path([t.upper() for t in tickers], start, end, Path(folder))
    print(
        f"{prices.shape[1]} tickers, {prices.shape[0]} rows from {prices.index[0].date()} to "
        f"{prices.index[-1].date()}; cached in {where}"
    )
    if args.csv is not None:
        atomic_write_text(args.csv, prices.to_csv(index_label="date"))
        print(f"written to {args.csv} (use --prices {args.csv})")
    return 0


def _fail(kind: str, exc: BaseException, status: int) -> int:
    message = " ".join(" ".join((str(exc), *getattr(exc, "__notes__", ()))).split()) or type(exc).__name__
    print(textwrap.fill(f"{kind}: {message}", width=100), file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``portfolio-layers``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from portfolio_layers.errors import PortfolioLayersError

    try:
        if args.command == "backtest":
            return _backtest(args)
        if args.command == "study":
            return run_study_command(args)
        return _download(args)
    except KeyboardInterrupt:
        print("interrupted; no file or run folder was left half-written.", file=sys.stderr)
        return 130
    except PortfolioLayersError as exc:
        # Bad input (every ValueError subclass, infeasible constraints included) -> 2; a failed solver -> 1.
        return _fail("error", exc, 2 if isinstance(exc, ValueError) else 1)
    except OSError as exc:
        return _fail("error (file system)", exc, 1)


if __name__ == "__main__":
    sys.exit(main())
