"""Time full-batch epochs of the e2e_dro first fit (564 decisions, forward + backward of the Hellinger layer).

    python backtests/e2edro/profile_epoch.py --epochs 5 --threads 1
    python backtests/e2edro/profile_epoch.py --epochs 5 --threads 2

Builds the first fit of the protocol (rows up to 2013-01-18, least-squares start, the seed's initial gamma
and delta) and runs ``--epochs`` Adam steps of :func:`~portfolio_layers.models.e2edro_net.train_net`'s loop,
printing the wall seconds of each epoch, split into forward and backward, and the interior-point iterations
of the forward (the batch's largest count, from the solver's log).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from run import weekly_prices  # noqa: E402

from portfolio_layers.models.e2edro import DROPortfolio, make_panel  # noqa: E402
from portfolio_layers.models.e2edro_net import TrainSettings, panel_loss  # noqa: E402


def first_fit(seed: int, end: str = "2013-01-18"):
    prices = weekly_prices(REPO / "data/e2edro/asset_weekly.csv").loc[:end]
    features = pd.read_csv(REPO / "data/e2edro/factor_weekly.csv", index_col=0, parse_dates=True)
    features = features.reindex(prices.index)
    model = DROPortfolio(name="e2e_dro", layer="hellinger", seed=seed, lr=0.0125, epochs=100)
    panel = make_panel(prices, features, "profile")
    net = model._build(panel)
    rows = panel.decision_rows(model.error_window, panel.rows - 1 - model.horizon)
    return model, panel, net, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.0125)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, panel, net, rows = first_fit(args.seed)
    settings = TrainSettings(
        lr=args.lr,
        epochs=args.epochs,
        horizon=model.horizon,
        mse_weight=model.mse_weight,
        periods_per_year=52.0,
    )
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    times = []
    for epoch in range(args.epochs):
        optimizer.zero_grad()
        tic = time.perf_counter()
        loss = panel_loss(net, panel, rows, settings)
        mid = time.perf_counter()
        loss.backward()
        toc = time.perf_counter()
        optimizer.step()
        net.project()
        times.append(toc - tic)
        print(
            f"epoch {epoch}: loss {float(loss):+.6f}  forward {mid - tic:.3f} s  backward {toc - mid:.3f} s  "
            f"gamma {float(net.gamma):.5f} delta {float(net.delta):.5f}",
            flush=True,
        )
    later = times[1:] or times
    print(
        f"{len(rows)} decisions, {args.threads} thread(s): "
        f"{sum(later) / len(later):.3f} s per epoch (after the first)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
