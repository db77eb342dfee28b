"""Training curves and per-fit summaries of a walk-forward model as tables (``E2EPortfolio.diagnostics``)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from portfolio_layers.models.training import TrainHistory

__all__ = ["fit_tables"]


def fit_tables(histories: Sequence[tuple[pd.Timestamp, TrainHistory, bool]]) -> dict[str, pd.DataFrame]:
    """Training curves and per-fit summaries.

    Parameters
    ----------
    histories : sequence of (fit date, TrainHistory, loaded from a checkpoint)

    Returns
    -------
    dict
        ``"training"``: one row per (fit date, epoch) with ``train_loss``, ``val_loss`` and the DEQ/QP
        diagnostics; ``"fits"``: one row per fit with ``best_epoch``, ``epochs``, ``stopped_early``,
        ``seconds``, ``n_train``, ``n_val``, ``from_checkpoint`` and the decision layer's kept parameters
        (``tau``, ``cost_multiplier``, ``risk_aversion``; see :attr:`TrainHistory.decision`).
    """
    curves, fits = [], []
    for date, history, loaded in histories:
        for epoch, (tr, va) in enumerate(zip(history.train_loss, history.val_loss, strict=True)):
            diag = history.diagnostics[epoch] if epoch < len(history.diagnostics) else {}
            curves.append({"fit_date": date, "epoch": epoch, "train_loss": tr, "val_loss": va, **diag})
        fits.append(
            {
                "fit_date": date,
                "best_epoch": history.best_epoch,
                "epochs": len(history.train_loss),
                "stopped_early": history.stopped_early,
                "seconds": history.seconds,
                "n_train": history.n_train,
                "n_val": history.n_val,
                "from_checkpoint": loaded,
                **history.decision,
            }
        )
    return {"training": pd.DataFrame(curves), "fits": pd.DataFrame(fits)}
