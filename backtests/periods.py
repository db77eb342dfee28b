"""Sharpe ratios by sub-period over the runs of a study (``portfolio-layers study``).

    python backtests/periods.py STUDY_DIR --split 2013-01-01 [--split ...]

Cuts the net returns of every finished run of the study (``STUDY_DIR/runs.csv`` lists them) at each
``--split`` date and prints per strategy, grid point and period the mean +- std over seeds of the net Sharpe
ratio and of its difference to the benchmark run of the same seed, and the range of the Jobson-Korkie/Memmel
p-values. Use it to separate a development period from a test period inside one long study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from portfolio_layers.backtest import BacktestConfig
from portfolio_layers.backtest.metrics import sharpe
from portfolio_layers.backtest.sharpe_tests import sharpe_difference_test
from portfolio_layers.data.frequency import resolve_periods_per_year
from portfolio_layers.study.summary import mean_std, p_range


def _returns(study: Path, run_id: str) -> tuple[pd.Series, BacktestConfig]:
    folder = study / "runs" / run_id
    config = BacktestConfig.from_toml(folder / "config.toml")
    frame = pd.read_csv(folder / "returns.csv", index_col=0, parse_dates=True)
    return frame[config.strategies[0]], config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, metavar="STUDY_DIR")
    parser.add_argument("--split", action="append", required=True, help="first date of a new period")
    args = parser.parse_args(argv)
    splits = sorted(pd.Timestamp(s) for s in args.split)
    runs = pd.read_csv(args.study / "runs.csv", keep_default_na=False)
    series = {run_id: _returns(args.study, run_id) for run_id in runs["run_id"]}
    benchmark = next(iter(series.values()))[1].benchmark
    bench = {r.seed: series[r.run_id][0] for r in runs.itertuples() if r.strategy == benchmark}
    rows = []
    for r in runs.itertuples():
        returns, config = series[r.run_id]
        periods = resolve_periods_per_year(returns.index, config.periods_per_year)
        edges = [returns.index[0], *splits, returns.index[-1] + pd.Timedelta(days=1)]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            part = returns[(returns.index >= lo) & (returns.index < hi)]
            if len(part) < 2:
                continue
            test = None
            if r.strategy != benchmark and r.seed in bench:
                test = sharpe_difference_test(part, bench[r.seed].loc[part.index], periods)
            rows.append(
                {
                    "period": f"{part.index[0]:%Y-%m-%d} to {part.index[-1]:%Y-%m-%d}",
                    "strategy": r.strategy,
                    "params": r.params,
                    "sharpe": sharpe(part, periods),
                    "difference": 0.0 if test is None else test.difference,
                    "p_value": float("nan") if test is None else test.p_value,
                }
            )
    frame = pd.DataFrame(rows)
    print(f"{len(runs)} runs; net Sharpe, Sharpe - {benchmark} (mean +- std over seeds), JK p-value range\n")
    print("| period | strategy | point | Sharpe | Sharpe - benchmark | JK p |\n|---|---|---|---|---|---|")
    for (period, name, params), g in frame.groupby(["period", "strategy", "params"], sort=False):
        std = {c: g[c].std(ddof=1) if len(g) > 1 else 0.0 for c in ("sharpe", "difference")}
        cells = [
            mean_std(g["sharpe"].mean(), std["sharpe"]),
            mean_std(g["difference"].mean(), std["difference"]),
            p_range(g["p_value"].min(), g["p_value"].max()),
        ]
        print(f"| {period} | {name} | {params} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
