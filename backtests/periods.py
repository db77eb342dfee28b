"""Sharpe ratios by sub-period, over the run folders of several seeds.

    python backtests/periods.py RUN_DIR [RUN_DIR ...] --split 2013-01-01 [--benchmark equal_weight]

Reads the net daily returns (``returns.csv``) and turnover of finished runs (for example the ``seed<N>/``
folders written by ``backtests/seeds.py``), cuts them at each ``--split`` date, and prints per strategy and
period the mean +- std over the runs of the net Sharpe ratio (A = 252, risk-free rate 0), of the Sharpe
difference against the benchmark, and the range of the Jobson-Korkie/Memmel p-values. Use it to separate a
development period from a test period inside one long run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from seeds import mean_std, p_range  # the sibling script (its folder is on sys.path when run as a script)

from portfolio_layers.backtest.metrics import sharpe, sharpe_difference_test


def _periods(index: pd.DatetimeIndex, splits: list[pd.Timestamp]) -> list[tuple[str, pd.Series]]:
    edges = [index[0], *splits, index[-1] + pd.Timedelta(days=1)]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (index >= lo) & (index < hi)
        out.append((f"{index[mask][0]:%Y-%m-%d} to {index[mask][-1]:%Y-%m-%d}", mask))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--split", action="append", required=True, help="first date of a new period")
    parser.add_argument("--benchmark", default="equal_weight")
    args = parser.parse_args(argv)
    splits = sorted(pd.Timestamp(s) for s in args.split)
    rows = []
    for run in args.runs:
        returns = pd.read_csv(run / "returns.csv", index_col=0, parse_dates=True)
        for label, mask in _periods(returns.index, splits):
            part = returns[mask]
            for name in part.columns:
                test = (
                    sharpe_difference_test(part[name], part[args.benchmark])
                    if name != args.benchmark
                    else None
                )
                rows.append(
                    {
                        "period": label,
                        "strategy": name,
                        "sharpe": sharpe(part[name]),
                        "difference": 0.0 if test is None else test.difference,
                        "p_value": float("nan") if test is None else test.p_value,
                    }
                )
    frame = pd.DataFrame(rows)
    print(f"{len(args.runs)} runs; net Sharpe (mean +- std), Sharpe - {args.benchmark}, JK p-value range\n")
    print("| period | strategy | Sharpe | Sharpe - benchmark | JK p |\n|---|---|---|---|---|")
    for (period, name), g in frame.groupby(["period", "strategy"], sort=False):
        cells = [mean_std(g["sharpe"]), f"{g['difference'].mean():+.3f}", p_range(g["p_value"])]
        print(f"| {period} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
