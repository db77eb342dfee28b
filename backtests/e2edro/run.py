"""Reproduce the E2E-DRO table of Costa & Iyengar (2023) through the package's walk-forward engine.

    python backtests/e2edro/run.py --seeds 0,1,2,3,4          # the full protocol, five seeds
    python backtests/e2edro/run.py --quick                     # a few weeks, one seed, tiny epochs (tests)
    python backtests/e2edro/run.py --seeds 3 --strategies e2e_dro --out DIR   # one piece of a study
    python backtests/e2edro/run.py --end 2015-03-27 --lr 0.0125 --epochs 30   # a shorter, cheaper run

The protocol is ``backtests/e2edro/e2edro.toml`` (see ``data/e2edro/README.md``): weekly prices compounded
from the published weekly returns, the 8 factor returns as features, trading 2013-01-25 .. 2021-10-01 (454
weekly returns), weekly rebalancing, long-only, no cap, no costs, four fits on expanding windows. Every seed
runs each strategy once; the score is the paper's (:func:`geometric_sharpe`).

Writes into ``--out`` (default ``backtests/e2edro/runs/``): ``scores_seed<N>.csv`` (one row per strategy:
score, our arithmetic Sharpe, mean turnover and largest weight, wall seconds, robust-layer elements that
the native solver did not converge on and the cone program solved),
``weights_seed<N>_<strategy>.csv``, ``diagnostics_seed<N>_<strategy>_<key>.csv`` (fits, training curves,
cross-validation), and ``summary.md``, the table over every ``scores_seed*.csv`` of the folder (so seeds
run as separate processes into one folder are summarised together).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.backtest.engine import prepare_prices
from portfolio_layers.registry import build_strategies

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "e2edro.toml"
#: The paper's Sharpe ratios (test period 2013-01-25 .. 2021-10-01; data/e2edro/README.md).
PAPER = {"equal_weight": 1.05, "pto_nominal": 0.88, "e2e_nominal": 1.24, "e2e_dro": 1.30}
LEARNED = ("pto_nominal", "e2e_nominal", "e2e_dro", "e2e_nominal_deq", "e2e_dro_deq")
#: The quick mode: half a year of trading on a 40-week rolling window, a 26-week risk window (each error with
#: 8 weeks of history for the DEQ prediction layers), two epochs.
QUICK = {
    "start": "2009-06-01",
    "end": "2012-12-31",
    "trade_start": "2012-07-06",
    "lookback": 34,
    "retrain_every": 13,
    "window": "rolling",
    "train_window": 40,
}
QUICK_PARAMS = {"error_window": 26, "horizon": 4, "lr": 0.02, "epochs": 2}
QUICK_HISTORY = {"history": 8}


def geometric_sharpe(returns: pd.Series | np.ndarray, periods_per_year: float = 52) -> float:
    """The paper's Sharpe ratio: geometric annual return over annualised volatility, risk-free rate 0.

    ``((prod_s (1 + r_s))^(A / T) - 1) / (std(r) sqrt(A))`` with the population standard deviation
    (``ddof=0``, numpy's default, as the authors' code) of the ``T`` period returns ``r`` (simple returns,
    not prices) and ``A = periods_per_year``. It differs from the arithmetic ``mean(r) A / (std(r) sqrt(A))``
    of :mod:`portfolio_layers.backtest.metrics` by the compounding of the mean.

    Parameters
    ----------
    returns : Series or ndarray of shape (T,)
        Period returns (NaN rows are dropped).
    periods_per_year : float

    Returns
    -------
    float
    """
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 2:
        raise ValueError(f"geometric_sharpe needs at least 2 returns, got {r.size}")
    growth = np.exp(np.log1p(r).sum() * periods_per_year / r.size) - 1.0
    return float(growth / (r.std() * np.sqrt(periods_per_year)))


def weekly_prices(path: Path) -> pd.DataFrame:
    """Prices compounded from a CSV of simple returns (dates first): ``p_s = prod_{u<=s} (1 + r_u)``.

    The first week's return is inside the first price, so the engine's returns ``p_s / p_{s-1} - 1`` are the
    published ones from the second week on (the paper never uses the first week either: its first target is
    the second week).
    """
    returns = pd.read_csv(path, index_col=0, parse_dates=True)
    returns.index.name = "date"
    return (1.0 + returns).cumprod()


def load_config(
    path: Path, quick: bool, *, end: str | None = None, lr: float | None = None, epochs: int | None = None
) -> BacktestConfig:
    """The protocol of ``path``; ``quick`` shrinks it (:data:`QUICK`), ``end`` stops it early, ``lr`` and
    ``epochs`` fix those of the end-to-end strategies (which then skip the cross-validation)."""
    config = BacktestConfig.from_toml(path)
    if quick:
        params = {
            name: {**QUICK_PARAMS, **(QUICK_HISTORY if name.endswith("_deq") else {})}
            for name in config.strategies
            if name in LEARNED
        }
        config = dataclasses.replace(config, **QUICK, params=params)
    fixed = {k: v for k, v in (("lr", lr), ("epochs", epochs)) if v is not None}
    if fixed:
        params = {k: dict(v) for k, v in config.params.items()}
        for name in config.strategies:
            if name in LEARNED and name != "pto_nominal":
                params.setdefault(name, {}).update(fixed)
        config = dataclasses.replace(config, params=params)
    return config if end is None else dataclasses.replace(config, end=end)


class ConeFallbacks(logging.Handler):
    """Counts the robust-layer elements that the native solver did not converge on (re-solved as cone
    programs; :func:`portfolio_layers.models.dro.dro_layer` logs them at INFO level)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.elements = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.elements += int(getattr(record, "elements", 0))


