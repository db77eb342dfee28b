"""Benchmark: the end-to-end model on a large universe (300+ assets), dense vs factor-form risk.

Three parts, each run in its own process (``--part``), so that the peak memory is that of one part:

- ``crossover``: the decision layer's actual training call, forward + backward: batch 32 (the default
  ``batch_size``), the risk head's ``k = 3`` factors blended with the sample covariance of a 252-row window,
  ``gamma = 5``, the prior's gate ``tau = 1``, the cost of 10 bps at monthly decisions, previous weights.
  Dense: the ``n x n`` risk and the lifted L1 rows (``2n`` variables); factor: ``FactorCovBatch`` with
  ``3 + 252`` columns and the native L1 term. Best of ``--reps``. This sets ``FACTOR_MIN_ASSETS``.
- ``step``: one training step of the default network (DEQ encoder, chain of 4 decisions, batch 32) on
  synthetic prices: ``batch_loss`` + backward, timed with the dense and the factor form on the same batch.
  Used to extrapolate a dense fit that would take hours (clearly labelled as such in the results).
- ``walk``: a walk-forward backtest (``run_backtest``) of the default ``e2e`` settings beside equal weight on
  ``planted_market(n, rows)`` prices: monthly rebalancing (21 rows), yearly re-training (252 rows), a
  756-row training window, 10 bps; prints the wall time, the peak memory (``ru_maxrss``), the training time
  of each fit and the metrics of both strategies.

Usage::

    python benchmarks/large_universe.py --part crossover --n 40 60 80 100 150 200
    python benchmarks/large_universe.py --part step --n 300 --forms dense factor
    python benchmarks/large_universe.py --part walk --n 300 --risk-form auto --threads 2

The machine's load average is printed with every part: other processes share the cores. Results:
``benchmarks/results/large_universe.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch

from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.data.features import price_features
from portfolio_layers.models.build import build_net
from portfolio_layers.models.decision import DecisionLayer, cost_per_year
from portfolio_layers.models.heads import RiskHead, sample_factor
from portfolio_layers.models.samples import WindowData
from portfolio_layers.models.strategy import E2EPortfolio
from portfolio_layers.models.synthetic import planted_market
from portfolio_layers.models.training import batch_loss
from portfolio_layers.qp import FactorCov
from portfolio_layers.registry import build_strategy

F64 = torch.float64
#: Walk-forward protocol: monthly decisions, yearly re-training on three years, 10 bps.
PROTOCOL = {"lookback": 756, "rebalance": 21, "retrain_every": 252, "train_window": 756, "cost_bps": 10.0}


def peak_mb() -> float:
    """Peak resident memory of this process in MB (``ru_maxrss`` is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), load average {load}"
    )


def crossover(sizes: list[int], reps: int, batch: int = 32, rows: int = 252) -> None:
    """Decision layer forward + backward, dense vs factor form, for each ``n``."""
    print("| n | dense (s) | factor (s) | dense / factor | IPM iterations dense / factor |")
    print("|---|---|---|---|---|")
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        torch.manual_seed(n)
        head = RiskHead(16, 3, blend=True, blend_init=0.9).double()
        emb = torch.randn(batch, n, 16, generator=g, dtype=F64)
        sample = sample_factor(0.01 * torch.randn(batch, rows, n, generator=g, dtype=F64), 252.0)
        layer = DecisionLayer(n, cost=cost_per_year(10.0, 252, 21), prior_init=1.0).double()
        previous = torch.softmax(torch.randn(batch, n, generator=g, dtype=F64), -1)
        mu = 0.05 * torch.randn(batch, n, generator=g, dtype=F64)
        gamma = torch.tensor(5.0, dtype=F64)
        row = {}
        for form in ("dense", "factor"):
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                cov = head(emb, sample if form == "factor" else sample.dense(), form=form)
                P = FactorCov(cov.F * gamma.sqrt(), cov.d * gamma) if form == "factor" else gamma * cov
                sol = layer.solve(P, mu, previous)
                sol.x.square().sum().backward()
                times.append(time.perf_counter() - start)
            row[form] = (min(times), float(sol.iterations.float().mean()))
        (td, itd), (tf, itf) = row["dense"], row["factor"]
        print(f"| {n} | {td:.3f} | {tf:.3f} | {td / tf:.2f} | {itd:.1f} / {itf:.1f} |", flush=True)


