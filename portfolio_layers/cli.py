"""Command line: ``portfolio-layers backtest ...`` and ``portfolio-layers data download ...``.

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

import pandas as pd

DEFAULT_CONFIG = Path("backtests") / "configs" / "default.toml"
DEFAULT_RESULTS = Path("backtests") / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portfolio-layers",
        description="Differentiable portfolio layers: walk-forward backtests and market data.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    bt = sub.add_parser(
        "backtest",
        help="run a walk-forward backtest",
        description="Run a walk-forward backtest. Flags override the config file; without --config, "
        f"{DEFAULT_CONFIG} is used if it exists, else the built-in default run.",
    )
    bt.add_argument("--config", type=Path, help="TOML config (default: %(default)s if present)")
    bt.add_argument("--prices", help="embedded dataset name (sp500) or CSV path")
    bt.add_argument("--strategies", help="comma-separated strategy names, e.g. equal_weight,min_variance")
    bt.add_argument("--lookback", type=int, help="rows L seen by a strategy at each rebalance")
    bt.add_argument("--rebalance", type=int, help="rows k between rebalances")
    bt.add_argument("--retrain-every", type=int, help="rows between re-trainings of learning strategies")
    bt.add_argument("--train-window", type=int, help="rows of the rolling training window")
    bt.add_argument("--window", choices=["rolling", "expanding"], help="training window type")
    bt.add_argument("--cost-bps", type=float, help="proportional cost in basis points of turnover")
    bt.add_argument("--max-weight", help="per-asset cap in (0, 1], or 'none' to remove the cap")
    bt.add_argument("--start", help="first price date kept (YYYY-MM-DD)")
    bt.add_argument("--end", help="last price date kept (YYYY-MM-DD)")
    bt.add_argument("--trade-start", help="first date a trade may happen; earlier rows are history only")
    bt.add_argument("--seed", type=int, help="seed passed to strategies that take one")
    bt.add_argument("--benchmark", help="strategy the others are tested against (Sharpe difference)")
    bt.add_argument("--missing", choices=["raise", "ffill", "drop"], help="missing-price policy")
    bt.add_argument("--out", type=Path, help="output folder (default backtests/results/<UTC timestamp>/)")
    bt.add_argument("--quiet", action="store_true", help="no progress bars")

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


def _resolve_config(args: argparse.Namespace):
    from portfolio_layers.backtest.config import BacktestConfig, default_config
    from portfolio_layers.errors import ConfigError

    if args.config is not None:
        config = BacktestConfig.from_toml(args.config)
    elif DEFAULT_CONFIG.is_file():
        config = BacktestConfig.from_toml(DEFAULT_CONFIG)
    else:
        print(f"note: {DEFAULT_CONFIG} not found here; using the built-in default run.", file=sys.stderr)
        config = default_config()
    changes = {
        "prices": args.prices,
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
    return config


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


def _backtest(args: argparse.Namespace) -> int:
    from portfolio_layers.backtest.engine import run_backtest
    from portfolio_layers.backtest.output import save_result
    from portfolio_layers.data.loaders import load_prices
    from portfolio_layers.registry import build_strategies

    tic = time.perf_counter()
    config = _resolve_config(args)
    strategies = build_strategies(config)
    prices = load_prices(config.prices, missing=config.missing)
    result = run_backtest(prices, strategies, config, progress=not args.quiet)
    out = args.out if args.out is not None else _default_out()
    save_result(result, out)
    r = result.returns
    print(
        f"{config.prices}: {prices.shape[1]} assets, net daily returns {r.index[0].date()} to "
        f"{r.index[-1].date()} "
        f"({len(r)} days, {len(result.turnover)} rebalances, lookback {config.lookback}, rebalance "
        f"{config.rebalance}, costs {config.cost_bps:g} bps)"
    )
    print(_format_table(result.metrics))
    if config.benchmark in r.columns and r.shape[1] > 1:
        print(f"\nSharpe ratio vs {config.benchmark} (Jobson-Korkie/Memmel test):")
        print(_format_table(result.sharpe_tests()))
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
        return _download(args)
    except KeyboardInterrupt:
        print("interrupted; files already written are complete, the rest were not written.", file=sys.stderr)
        return 130
    except PortfolioLayersError as exc:
        # Bad input (every ValueError subclass, infeasible constraints included) -> 2; a failed solver -> 1.
        return _fail("error", exc, 2 if isinstance(exc, ValueError) else 1)
    except OSError as exc:
        return _fail("error (file system)", exc, 1)


if __name__ == "__main__":
    sys.exit(main())
