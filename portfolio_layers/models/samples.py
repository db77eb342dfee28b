"""Training samples: rolling decision windows cut from one block of history, never looking past its end.

A sample is a decision at row ``t`` of the block: the feature window ``t-T+1 .. t``, the sample covariance
of the returns ``t-W+1 .. t`` (annualised) and the realised returns ``t+1 .. t+H`` that the loss is scored on.
For the trading cost it also holds a *chain* of decisions at the rebalance rows ``d_j = t - (K - j) k``,
``j = 0 .. K`` (``k`` the rebalance period, ``K`` the chain length, ``d_K = t``): their inputs, the returns
``d_j+1 .. d_j+H`` each is scored on, and the returns ``d_j+1 .. d_{j+1}`` over which decision ``j``'s weights
drift into decision ``j+1``'s previous weights. Decision ``d_0`` only starts the chain (training computes it
without gradient and without previous weights). Only rows with all of these inside the block are samples, so
a model fitted on a block never sees a row after the block's last row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from portfolio_layers.errors import DataError, ShapeError
from portfolio_layers.models.heads import FactorCovBatch, factor_form, window_covariance
from portfolio_layers.models.losses import PERIODS, PERIODS_PER_YEAR

__all__ = ["Batch", "WindowData", "drift_weights"]


def drift_weights(weights: Tensor, returns: Tensor) -> Tensor:
    """Weights after drifting with prices (cash at 0 keeps its value), as in the engine.

    Parameters
    ----------
    weights : Tensor of shape (batch, n)
        Weights just after a trade.
    returns : Tensor of shape (batch, k, n)
        Simple returns of the ``k`` rows that follow.

    Returns
    -------
    Tensor of shape (batch, n)
        ``w_i prod(1 + R_i) / V`` with ``V`` the portfolio value including cash.
    """
    grown = weights * torch.prod(1.0 + returns, dim=1)
    value = grown.sum(-1, keepdim=True) + (1.0 - weights.sum(-1, keepdim=True))
    return grown / value


@dataclass(frozen=True)
class Batch:
    """Model inputs and targets for a set of decision rows.

    Attributes
    ----------
    rows : Tensor of shape (batch,)
        Decision rows inside the block.
    x : Tensor of shape (batch, T, n, F)
        Feature windows ending at the decision rows.
    sample_cov : Tensor of shape (batch, n, n) or FactorCovBatch
        Annualised sample covariance of the last ``W`` returns (times ``periods_per_year``); in factor form
        (``F (batch, n, W)``, see :func:`~portfolio_layers.models.heads.sample_factor`) with ``cov_form``.
    future : Tensor of shape (batch, H, n)
        Realised simple returns of the ``H`` rows after the decision.
    chain_x : Tensor of shape (batch, K + 1, T, n, F) or None
        Inputs of the chain's decisions ``d_0 .. d_K`` (oldest first, ``d_K`` the decision row; only when
        ``rebalance > 0``).
    chain_cov : Tensor of shape (batch, K + 1, n, n) or FactorCovBatch or None
        Their sample covariances.
    chain_future : Tensor of shape (batch, K, H, n) or None
        Returns scored for decisions ``d_1 .. d_K`` (the last equals ``future``).
    drift : Tensor of shape (batch, K, k, n) or None
        ``drift[:, j]``: returns of rows ``d_j+1 .. d_{j+1}``, over which decision ``j`` drifts.
    """

    rows: Tensor
    x: Tensor
    sample_cov: Tensor | FactorCovBatch
    future: Tensor
    chain_x: Tensor | None = None
    chain_cov: Tensor | FactorCovBatch | None = None
    chain_future: Tensor | None = None
    drift: Tensor | None = None


class WindowData:
    """Features and returns of one block of history, cut into decision samples on demand.

    Parameters
    ----------
    features : ndarray of shape (rows, n, F)
        Features aligned with the price rows; the feature at row ``s`` may use rows ``<= s`` only. Leading
        rows may be NaN (warm-up); no sample uses them.
    returns : ndarray of shape (rows, n)
        Simple returns ``p[s] / p[s-1] - 1``; row 0 is NaN or ignored.
    window : int
        ``T``, feature rows per sample.
    cov_window : int
        ``W``, return rows of the sample covariance (>= 2).
    horizon : int
        ``H``, future rows scored by the loss.
    rebalance : int
        ``k``, rows between rebalances, used for the chain of decisions of the cost term; 0 disables it.
    chain : int
        ``K >= 1``, decisions of a sample's chain after the one that starts it (see the module docstring).
    dtype : torch.dtype
    periods_per_year : float
        Rows per year of the data (252 daily, 52 weekly, 12 monthly): annualises the sample covariance, and
        :func:`~portfolio_layers.models.training.train` annualises its losses with it.
    cov_form : {"auto", "dense", "factor"}
        Form of the sample covariances (:func:`~portfolio_layers.models.heads.window_covariance`): ``"auto"``
        gives the factor form (``O(W n)`` per sample instead of ``O(W n^2)``) for more than
        :data:`~portfolio_layers.models.heads.FACTOR_MIN_ASSETS` assets.
    """

    def __init__(
        self,
        features: np.ndarray,
        returns: np.ndarray,
        *,
        window: int,
        cov_window: int,
        horizon: int,
        rebalance: int = 0,
        chain: int = 1,
        dtype: torch.dtype = torch.float64,
        periods_per_year: float = PERIODS_PER_YEAR,
        cov_form: str = "auto",
    ) -> None:
        PERIODS.check("WindowData periods_per_year", periods_per_year)
        factor_form(cov_form, 1)  # checks the name
        if features.ndim != 3 or returns.ndim != 2 or features.shape[:2] != returns.shape:
            raise ShapeError(
                f"expected features (rows, n, F) and returns (rows, n) with the same rows and assets, got "
                f"{features.shape} and {returns.shape}"
            )
        if window < 1 or cov_window < 2 or horizon < 1 or rebalance < 0 or chain < 1:
            raise ShapeError(
                f"need window >= 1, cov_window >= 2, horizon >= 1, rebalance >= 0, chain >= 1; got {window}, "
                f"{cov_window}, {horizon}, {rebalance}, {chain}"
            )
        finite_rows = np.isfinite(features).all(axis=(1, 2))
        nan_rows = np.flatnonzero(~finite_rows)
        self.warmup = int(nan_rows[-1] + 1) if nan_rows.size else 0
        if nan_rows.size and nan_rows.size != self.warmup:
            raise DataError(
                f"features hold NaN after the warm-up (row {int(nan_rows[-1])}); "
                "fill or drop missing prices first"
            )
        if not np.isfinite(returns[1:]).all():
            raise DataError("returns hold NaN or inf after row 0; fill or drop missing prices first")
        self.features = torch.as_tensor(np.nan_to_num(features), dtype=dtype)
        self.returns = torch.as_tensor(np.nan_to_num(returns), dtype=dtype)
        self.window, self.cov_window, self.horizon, self.rebalance = window, cov_window, horizon, rebalance
        self.chain = chain
        self.periods_per_year = periods_per_year
        self.cov_form = cov_form

    @property
    def n_rows(self) -> int:
        return int(self.returns.shape[0])

    def first_row(self) -> int:
        """First row at which a decision (and, with a cost, its chain of decisions) has all its inputs."""
        first = max(self.warmup + self.window - 1, self.cov_window)
        return first + self.rebalance * self.chain

    def reach(self) -> int:
        """Rows before a decision row whose returns its loss scores: ``(K - 1) k`` (0 without a chain)."""
        return self.rebalance * (self.chain - 1)

    def decision_rows(self) -> np.ndarray:
        """All rows usable as training samples: inputs available and ``t + H`` inside the block."""
        return np.arange(self.first_row(), self.n_rows - self.horizon)

    def latest(self) -> Batch:
        """Inputs at the last row of the block (no targets: ``future`` is empty), for a live decision."""
        t = self.n_rows - 1
        if t < max(self.warmup + self.window - 1, self.cov_window):
            raise DataError(
                f"a decision needs {max(self.warmup + self.window, self.cov_window + 1)} price rows "
                f"(feature warm-up {self.warmup} + window {self.window}, "
                f"covariance window {self.cov_window}), "
                f"got {self.n_rows}; increase the lookback"
            )
        rows = torch.tensor([t])
        x, cov = self._inputs(rows)
        return Batch(rows, x, cov, self.returns[:0].unsqueeze(0))

    def _inputs(self, rows: Tensor) -> tuple[Tensor, Tensor | FactorCovBatch]:
        steps = torch.arange(-self.window + 1, 1)
        x = self.features[rows[:, None] + steps]  # (batch, T, n, F)
        cov_steps = torch.arange(-self.cov_window + 1, 1)
        window = self.returns[rows[:, None] + cov_steps]
        return x, window_covariance(window, self.periods_per_year, self.cov_form)

    def batch(self, rows: np.ndarray | Tensor) -> Batch:
        """The samples of some decision rows (each from :meth:`decision_rows`)."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        if rows.numel() and (
            int(rows.min()) < self.first_row() or int(rows.max()) + self.horizon >= self.n_rows
        ):
            raise DataError(
                f"decision rows must lie in [{self.first_row()}, {self.n_rows - self.horizon - 1}] "
                "so that inputs and targets stay inside the block"
            )
        future = self.returns[rows[:, None] + torch.arange(1, self.horizon + 1)]
        if not self.rebalance:
            return Batch(rows, *self._inputs(rows), future)
        K, k = self.chain, self.rebalance
        decisions = rows[:, None] - k * torch.arange(K, -1, -1)  # (batch, K + 1): d_0 .. d_K
        x_all, cov_all = self._inputs(decisions.reshape(-1))
        chain_x = x_all.reshape(len(rows), K + 1, *x_all.shape[1:])
        chain_cov = cov_all.reshape(len(rows), K + 1, *cov_all.shape[1:])
        chain_future = self.returns[decisions[:, 1:, None] + torch.arange(1, self.horizon + 1)]
        drift = self.returns[decisions[:, :-1, None] + torch.arange(1, k + 1)]
        x, cov = chain_x[:, -1], chain_cov[:, -1]
        return Batch(rows, x, cov, future, chain_x, chain_cov, chain_future, drift)
