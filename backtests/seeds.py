"""Several seeds of one config: a thin front end of the study (``portfolio-layers study``).

    python backtests/seeds.py --config backtests/configs/default.toml --seeds 0-4 --out DIR \
        [--strategies a,b] [--workers K] [--checkpoints CKPT]

does what ``portfolio-layers study --config ... --seeds ... --out DIR`` does (one task per strategy and seed
in a local process pool, ``DIR/summary.md``, ``summary.csv``, ``runs.csv``, ``report.html`` and one run folder
per task under ``DIR/runs/``), with ``--checkpoints`` setting ``checkpoint_dir`` of every learned strategy
so that an interrupted task resumes from its last completed fit. A study started again skips its finished
runs, so all seeds go into one folder; the per-seed folders and ``--merge`` of earlier versions are gone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from portfolio_layers.backtest import BacktestConfig
from portfolio_layers.registry import strategy_parameters
from portfolio_layers.study.executors import LocalExecutor
from portfolio_layers.study.runner import run_study
from portfolio_layers.study.spec import parse_seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("backtests/configs/default.toml"))
    parser.add_argument("--seeds", default="0-4", help="seeds: 0-4, 0,2,5 or both")
    parser.add_argument("--strategies", help="comma-separated strategies (default: those of the config)")
    parser.add_argument("--out", type=Path, required=True, help="study folder (a rerun resumes)")
    parser.add_argument("--workers", type=int, help="processes (default: cores)")
    parser.add_argument("--checkpoints", type=Path, help="per-fit checkpoints of learned strategies")
    args = parser.parse_args(argv)
    config = BacktestConfig.from_toml(args.config)
    if args.strategies:
        config = config.with_strategies(s.strip() for s in args.strategies.split(","))
    if args.checkpoints:
        params = {k: dict(v) for k, v in config.params.items()}
        for name in config.strategies:
            if "checkpoint_dir" in strategy_parameters(name):
                params.setdefault(name, {})["checkpoint_dir"] = str(args.checkpoints)
        config = config.override(params=params)
    outcome = run_study(config, parse_seeds(args.seeds), LocalExecutor(args.workers), args.out)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    for failure in outcome.failed:
        print(f"task {failure.run_id} failed: {failure.error}", file=sys.stderr)
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
