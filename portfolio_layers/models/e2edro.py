"""The E2E-DRO model family as walk-forward strategies (Costa & Iyengar, Quantitative Finance 2023).

:class:`DROPortfolio` predicts next-period returns linearly from exogenous features
(``y_hat = W x_t + b``), measures risk by the prediction errors of the last ``N`` periods and chooses
long-only, fully invested weights with a decision layer of :mod:`portfolio_layers.models.dro` (see
:mod:`portfolio_layers.models.e2edro_net` for the model and the loss). The registry names:

- ``pto_nominal``: predict-then-optimize, ``(W, b)`` by least squares on the training rows, ``gamma`` fixed
  at its initial value, the nominal layer (no training);
- ``e2e_nominal``: ``(W, b)`` and ``gamma`` trained end to end through the nominal layer;
- ``e2e_dro``: ``(W, b)``, ``gamma`` and ``delta`` trained end to end through the Hellinger robust layer;
- ``e2e_nominal_deq`` and ``e2e_dro_deq``: the same two with a DEQ encoder of the last ``history`` rows of
  returns and features added to the linear prediction (``encoder="deq"``, see
  :mod:`portfolio_layers.models.e2edro_net`; it starts at zero, so training begins from the linear model).

Every fit starts afresh as in the authors' code: ``(W, b)`` from least squares on the rows it is given,
``gamma`` and ``delta`` at their initial values (drawn from ``seed`` as the paper does when not given), then
``epochs`` full-batch Adam steps on the decisions whose ``horizon`` future rows lie inside those rows. When
``lr`` or ``epochs`` is None, the first fit chooses them by the paper's cross-validation on its own rows
(:func:`cross_validate`), and later fits reuse them.

``fit(prices, features)`` and ``weights(prices, current, features)`` take the feature rows dated like the
price rows (the engine slices both alike, so a decision at row t sees features dated <= t).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from portfolio_layers.errors import ConfigError, DataError, InputError
from portfolio_layers.models.build import threads
from portfolio_layers.models.checks import check_fields, check_prices, number, previous_weights
from portfolio_layers.models.e2edro_cv import EPOCH_GRID, LR_GRID, cross_validate
from portfolio_layers.models.e2edro_net import (
    LAYERS,
    DRONet,
    Panel,
    TrainSettings,
    least_squares,
    paper_initial_values,
    train_net,
)
from portfolio_layers.models.losses import PERIODS_PER_YEAR

__all__ = ["ENCODERS", "EPOCH_GRID", "LR_GRID", "DROPortfolio", "cross_validate", "make_panel"]

#: Prediction layers of :class:`DROPortfolio`: the paper's linear one, or that plus a DEQ history encoder.
ENCODERS = ("linear", "deq")


def make_panel(
    prices: pd.DataFrame, features: pd.DataFrame | None, where: str, columns: tuple[str, ...] | None = None
) -> Panel:
    """The :class:`Panel` of date-aligned prices and features (float64).

    Parameters
    ----------
    prices : DataFrame of shape (T, n)
        Prices (not returns), date-indexed.
    features : DataFrame of shape (T, d)
        Feature rows with the same dates as ``prices`` (the features of row t predict the returns of row
        t+1).
    where : str
        The call, for messages.
    columns : tuple of str, optional
        The feature columns of the first fit, which later calls must repeat.

    Leading rows with an incomplete feature row (features that start after the prices) are dropped, with their
    prices; a NaN or infinite feature after the first complete row is an error.

    Raises
    ------
    DataError
        Missing, misaligned or non-numeric features, or non-finite ones after the first complete row.
    """
    if features is None:
        raise DataError(
            f"{where}: this strategy predicts returns from exogenous features, and none were given; pass "
            "features= (a date-indexed DataFrame aligned to the prices, e.g. the factor returns of "
            "data/e2edro/factor_weekly.csv; on the command line --features FILE.csv)."
        )
    if not isinstance(features, pd.DataFrame):
        raise InputError(f"{where}: features must be a pandas DataFrame, got {type(features).__name__}.")
    if not features.index.equals(prices.index):
        raise DataError(
            f"{where}: the feature rows must carry the dates of the price rows ({len(features)} feature rows "
            f"from {_first(features)} against {len(prices)} price rows from {_first(prices)}); align them "
            "from the past (features.reindex(prices.index, method='ffill'))."
        )
    names = tuple(map(str, features.columns))
    if columns is not None and names != columns:
        raise DataError(f"{where}: feature columns {list(names)} differ from the fitted {list(columns)}.")
    bad = [str(c) for c, t in features.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        raise DataError(f"{where}: feature columns {bad} are not numeric.")
    x = features.to_numpy(dtype=np.float64)
    p = prices.to_numpy(dtype=np.float64)
    finite = np.isfinite(x).all(axis=1)
    if not finite.any():
        raise DataError(f"{where}: no feature row is complete (every row holds NaN or infinite values).")
    start = int(np.argmax(finite))  # leading incomplete rows (features that start later) are dropped
    if not finite[start:].all():
        row = start + int(np.flatnonzero(~finite[start:])[0])
        raise DataError(
            f"{where}: the features hold NaN or infinite values after their first complete row "
            f"{features.index[start]} (first on {features.index[row]}); fill them from the past "
            "(features.ffill()) or drop those dates from both prices and features."
        )
    x, p = x[start:], p[start:]
    r = np.zeros_like(p)
    r[1:] = p[1:] / p[:-1] - 1.0
    return Panel(torch.tensor(x), torch.tensor(r))


def _first(frame: pd.DataFrame) -> str:
    return str(frame.index[0].date()) if len(frame) and hasattr(frame.index[0], "date") else "-"


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class DROPortfolio:
    """E2E-DRO strategy: linear prediction from features, prediction-error risk, nominal or robust layer.

    Parameters
    ----------
    name : str
        Strategy name in results.
    layer : {"nominal", "hellinger", "tv"}
        Decision layer (:func:`~portfolio_layers.models.dro.nominal_layer` or
        :func:`~portfolio_layers.models.dro.dro_layer` with that ambiguity set).
    end_to_end : bool
        Train ``(W, b)``, ``gamma`` (and ``delta``) on the loss; False is predict-then-optimize (least
        squares ``(W, b)``, ``gamma`` and ``delta`` fixed at their initial values).
    error_window : int
        ``N``, rows of prediction errors in the risk model (104 weeks in the paper).
    horizon : int
        ``H``, rows after a decision scored by the Sharpe ratio of the loss (13 weeks in the paper's text;
        the authors' code scores ``H + 1`` rows).
    mse_weight : float
        Weight of the prediction MSE in the loss (0.5, divided by the number of assets as in their code).
    lr, epochs : float and int, optional
        Adam learning rate and number of full-batch steps of every fit; None for either chooses both by
        :func:`cross_validate` on the rows of the first fit.
    lr_grid, epoch_grid : tuple
        Grids of that cross-validation (the paper's by default).
    cv_folds : int
        Its folds.
    gamma_init, delta_init : float, optional
        Initial risk-return trade-off and ambiguity size; None draws them from ``seed`` as the authors' code
        does (``gamma ~ U(0.02, 0.1)``, Hellinger ``delta ~ U(c/10, c/2)``, ``c = 1 - 1/sqrt(N)``).
    seed : int
        Seeds those draws (nothing else is random: ``(W, b)`` start from least squares).
    periods_per_year : float
        Annualises the Sharpe ratio of the loss (52 for weekly data; a backtest passes its data's).
    num_threads : int, optional
        Torch intra-op threads during ``fit`` and ``weights`` (restored afterwards).
    encoder : {"linear", "deq"}
        The paper's linear prediction, or that plus a DEQ encoder of the price history (then every decision
        needs ``error_window + history`` earlier rows: a backtest's ``lookback``).
    history : int
        ``L``, rows the DEQ encoder reads (weeks for weekly data).
    d_model : int
        Width of the DEQ encoder's embeddings.
    """

    name: str = "e2e_dro"
    layer: str = "hellinger"
    end_to_end: bool = True
    error_window: int = number(104, integer=True, low=2)
    horizon: int = number(13, integer=True, low=2)
    mse_weight: float = number(0.5, low=0)
    lr: float | None = number(None, low=0, low_open=True, optional=True)
    epochs: int | None = number(None, integer=True, low=1, optional=True)
    lr_grid: tuple[float, ...] = LR_GRID
    epoch_grid: tuple[int, ...] = EPOCH_GRID
    cv_folds: int = number(4, integer=True, low=1)
    gamma_init: float | None = number(None, low=0, low_open=True, optional=True)
    delta_init: float | None = number(None, low=0, low_open=True, optional=True)
    seed: int = number(0, integer=True, low=0, high=2**32 - 1)
    periods_per_year: float = number(PERIODS_PER_YEAR, low=0, low_open=True)
    num_threads: int | None = number(1, integer=True, low=1, optional=True)
    encoder: str = "linear"
    history: int = number(52, integer=True, low=1)
    d_model: int = number(16, integer=True, low=1)
    net_: DRONet | None = dataclasses.field(default=None, init=False)
    assets_: tuple[str, ...] | None = dataclasses.field(default=None, init=False)
    features_: tuple[str, ...] | None = dataclasses.field(default=None, init=False)
    lr_: float | None = dataclasses.field(default=None, init=False)
    epochs_: int | None = dataclasses.field(default=None, init=False)
    cv_: pd.DataFrame | None = dataclasses.field(default=None, init=False)
    fits_: list[dict[str, Any]] = dataclasses.field(default_factory=list, init=False)
    curves_: list[dict[str, Any]] = dataclasses.field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ConfigError(f"{self.name}: unknown layer {self.layer!r}; choose one of {LAYERS}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"{self.name}: unknown encoder {self.encoder!r}; choose one of {ENCODERS}")
        if not isinstance(self.end_to_end, bool):
            raise ConfigError(f"{self.name}: end_to_end must be true or false, got {self.end_to_end!r}")
        check_fields(self)
        self.lr_grid, self.epoch_grid = tuple(self.lr_grid), tuple(self.epoch_grid)
        grids = (("lr_grid", self.lr_grid, False), ("epoch_grid", self.epoch_grid, True))
        for label, grid, integer in grids:
            kind = int if integer else (int, float)
            if not grid or any(isinstance(v, bool) or not isinstance(v, kind) or v <= 0 for v in grid):
                raise ConfigError(
                    f"{self.name}: {label} must be a non-empty list of positive numbers, got {grid}"
                )
        self.lr_, self.epochs_ = self.lr, self.epochs

    def __repr__(self) -> str:
        return (
            f"DROPortfolio(name={self.name!r}, layer={self.layer!r}, end_to_end={self.end_to_end}, "
            f"encoder={self.encoder!r})"
        )

    @property
    def history_rows(self) -> int:
        """Rows of history the prediction layer reads (0 for the linear one)."""
        return self.history if self.encoder == "deq" else 0

    # -- fitting ------------------------------------------------------------------------------------

    def _settings(self) -> TrainSettings:
        return TrainSettings(
            lr=self.lr_ or 0.0,
            epochs=self.epochs_ or 0,
            horizon=self.horizon,
            mse_weight=self.mse_weight,
            periods_per_year=float(self.periods_per_year),
        )

    def initial_values(self) -> tuple[float, float | None]:
        """Initial ``(gamma, delta)``: the given ones, else the paper's draws from ``seed``."""
        gamma, delta = paper_initial_values(self.layer, self.error_window, self.seed)
        if self.gamma_init is not None:
            gamma = float(self.gamma_init)
        if self.layer != "nominal" and self.delta_init is not None:
            delta = float(self.delta_init)
        return gamma, delta

    def _build(self, panel: Panel) -> DRONet:
        gamma, delta = self.initial_values()
        learn = ("theta", "gamma", "delta") if self.end_to_end else ()
        net = DRONet(
            panel.x.shape[1],
            panel.r.shape[1],
            layer=self.layer,
            N=self.error_window,
            gamma=gamma,
            delta=delta,
            learn=learn,
            history=self.history_rows,
            d_model=self.d_model,
            scales=(float(panel.r[1:].std()), panel.x.std(0)) if self.history_rows else None,
        )
        net.set_theta(*least_squares(panel.x, panel.r))
        return net

    def fit(self, prices: pd.DataFrame, features: pd.DataFrame | None = None) -> DROPortfolio:
        """Fit on these rows only: least squares, then (end to end) Adam on the loss.

        Parameters
        ----------
        prices : DataFrame of shape (T, n)
            Prices (not returns) of the training rows, date-indexed.
        features : DataFrame of shape (T, d)
            Feature rows with the same dates.

        Returns
        -------
        self
        """
        with threads(self.num_threads):
            return self._fit(prices, features)

    def _fit(self, prices: pd.DataFrame, features: pd.DataFrame | None) -> DROPortfolio:
        where = f"{self.name}.fit"
        check_prices(prices, where, self.assets_)
        panel = make_panel(prices, features, where, self.features_)
        if self.assets_ is None:
            self.assets_ = tuple(map(str, prices.columns))
            self.features_ = tuple(map(str, features.columns))
        tic = time.perf_counter()
        date = prices.index[-1]
        cv_seconds = 0.0
        if self.end_to_end and (self.lr_ is None or self.epochs_ is None):
            self.cv_ = cross_validate(
                panel,
                self._build,
                self._settings(),
                N=self.error_window,
                lrs=self.lr_grid,
                epoch_grid=self.epoch_grid,
                folds=self.cv_folds,
            )
            best = self.cv_.loc[self.cv_["val_loss"].idxmin()]
            self.lr_, self.epochs_ = float(best["lr"]), int(best["epochs"])
            cv_seconds = time.perf_counter() - tic
        net = self._build(panel)
        theta_ls = torch.cat([net.weight.detach().flatten(), net.bias.detach()]).clone()
        rows = panel.decision_rows(self.error_window, panel.rows - 1 - self.horizon)
        losses: list[float] = []
        if self.end_to_end:
            if len(rows) == 0:
                raise DataError(
                    f"{where}: {panel.rows} rows with features leave no training decision (each needs N = "
                    f"{self.error_window} earlier and horizon = {self.horizon} later rows); use more rows"
                )
            losses, _ = train_net(net, panel, rows, self._settings())
            self.curves_ += [{"fit_date": date, "epoch": i, "train_loss": v} for i, v in enumerate(losses)]
        theta = torch.cat([net.weight.detach().flatten(), net.bias.detach()])
        gamma0, delta0 = self.initial_values()
        self.fits_.append(
            {
                "fit_date": date,
                "rows": len(prices),
                "n_train": len(rows) if self.end_to_end else 0,
                "lr": self.lr_ if self.end_to_end else np.nan,
                "epochs": self.epochs_ if self.end_to_end else 0,
                "gamma_init": gamma0,
                "gamma": float(net.gamma.detach()),
                "delta_init": np.nan if delta0 is None else delta0,
                "delta": float(net.delta.detach()) if self.layer != "nominal" else np.nan,
                "loss_first": losses[0] if losses else np.nan,
                "loss_last": losses[-1] if losses else np.nan,
                "fallbacks": net.fallbacks,
                "theta_shift": float((theta - theta_ls).norm() / theta_ls.norm().clamp_min(1e-300)),
                "seconds": time.perf_counter() - tic,
                "cv_seconds": cv_seconds,
            }
        )
        self.net_ = net
        return self

    # -- deciding -----------------------------------------------------------------------------------

    def weights(
        self, prices: pd.DataFrame, current: np.ndarray | None = None, features: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Weights at the last row of ``prices`` from its last ``N`` prediction errors and its features.

        Parameters
        ----------
        prices : DataFrame of shape (rows, n)
            The price rows the strategy may see, at least ``N + 1``.
        current : ndarray of shape (n,), optional
            Drifted weights before the trade (checked, unused: the paper's layers have no trading cost).
        features : DataFrame of shape (rows, d)
            Feature rows with the same dates.

        Returns
        -------
        ndarray of shape (n,)
            Long-only weights summing to 1.
        """
        with threads(self.num_threads):
            where = f"{self.name}.weights"
            if self.net_ is None:
                raise ConfigError(f"{where}: call fit(prices, features) before weights(...)")
            check_prices(prices, where, self.assets_)
            previous_weights(current, len(self.assets_), where)
            panel = make_panel(prices, features, where, self.features_)
            need = self.error_window + self.history_rows
            if panel.rows - 1 < need:
                history = f" and the encoder's {self.history_rows} rows of history" * bool(self.history_rows)
                raise DataError(
                    f"{where}: {panel.rows} price rows with features are too few for N = "
                    f"{self.error_window} prediction errors{history}; give at least {need + 1} rows "
                    f"(lookback >= {need})"
                )
            with torch.no_grad():
                z, _ = self.net_(panel, torch.tensor([panel.rows - 1]))
            w = np.clip(z[0].numpy(), 0.0, None)
            if not np.isfinite(w).all() or w.sum() <= 0:
                warnings.warn(f"{where}: the decision layer gave unusable weights; holding 1/n", stacklevel=2)
                return np.full(len(w), 1.0 / len(w))
            return w / w.sum()

    # -- results ------------------------------------------------------------------------------------

    def diagnostics(self) -> dict[str, pd.DataFrame]:
        """Per-fit summaries, training curves and the cross-validation table.

        Returns
        -------
        dict
            ``"fits"``: one row per fit (date, chosen ``lr``/``epochs``, initial and trained ``gamma`` and
            ``delta``, first/last training loss, relative distance of ``(W, b)`` from least squares,
            seconds); ``"training"``: the loss before each step; ``"cv"`` (when it ran): the validation
            loss of each ``(lr, epochs)``.
        """
        out = {"fits": pd.DataFrame(self.fits_)}
        if self.curves_:
            out["training"] = pd.DataFrame(self.curves_)
        if self.cv_ is not None:
            out["cv"] = self.cv_.copy()
        return out