def run_seed(config: BacktestConfig, prices: pd.DataFrame, seed: int, out: Path) -> pd.DataFrame:
    """Run every strategy of ``config`` with ``seed``; write and return its scores (one row per strategy)."""
    config = dataclasses.replace(config, seed=seed)
    _, periods = prepare_prices(prices, config)
    features = REPO / config.features if config.features else None
    rows = []
    dro_log = logging.getLogger("portfolio_layers.models.dro")
    if dro_log.getEffectiveLevel() > logging.INFO:
        dro_log.setLevel(logging.INFO)
    for strategy in build_strategies(config, periods):
        fallbacks = ConeFallbacks()
        dro_log.addHandler(fallbacks)
        tic = time.perf_counter()
        try:
            result = run_backtest(prices, [strategy], config, features=features)
        finally:
            dro_log.removeHandler(fallbacks)
        seconds = time.perf_counter() - tic
        r = result.returns[strategy.name]
        rows.append(
            {
                "seed": seed,
                "strategy": strategy.name,
                "score": geometric_sharpe(r, periods),
                "arithmetic_sharpe": float(result.metrics.loc[strategy.name, "sharpe"]),
                "turnover": float(result.metrics.loc[strategy.name, "turnover"]),
                "max_weight": float(result.weights[strategy.name].max(axis=1).mean()),
                "weeks": int(r.notna().sum()),
                "first": str(r.index[0].date()),
                "last": str(r.index[-1].date()),
                "seconds": seconds,
                "cone_fallbacks": fallbacks.elements,
            }
        )
        result.weights[strategy.name].to_csv(out / f"weights_seed{seed}_{strategy.name}.csv")
        for key, frame in result.diagnostics.get(strategy.name, {}).items():
            frame.to_csv(out / f"diagnostics_seed{seed}_{strategy.name}_{key}.csv", index=False)
        print(
            f"seed {seed} {strategy.name:>13}: score {rows[-1]['score']:.3f} "
            f"({rows[-1]['weeks']} weeks {rows[-1]['first']} .. {rows[-1]['last']}) in {seconds:.0f} s",
            flush=True,
        )
    frame = pd.DataFrame(rows)
    frame.to_csv(out / f"scores_seed{seed}.csv", index=False)
    return frame


def summary(out: Path) -> str:
    """The table over every ``scores_seed*.csv`` in ``out``, beside the paper's."""
    files = sorted(out.glob("scores_seed*.csv"))
    if not files:
        return "no scores yet\n"
    scores = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    lines = [
        "| strategy | seeds | score mean ± std (min .. max) | paper | gap | seconds per seed |",
        "|---|---|---|---|---|---|",
    ]
    for name, group in scores.groupby("strategy", sort=False):
        s = group["score"]
        std = s.std(ddof=1) if len(s) > 1 else 0.0
        paper = PAPER.get(name)
        gap = f"{s.mean() - paper:+.2f}" if paper is not None else ""
        seeds = ", ".join(map(str, sorted(group["seed"])))
        lines.append(
            f"| {name} | {len(s)} ({seeds}) | {s.mean():.3f} ± {std:.3f} "
            f"({s.min():.3f} .. {s.max():.3f}) | {'' if paper is None else f'{paper:.2f}'} | {gap} | "
            f"{group['seconds'].mean():.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="protocol TOML (default: %(default)s)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2,3,4; quick: 0)")
    parser.add_argument("--strategies", default=None, help="comma-separated subset of the strategies")
    parser.add_argument("--quick", action="store_true", help="short period, one seed, tiny epochs")
    parser.add_argument("--end", default=None, help="last price date (a shorter run; default: all)")
    parser.add_argument("--lr", type=float, default=None, help="fixed lr of the e2e strategies (no CV)")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs of the end-to-end strategies")
    parser.add_argument("--out", type=Path, default=HERE / "runs", help="output folder (default: runs/ here)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.quick, end=args.end, lr=args.lr, epochs=args.epochs)
    if args.strategies:
        config = config.with_strategies(s.strip() for s in args.strategies.split(",") if s.strip())
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2,3,4")).split(",") if s.strip()]
    prices = weekly_prices(REPO / config.prices)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        tic = time.perf_counter()
        run_seed(config, prices, seed, args.out)
        print(f"seed {seed}: {time.perf_counter() - tic:.0f} s in all", flush=True)
    table = summary(args.out)
    (args.out / "summary.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
