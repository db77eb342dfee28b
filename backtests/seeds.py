"""Run a backtest config with several seeds and summarise the learned strategies as mean +- std.

    python backtests/seeds.py --config backtests/configs/default.toml --seeds 0,1,2,3,4

Every seed runs the whole config (the classical strategies do not depend on the seed, so their rows are the
same in every run). Writes into ``--out``: ``metrics_by_seed.csv`` (with each strategy's wall time in
seconds), ``summary.md``, and one complete run folder per seed (``seed<N>/``, as ``portfolio-layers backtest``
writes it, report included; an existing one is refused before any work unless ``--overwrite``, which replaces
only a run folder this package wrote). The summary gives per strategy the mean +- std over seeds of every
metric, and the tests of the Sharpe difference against the benchmark (mean difference, and the range of
p-values over the seeds of Jobson-Korkie/Memmel and of the Ledoit-Wolf circular block bootstrap).

Long studies: ``--checkpoints DIR`` saves every fit of the learned strategies there, so an interrupted run
resumes from its last completed fit; seeds can run as separate processes (one per core) and be combined with
``--merge RUN_DIR RUN_DIR ...``, which only reads their ``metrics_by_seed.csv`` files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import pandas as pd

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.backtest.engine import prepare_prices
from portfolio_layers.backtest.metrics import METRIC_NAMES
from portfolio_layers.backtest.output import check_out_dir, save_result
from portfolio_layers.data import load_prices
from portfolio_layers.registry import build_strategies, strategy_parameters


def mean_std(values: pd.Series) -> str:
    """``"mean ± std"`` over seeds (std with ddof=1), or the mean alone when the values agree."""
    mean, std = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{mean:.3f}" if std < 5e-4 else f"{mean:.3f} ± {std:.3f}"


def p_range(p: pd.Series) -> str:
    """Range of p-values over seeds (empty for the benchmark itself)."""
    if p.isna().all():
        return ""
    return f"{p.min():.2f}" if p.nunique() == 1 else f"{p.min():.2f}-{p.max():.2f}"


def _summary(frame: pd.DataFrame, benchmark: str) -> str:
    lines = [
        "| strategy | " + " | ".join(METRIC_NAMES) + f" | Sharpe - {benchmark} | JK p-value | LW p-value |",
        "|---" * (len(METRIC_NAMES) + 4) + "|",
    ]
    for name, g in frame.groupby("strategy", sort=False):
        cells = [mean_std(g[metric]) for metric in (*METRIC_NAMES, "sharpe_difference")]
        p_values = [p_range(g[col]) if col in g else "" for col in ("p_value", "p_value_lw")]
        lines.append(f"| {name} | " + " | ".join([*cells, *p_values]) + " |")
    return "\n".join(lines)


def _write(out: Path, frame: pd.DataFrame, config: BacktestConfig) -> str:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics_by_seed.csv", frame.to_csv(index=False))
    seeds = sorted(int(s) for s in frame["seed"].unique())
    text = (
        f"{config.prices}, seeds {seeds}, cost {config.cost_bps:g} bps, rebalance {config.rebalance}, "
        f"lookback {config.lookback}, retrain every {config.retrain_every} rows\n\n"
        f"{_summary(frame, config.benchmark)}\n"
    )
    atomic_write_text(out / "summary.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("backtests/configs/default.toml"))
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--strategies", help="comma-separated strategies (default: those of the config)")
    parser.add_argument("--out", type=Path, help="output folder (default backtests/results/seeds-<UTC time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace the seed<N>/ run folders in --out")
    parser.add_argument("--checkpoints", type=Path, help="per-fit checkpoints of learned strategies")
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="RUN_DIR", help="combine finished runs")
    args = parser.parse_args(argv)
    config = BacktestConfig.from_toml(args.config)
    if args.strategies:
        config = config.with_strategies(s.strip() for s in args.strategies.split(","))
    out = args.out or Path("backtests/results") / f"seeds-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    if args.merge:
        frame = pd.concat([pd.read_csv(d / "metrics_by_seed.csv") for d in args.merge], ignore_index=True)
        print(_write(out, frame.sort_values(["seed"], kind="stable"), config))
        return 0
    if args.checkpoints:
        params = {k: dict(v) for k, v in config.params.items()}
        for name in config.strategies:
            if "checkpoint_dir" in strategy_parameters(name):
                params.setdefault(name, {})["checkpoint_dir"] = str(args.checkpoints)
        config = config.override(params=params)
    seeds = [int(s) for s in args.seeds.split(",")]
    config.check_benchmark()
    for seed in seeds:
        check_out_dir(out / f"seed{seed}", args.overwrite)
    prices = load_prices(config.prices, missing=config.missing)
    periods = prepare_prices(prices, config)[1]
    rows = []
    for seed in seeds:
        tic = time.perf_counter()
        seeded = config.override(seed=seed)
        result = run_backtest(prices, build_strategies(seeded, periods), seeded, progress=args.progress)
        tests = result.sharpe_tests() if config.benchmark is not None else None
        for name, metrics in result.metrics.iterrows():
            row = {"seed": seed, "strategy": name, **metrics.to_dict(), "seconds": result.seconds[name]}
            if tests is not None and name in tests.index:
                row.update(tests.loc[name, ["sharpe_difference", "p_value", "p_value_lw"]].to_dict())
            else:
                row.update(sharpe_difference=0.0, p_value=float("nan"), p_value_lw=float("nan"))
            rows.append(row)
        print(f"seed {seed}: {time.perf_counter() - tic:.0f}s", file=sys.stderr, flush=True)
        # returns, weights, training curves, report.html
        save_result(result, out / f"seed{seed}", overwrite=args.overwrite)
        print(_write(out, pd.DataFrame(rows), config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
