"""Benchmark of ``portfolio-layers study`` executors (not a test; timings depend on the machine's load).

Two tables:

1. Wall time of a 5-seed study of a config with 1 local worker, 2 local workers and a local Ray instance with
   2 CPUs, and a check that the three give identical per-run metrics.
2. Overhead per task: a study of trivial tasks (``equal_weight`` on a short period, whose backtest takes
   milliseconds; most of a task is loading the data and writing its run folder and report) with each
   executor: wall time per task, time inside the task, and ``wall * workers / tasks - inside``, the time a
   worker slot spends per task outside the task (process or Ray start, dispatch, the driver's writes).

Usage: ``python benchmarks/study.py --out benchmarks/results/study.md [--config C.toml] [--strategies a,b]
[--trade-start YYYY-MM-DD] [--seeds 0-4]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.backtest.metrics import METRIC_NAMES
from portfolio_layers.study.executors import LocalExecutor, RayExecutor
from portfolio_layers.study.runner import run_study
from portfolio_layers.study.spec import parse_seeds

EXECUTORS = {
    "local, 1 worker": (lambda: LocalExecutor(1), 1),
    "local, 2 workers": (lambda: LocalExecutor(2), 2),
    "Ray, 2 CPUs": (lambda: RayExecutor(workers=2), 2),
}


def _timed(config: BacktestConfig, seeds: tuple[int, ...], executor, out: Path) -> tuple[float, object]:
    tic = time.perf_counter()
    outcome = run_study(config, seeds, executor, out, progress=False)
    wall = time.perf_counter() - tic
    if outcome.failed:
        raise SystemExit(f"{out}: tasks failed: {[o.error for o in outcome.failed]}")
    return wall, outcome


def _metrics(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "runs.csv").set_index("run_id").sort_index()[list(METRIC_NAMES)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("backtests/configs/default.toml"))
    parser.add_argument("--strategies", help="comma-separated strategies (default: the config's)")
    parser.add_argument("--trade-start", help="first trading date (default: the config's)")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--trivial-tasks", type=int, default=8, help="tasks of the overhead study")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study.md"))
    args = parser.parse_args(argv)
    config = BacktestConfig.from_toml(args.config)
    if args.strategies:
        config = config.with_strategies(s.strip() for s in args.strategies.split(","))
    config = config.override(trade_start=args.trade_start)
    seeds = parse_seeds(args.seeds)
    trivial = config.with_strategies(["equal_weight"]).override(start="2019-01-01", trade_start="2020-01-01")
    trivial_seeds = tuple(range(args.trivial_tasks))
    study_rows, overhead_rows, reference = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for label, (make, workers) in EXECUTORS.items():
            out = Path(tmp) / f"study-{workers}-{label[0]}"
            wall, outcome = _timed(config, seeds, make(), out)
            metrics = _metrics(out)
            same = "reference" if reference is None else ("yes" if metrics.equals(reference) else "NO")
            reference = metrics if reference is None else reference
            slowest = max(outcome.outcomes, key=lambda o: o.seconds)
            slow = f"{slowest.run_id} {slowest.seconds:.0f}"
            study_rows.append(f"| {label} | {len(outcome.tasks)} | {wall:.0f} | {slow} | {same} |")
            print(study_rows[-1], file=sys.stderr, flush=True)
            wall, outcome = _timed(
                trivial, trivial_seeds, make(), Path(tmp) / f"trivial-{workers}-{label[0]}"
            )
            inside = statistics.mean(o.seconds for o in outcome.outcomes)
            per_slot = wall * workers / len(outcome.tasks) - inside
            overhead_rows.append(
                f"| {label} | {len(outcome.tasks)} | {wall:.1f} | {wall / len(outcome.tasks):.2f} | "
                f"{inside:.2f} | {per_slot:.2f} |"
            )
            print(overhead_rows[-1], file=sys.stderr, flush=True)
    load = os.getloadavg()
    strategies = ", ".join(config.strategies)
    text = "\n".join(
        [
            "# Study executors",
            "",
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}; load average at the end "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (a load above the workers' own means other jobs "
            "shared the cores). Command: `python benchmarks/study.py "
            + " ".join(argv or sys.argv[1:])
            + "`.",
            "",
            f"## {len(seeds)}-seed study: {args.config}, strategies {strategies}, trading from "
            f"{config.trade_start} to {config.end or 'the end of the data'}",
            "",
            "| executor | tasks | wall (s) | slowest task (s) | same per-run metrics |",
            "|---|---|---|---|---|",
            *study_rows,
            "",
            f"## Overhead per task: {len(trivial_seeds)} trivial tasks (equal_weight, trading 2020-2022)",
            "",
            "Inside: mean seconds inside a task (loading the data, the backtest, writing the run folder and "
            "its report; for Ray the driver's write is added). Outside per slot: "
            "`wall * workers / tasks - inside`.",
            "",
            "| executor | tasks | wall (s) | wall per task (s) | inside (s) | outside per slot (s) |",
            "|---|---|---|---|---|---|",
            *overhead_rows,
            "",
        ]
    )
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