def _model(risk_form: str, threads: int = 1, progress: bool = False) -> E2EPortfolio:
    """The default ``e2e`` settings (seed 0, the protocol's cost) in ``risk_form``, on ``threads`` threads."""
    return E2EPortfolio(
        risk_form=risk_form, seed=0, cost_bps=PROTOCOL["cost_bps"], num_threads=threads, progress=progress
    )


def step(n: int, rows: int, forms: list[str], reps: int) -> None:
    """One training step of the default network on the first fit's window, in each form."""
    prices = planted_market(n, rows, seed=0).iloc[: PROTOCOL["train_window"] + 1]
    features = price_features(prices).values
    valid = features[np.isfinite(features).all(axis=(1, 2))]
    features = np.clip((features - valid.mean((0, 1))) / (valid.std((0, 1)) + 1e-8), -5, 5)
    values = prices.to_numpy()
    returns = np.full_like(values, np.nan)
    returns[1:] = values[1:] / values[:-1] - 1.0
    model = _model("auto")
    for form in forms:  # "factor" through risk_form="auto" (n > FACTOR_MIN_ASSETS), as the strategy does
        data = WindowData(
            features, returns, window=model.window, cov_window=model.cov_window, horizon=model.horizon,
            rebalance=model.rebalance, chain=model.train.chain, cov_form=form,
        )  # fmt: skip
        rows_ = data.decision_rows()
        samples = len(rows_[:: model.train.stride])
        batch = data.batch(rows_[: model.train.batch_size])
        net = build_net(_model("auto" if form == "factor" else "dense"), n, features.shape[-1], F64)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            loss, _ = batch_loss(net, batch, model.train)
            loss.backward()
            times.append(time.perf_counter() - start)
        batches = int(np.ceil(samples * (1 - model.train.val_fraction) / model.train.batch_size))
        print(
            f"n={n} form={form}: one step (batch {model.train.batch_size}, chain {model.train.chain}) "
            f"{min(times):.1f} s (of {[round(t, 1) for t in times]}), loss {float(loss.detach()):.6f}; "
            f"{samples} samples at stride {model.train.stride}, ~{batches} training batches per epoch; "
            f"peak memory so far {peak_mb():.0f} MB",
            flush=True,
        )


def walk(n: int, rows: int, risk_form: str, threads: int) -> None:
    """The walk-forward of the default e2e settings beside equal weight."""
    prices = planted_market(n, rows, seed=0)
    config = BacktestConfig(**PROTOCOL, benchmark="equal_weight")
    strategies = [build_strategy("equal_weight", config), _model(risk_form, threads, progress=True)]
    start = time.perf_counter()
    result = run_backtest(prices, strategies, config, progress=True)  # bars on stderr: how far it got
    wall = time.perf_counter() - start
    fits = strategies[1].diagnostics()["fits"]
    print(f"n={n}, rows={rows}, risk_form={risk_form}: wall {wall:.0f} s, peak memory {peak_mb():.0f} MB")
    print(f"strategy loop seconds: { {k: round(v, 1) for k, v in result.seconds.items()} }")
    print(f"fit dates: {[f'{d:%Y-%m-%d}' for d in result.fit_dates]}")
    print(fits.to_string())
    print(result.metrics.to_string())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("crossover", "step", "walk"), required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[300])
    parser.add_argument("--rows", type=int, default=1260, help="price rows (5 years of business days)")
    parser.add_argument("--forms", nargs="+", default=["dense", "factor"], help="step: forms to time")
    parser.add_argument("--risk-form", default="auto", choices=("auto", "dense"), help="walk: the model")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    if args.part == "crossover":
        crossover(args.n, args.reps)
    elif args.part == "step":
        for n in args.n:
            step(n, args.rows, args.forms, args.reps)
    else:
        for n in args.n:
            walk(n, args.rows, args.risk_form, args.threads)
    print(f"peak memory {peak_mb():.0f} MB; {machine()}")


if __name__ == "__main__":
    main()
