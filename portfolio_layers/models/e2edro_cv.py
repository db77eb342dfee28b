"""The paper's cross-validation of the learning rate and the number of epochs for the E2E-DRO models.

:func:`cross_validate` scores the grid :data:`LR_GRID` x :data:`EPOCH_GRID` (the authors' ``main.py``)
on expanding folds of the rows of a first fit. :class:`~portfolio_layers.models.e2edro.DROPortfolio`
calls it when ``lr`` or ``epochs`` is not given; :mod:`portfolio_layers.models.e2edro` re-exports
these names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from portfolio_layers.errors import DataError
from portfolio_layers.models.e2edro_net import Panel, TrainSettings, train_net

__all__ = ["EPOCH_GRID", "LR_GRID", "cross_validate"]

#: The paper's cross-validation grids (authors' ``main.py``).
LR_GRID = (0.005, 0.0125, 0.02)
EPOCH_GRID = (30, 40, 50, 60, 80, 100)


def _fold_panel(panel: Panel, stop: int) -> Panel:
    return Panel(panel.x[: stop + 1], panel.r[: stop + 1])


def cross_validate(
    panel: Panel,
    build: Any,
    settings: TrainSettings,
    *,
    N: int,
    lrs: tuple[float, ...] = LR_GRID,
    epoch_grid: tuple[int, ...] = EPOCH_GRID,
    folds: int = 4,
) -> pd.DataFrame:
    """The paper's cross-validation of the learning rate and the number of epochs on the rows of ``panel``.

    With ``P = T - 1`` (feature, next return) pairs and ``m_k = round(k P / (folds + 1))``, fold ``k``
    trains on the rows ``0 .. m_k`` (least squares, then the decisions ``N .. m_k - H``) and is scored on
    the decisions ``m_k .. m_{k+1} - H`` (their risk windows reach back into the training rows, their future
    rows stay in the fold). The validation loss is the training loss, averaged over folds. Each
    ``(lr, fold)`` trains once for ``max(epoch_grid)`` epochs and is scored after each epoch of the grid,
    which equals separate runs (see :func:`train_net`).

    Parameters
    ----------
    panel : Panel
        The rows of the first fit (the training years only).
    build : callable
        ``build(fold_panel) -> DRONet`` at its initial values (least squares on ``fold_panel``).
    settings : TrainSettings
        Horizon, loss weights and frequency (its ``lr`` and ``epochs`` are replaced).
    N : int
        Error rows of the risk window.
    lrs, epoch_grid : tuple
        The grids.
    folds : int

    Returns
    -------
    DataFrame
        One row per ``(lr, epochs)``: ``val_loss`` (mean over folds) and ``fold_1 ..`` losses.
    """
    H, P = settings.horizon, panel.rows - 1
    cuts = [round(k * P / (folds + 1)) for k in range(1, folds + 2)]
    rows = []
    for lr in lrs:
        scores: dict[int, list[float]] = {e: [] for e in epoch_grid}
        for k in range(folds):
            train_rows = panel.decision_rows(N, cuts[k] - H)
            val_rows = panel.decision_rows(cuts[k], cuts[k + 1] - H)
            if len(train_rows) == 0 or len(val_rows) == 0:
                raise DataError(
                    f"cross-validation fold {k + 1} has no training or validation decisions ({panel.rows} "
                    f"rows for N = {N} and horizon {H}); use more training rows or set lr and epochs"
                )
            fold = _fold_panel(panel, cuts[k])
            valid = _fold_panel(panel, cuts[k + 1])
            net = build(fold)
            run = dataclasses.replace(settings, lr=lr, epochs=max(epoch_grid))
            _, val = train_net(net, fold, train_rows, run, validate=(valid, val_rows, tuple(epoch_grid)))
            for e in epoch_grid:
                scores[e].append(val[e])
        for e in epoch_grid:
            folds_ = {f"fold_{i + 1}": v for i, v in enumerate(scores[e])}
            rows.append({"lr": lr, "epochs": e, "val_loss": float(np.mean(scores[e])), **folds_})
    return pd.DataFrame(rows)
