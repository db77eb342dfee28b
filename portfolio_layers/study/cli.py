"""``portfolio-layers study``: its arguments and what it prints (registered by :mod:`portfolio_layers.cli`).

Building the parser imports nothing heavy (no torch): the backtest and the runner are imported when the
command runs.

Prints the summary table on stdout, one paragraph per failed task on stderr; exits 0 when every run is
finished, 1 when a task failed (the others still ran and are summarised), 2 for bad input (raised as
:class:`~portfolio_layers.errors.ConfigError` and reported by the main CLI).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from portfolio_layers.study.executors import EXECUTORS, make_executor

if TYPE_CHECKING:
    from portfolio_layers.backtest.config import BacktestConfig

DEFAULT_CONFIG = Path("backtests") / "configs" / "default.toml"


def add_study_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``study`` subcommand to the subparsers ``sub``."""
    study = sub.add_parser(
        "study",
        help="run a study: seeds x strategies x grid points as tasks, locally or on Ray",
        description="Run every (strategy, grid point, seed) of a config as a task, in a local process pool "
        "or on a Ray cluster, one folder per run under OUT/runs/, then OUT/summary.md, summary.csv and "
        "report.html (mean +- std over seeds, Sharpe difference to the benchmark, grid search scores). "
        "Started again, it skips the runs already finished.",
    )
    study.add_argument(
        "--config", type=Path, help=f"TOML config (default: {DEFAULT_CONFIG} if present, else built-in)"
    )
    study.add_argument("--seeds", required=True, help="seeds: a range 0-4, a list 0,2,5, or both (0-2,7)")
    study.add_argument("--grid", type=Path, help="TOML grid file of [grid.<strategy>] value lists")
    study.add_argument("--strategies", help="comma-separated strategies (default: those of the config)")
    study.add_argument("--executor", default="local", help=f"{' or '.join(EXECUTORS)} (default: local)")
    study.add_argument("--address", help="Ray cluster address: auto, HOST:PORT or ray://HOST:PORT")
    study.add_argument(
        "--workers", type=int, help="processes (local) or CPUs of a local Ray (default: cores)"
    )
    study.add_argument("--out", type=Path, required=True, help="study folder (created; a rerun resumes)")
    study.add_argument("--quiet", action="store_true", help="no progress bar")
    return study


def _config(args: argparse.Namespace) -> BacktestConfig:
    from portfolio_layers.backtest.config import BacktestConfig, default_config

    if args.config is not None:
        config = BacktestConfig.from_toml(args.config)
    elif DEFAULT_CONFIG.is_file():
        config = BacktestConfig.from_toml(DEFAULT_CONFIG)
    else:
        print(f"note: {DEFAULT_CONFIG} not found here; using the built-in default run.", file=sys.stderr)
        config = default_config()
    if args.strategies is not None:
        config = config.with_strategies(s.strip() for s in args.strategies.split(",") if s.strip())
    return config


def run_study_command(args: argparse.Namespace) -> int:
    """Run ``portfolio-layers study`` with parsed ``args``; the exit status."""
    from portfolio_layers.study.runner import run_study
    from portfolio_layers.study.spec import parse_seeds, read_grid

    tic = time.perf_counter()
    seeds = parse_seeds(args.seeds)
    executor = make_executor(args.executor, address=args.address, workers=args.workers)
    config = _config(args)
    grid = read_grid(args.grid) if args.grid is not None else None
    outcome = run_study(config, seeds, executor, args.out, grid=grid, progress=not args.quiet)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    for failure in outcome.failed:
        where = args.out / "errors" / f"{failure.run_id}.txt"
        text = f"task {failure.run_id} failed: {failure.error} (traceback in {where})"
        print(textwrap.fill(text, width=100), file=sys.stderr)
    print(
        f"{len(outcome.tasks)} runs: {len(outcome.skipped)} finished earlier, {len(outcome.outcomes)} run "
        f"now ({len(outcome.failed)} failed); results in {args.out} ({time.perf_counter() - tic:.1f}s)",
        file=sys.stderr,
    )
    return 1 if outcome.failed else 0


__all__ = ["add_study_parser", "run_study_command"]
