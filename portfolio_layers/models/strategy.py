"""The end-to-end model as a walk-forward strategy: ``E2EPortfolio(...).fit(prices).weights(window)``.

``fit(prices)`` computes the per-asset features of :func:`~portfolio_layers.data.features.price_features`
on the given price rows only, standardises them with statistics of those rows, cuts the rows into decision
samples (:class:`~portfolio_layers.models.samples.WindowData`) and trains the network
(:func:`~portfolio_layers.models.training.train`).
Later ``fit`` calls continue from the current parameters (``refit_epochs``), as a walk-forward re-training.
``weights(prices, current)`` runs the network on the last row of the window it is given.
Exogenous market-level features (``fit(prices, features=...)``, ``weights(..., features=...)``) join the
price features as channels broadcast to every asset (:mod:`~portfolio_layers.models.inputs`).

With a ``checkpoint_dir`` every fit is saved under a fingerprint of (configuration, training prices, previous
fit): a walk-forward run that was interrupted and is started again loads the folds it had completed instead of
re-training them, and re-trains from the first missing fold on, with the same result as an uninterrupted run.
A checkpoint that cannot be read back is an error naming it (:mod:`~portfolio_layers.models.checkpoints`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from portfolio_layers.errors import ConfigError, DataError
from portfolio_layers.models.build import build_net, risk_form_field, threads
from portfolio_layers.models.checkpoints import restore_fit, save_checkpoint
from portfolio_layers.models.checks import check_fields, check_prices, number, previous_weights
from portfolio_layers.models.encoders import ENCODERS
from portfolio_layers.models.inputs import broadcast_features, exogenous_input
from portfolio_layers.models.losses import PERIODS_PER_YEAR
from portfolio_layers.models.model import E2ENet
from portfolio_layers.models.reporting import fit_tables
from portfolio_layers.models.samples import WindowData
from portfolio_layers.models.training import TrainConfig, TrainHistory, train
from portfolio_layers.qp import Status as QPStatus

__all__ = ["E2E_TRAIN", "E2EPortfolio"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
FEATURE_CLIP = 5.0


#: Training settings of :class:`E2EPortfolio` when none are given; a ``train`` mapping replaces some of them.
#: Equal weight competes on validation at every fit (chosen on 1995-2012: backtests/results/ew_competes.md).
E2E_TRAIN = TrainConfig(epochs=8, patience=3, stride=2, cost_bps=10.0, chain=4, equal_weight_competes=True)


def _run_setting(default: object, **accepted: object) -> dataclasses.Field:
    """A setting of the run, not of the model: left out of the checkpoint fingerprint."""
    checked = number(default, **accepted).metadata if accepted else {}
    return dataclasses.field(default=default, metadata={"run": True, **checked})


def _state() -> dataclasses.Field:
    """Fitted state, set by ``fit``."""
    return dataclasses.field(default=None, init=False)


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class E2EPortfolio:
    """End-to-end portfolio model (encoder -> heads -> QP) trained on a backtest loss; an engine strategy.

    Parameters
    ----------
    name : str
        Strategy name in results and in checkpoint file names.
    encoder : {"deq", "mlp", "lstm"}
        Market-history encoder.
    train : TrainConfig or mapping
        Training settings (:class:`~portfolio_layers.models.training.TrainConfig`): the loss, the epochs of
        the first fit, the optimizer, early stopping, the loss's ``cost_bps`` (use the backtest's) and
        ``seed``, which also seeds the initial parameters. A mapping replaces those of its keys in
        :data:`E2E_TRAIN`. ``loss="mse"`` is the two-stage predict-then-optimize baseline (the QP is not in
        its loss, so its risk aversion stays at ``risk_aversion`` whatever ``learn_risk_aversion`` says);
        ``jacobian_weight > 0`` needs ``encoder_options={"jacobian_samples": k}``.
    loss, seed, cost_bps : optional
        Shorthands replacing these fields of ``train`` (a registry name fixes the loss, a run sets the seed
        and costs); only ``train`` keeps them.
    d_model, n_factors : int
        Embedding size and number of risk factors.
    window : int
        ``T``, feature rows fed to the encoder.
    cov_window : int
        Return rows of the sample covariance blended into the risk model.
    horizon : int, optional
        ``H``, rows after a decision scored by the loss; default ``rebalance``, which makes the loss's
        trading cost (one trade per ``H`` rows) match the backtest's.
    rebalance : int
        Rows between decisions (>= 1), for the trading cost of the loss (the model's own previous weights).
    periods_per_year : float
        Rows per year of the prices (252 daily, the default; 52 weekly, 12 monthly): annualises the
        training loss and the sample covariance. A backtest run passes the frequency of its data.
    blend_sample_cov : bool
        Learn a blend of the factor covariance with the sample covariance.
    blend_init : float
        Initial weight of the sample covariance in that blend.
    risk_aversion : float
        Initial (``learn_risk_aversion=True``) or fixed risk aversion of the QP.
    learn_risk_aversion : bool
    return_scale : float
        Initial scale of the expected returns (annualised); small values start near minimum variance.
    max_weight : float, optional
        Per-asset cap of the QP.
    turnover_limit : float, optional
        Bound on ``sum |w - w_prev|`` in the QP; ``w_prev`` is the ``current`` of :meth:`weights`.
    decision_cost : float
        Initial learned multiplier of the QP's trading cost ``kappa |w - w_prev|_1``, ``kappa`` being
        ``train.cost_bps / 1e4 * periods_per_year / rebalance`` times it (0 drops the term); see
        :mod:`~portfolio_layers.models.decision`.
    prior : bool
        The QP's gated prior at equal weight (off: the plain mean-variance problem with costs).
    prior_gate : float, optional
        Initial gate ``tau >= 0`` of the prior; default 0 (exactly equal weight until trained) for a backtest
        loss and ``models.build.PTO_PRIOR`` (fixed: it is never trained) for ``loss="mse"``.
    refit_epochs : int
        Epoch budget of each later fit (warm-started from the previous parameters; ``0`` re-trains from
        scratch with ``train.epochs`` every time).
    dtype : {"float64", "float32"}
    encoder_options : dict, optional
        Keyword arguments of the encoder (e.g. ``{"solver": Anderson(max_iter=20)}`` for the DEQ).
    checkpoint_dir : str, optional
        Directory for per-fit checkpoints (resume of interrupted walk-forward runs).
    progress : bool
        Show a progress bar per fit (stderr).
    num_threads : int, optional
        Torch intra-op threads during ``fit`` and ``weights`` (restored afterwards). The tensors are small,
        so one thread is fastest, and several threads slow down badly when the cores are shared (measured
        4x on 2 busy cores). ``None`` keeps the current setting.
    risk_form : {"auto", "dense"}
        Form of the covariance in the network and its QP (:mod:`~portfolio_layers.models.heads`): ``"auto"``
        keeps it as ``F F' + diag(d)`` (the risk head's factors stacked with the window's centred returns,
        ``n_factors + cov_window`` columns, never ``n x n``) for more than ``models.heads.FACTOR_MIN_ASSETS``
        assets and dense below (the 20-asset default is dense); ``"dense"`` forms ``n x n`` matrices for any
        ``n``. The forms give the same weights and gradients up to rounding (about 1e-10), so this is a
        setting of the run, like ``num_threads``. ``loss="mse"`` is always dense.

    Notes
    -----
    The checkpoint fingerprint covers every parameter except ``name``, ``checkpoint_dir``, ``progress``,
    ``num_threads`` and ``risk_form``. Every numeric parameter is checked at construction
    (:class:`ConfigError`).
    """

    name: str = _run_setting("e2e")
    encoder: str = "deq"
    train: TrainConfig | Mapping[str, Any] = E2E_TRAIN
    loss: dataclasses.InitVar[str | None] = None
    seed: dataclasses.InitVar[int | None] = None
    cost_bps: dataclasses.InitVar[float | None] = None
    d_model: int = number(16, integer=True, low=1)
    n_factors: int = number(3, integer=True, low=1)
    window: int = number(60, integer=True, low=1)
    cov_window: int = number(252, integer=True, low=2)
    horizon: int | None = number(None, integer=True, low=1, optional=True)
    rebalance: int = number(21, integer=True, low=1)
    periods_per_year: float = number(PERIODS_PER_YEAR, low=0, low_open=True)
    blend_sample_cov: bool = True
    blend_init: float = number(0.9, low=0, high=1, low_open=True, high_open=True)
    risk_aversion: float = number(5.0, low=0, low_open=True)
    learn_risk_aversion: bool = True
    return_scale: float = number(0.01, low=0, low_open=True)
    max_weight: float | None = number(None, low=0, high=1, low_open=True, optional=True)
    turnover_limit: float | None = number(None, low=0, optional=True)
    decision_cost: float = number(1.0, low=0)
    prior: bool = True
    prior_gate: float | None = number(None, low=0, optional=True)
    refit_epochs: int = number(3, integer=True, low=0)
    dtype: str = "float64"
    encoder_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_dir: str | Path | None = _run_setting(None)
    progress: bool = _run_setting(False)
    num_threads: int | None = _run_setting(1, integer=True, low=1, optional=True)
    risk_form: str = risk_form_field()
    net_: E2ENet | None = _state()
    scaler_: tuple[np.ndarray, np.ndarray] | None = _state()
    assets_: tuple[str, ...] | None = _state()
    features_: tuple[str, ...] | None = _state()
    histories_: list[tuple[pd.Timestamp, TrainHistory, bool]] = dataclasses.field(
        default_factory=list, init=False
    )
    _fingerprint: str = dataclasses.field(default="", init=False)

    def __post_init__(self, loss: str | None, seed: int | None, cost_bps: float | None) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        check_fields(self)
        if float(self.periods_per_year).is_integer():  # 252.0 and 252: one setting, one fingerprint
            self.periods_per_year = int(self.periods_per_year)
        if not isinstance(self.train, TrainConfig):  # validated now, not at the first fit
            self.train = TrainConfig.from_dict({**dataclasses.asdict(E2E_TRAIN), **self.train})
        shorthands = {"loss": loss, "seed": seed, "cost_bps": cost_bps}
        self.train = dataclasses.replace(self.train, **{k: v for k, v in shorthands.items() if v is not None})
        samples = int(self.encoder_options.get("jacobian_samples", 0))
        if (self.train.jacobian_weight > 0) != (samples > 0):
            raise ConfigError(
                "the DEQ's Jacobian penalty needs both jacobian_weight > 0 and encoder_options="
                f"{{'jacobian_samples': k}} with k > 0 (got jacobian_weight={self.train.jacobian_weight}, "
                f"jacobian_samples={samples}); set both or neither"
            )
        self.horizon = self.rebalance if self.horizon is None else self.horizon
        self.encoder_options = dict(sorted(self.encoder_options.items()))
        self.checkpoint_dir = None if self.checkpoint_dir is None else Path(self.checkpoint_dir)
        model = [
            (f.name, getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.init and "run" not in f.metadata
        ]
        self._fingerprint = hashlib.sha256(repr(model).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"E2EPortfolio(name={self.name!r}, encoder={self.encoder!r}, loss={self.train.loss!r})"

    # -- data ---------------------------------------------------------------------------------------

    def _exogenous(self, prices: pd.DataFrame, features: pd.DataFrame | None, call: str) -> np.ndarray | None:
        """Exogenous features on the price rows (rows, d), checked against the fitted names; None without."""
        where, fitted = f"{self.name}.{call}", self.net_ is not None
        check_prices(prices, where, self.assets_)
        window = self.window if call == "weights" else None
        return exogenous_input(features, prices, self.features_, where, fitted_before=fitted, window=window)

    def _features(
        self, prices: pd.DataFrame, call: str, exogenous: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        from portfolio_layers.data.features import price_features

        check_prices(prices, f"{self.name}.{call}", self.assets_)
        features = price_features(prices).values
        if exogenous is not None:
            features = broadcast_features(features, exogenous)
        values = prices.to_numpy(dtype=np.float64)
        returns = np.full_like(values, np.nan)
        returns[1:] = values[1:] / values[:-1] - 1.0
        return features, returns

    def _scale(self, features: np.ndarray) -> np.ndarray:
        mean, std = self.scaler_
        return np.clip((features - mean) / std, -FEATURE_CLIP, FEATURE_CLIP)

    def _data(self, features: np.ndarray, returns: np.ndarray, rebalance: int) -> WindowData:
        return WindowData(
            self._scale(features),
            returns,
            window=self.window,
            cov_window=self.cov_window,
            horizon=self.horizon,
            rebalance=rebalance,
            chain=1 if self.train.loss == "mse" else self.train.chain,
            dtype=_DTYPES[self.dtype],
            periods_per_year=self.periods_per_year,
        )

    # -- model --------------------------------------------------------------------------------------

    def _build(self, n_assets: int, n_features: int) -> E2ENet:
        return build_net(self, n_assets, n_features, _DTYPES[self.dtype])

    def fit(self, prices: pd.DataFrame, features: pd.DataFrame | None = None) -> E2EPortfolio:
        """Train on these price rows only (the training window); later calls continue training.

        Parameters
        ----------
        prices : DataFrame of shape (rows, n)
            Prices (not returns), date-indexed, one column per asset (the fitted ones on a later fit).
        features : DataFrame of shape (rows, d) or (T_f, d), optional
            Exogenous market-level features, on the price dates (as the engine slices them; leading NaN
            rows are not used) or with their own dates (aligned from the past only); standardised with this
            window's statistics. A model fitted with features needs the same columns in every later call.

        Returns
        -------
        self
        """
        with threads(self.num_threads):
            return self._fit(prices, features)

    def _fit(self, prices: pd.DataFrame, exogenous: pd.DataFrame | None = None) -> E2EPortfolio:
        extra = self._exogenous(prices, exogenous, "fit")
        features, returns = self._features(prices, "fit", extra)
        fold = len(self.histories_)
        first = self.net_ is None or self.refit_epochs == 0
        key = self._fold_key(prices, extra, exogenous)
        if first:
            self.assets_ = tuple(map(str, prices.columns))
            self.features_ = None if exogenous is None else tuple(map(str, exogenous.columns))
            self.net_ = self._build(prices.shape[1], features.shape[-1])
        valid = features[np.isfinite(features).all(axis=(1, 2))]
        if len(valid) == 0:
            raise DataError(
                f"{self.name}: {len(prices)} price rows are fewer than the feature warm-up; use a longer "
                "training window"
            )
        self.scaler_ = (valid.mean(axis=(0, 1)), valid.std(axis=(0, 1)) + 1e-8)
        path = None if self.checkpoint_dir is None else self.checkpoint_dir / f"{self.name}-{key[:20]}.pt"
        if path is not None and path.is_file():
            history = restore_fit(path, self.net_)
            self.histories_.append((prices.index[-1], history, True))
            self._fingerprint = key
            return self
        config = dataclasses.replace(
            self.train,
            epochs=self.train.epochs if first else self.refit_epochs,
            seed=self.train.seed * 100_003 + fold,
        )
        data = self._data(features, returns, self.rebalance)
        history = train(
            self.net_, data, config, progress=self.progress, desc=f"{self.name} {prices.index[-1]:%Y-%m-%d}"
        )
        self.histories_.append((prices.index[-1], history, False))
        self._fingerprint = key
        if path is not None:
            save_checkpoint(path, self.net_, history=history.to_dict(), key=key)
        return self

    def _fold_key(
        self, prices: pd.DataFrame, extra: np.ndarray | None = None, exogenous: pd.DataFrame | None = None
    ) -> str:
        digest = hashlib.sha256(self._fingerprint.encode())
        digest.update(str(len(self.histories_)).encode())
        digest.update(np.ascontiguousarray(prices.index.asi8).tobytes())
        digest.update(np.ascontiguousarray(prices.to_numpy(dtype=np.float64)).tobytes())
        digest.update("\x1f".join(map(str, prices.columns)).encode())
        if extra is not None:  # the feature names and values (none: the key of a model without features)
            digest.update(("\x1e" + "\x1f".join(map(str, exogenous.columns))).encode())
            digest.update(np.ascontiguousarray(extra).tobytes())
        return digest.hexdigest()

    def weights(
        self, prices: pd.DataFrame, current: np.ndarray | None = None, features: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Target weights at the last row of ``prices``.

        Parameters
        ----------
        prices : DataFrame of shape (rows, n)
            The price rows the strategy may see (``t-L .. t``); needs at least the feature warm-up plus
            ``window`` rows and ``cov_window + 1`` rows.
        current : ndarray of shape (n,), optional
            Drifted weights before the trade, summing to 1, or zeros (or None) before the first trade; the
            QP's trading cost is charged against them (none before the first trade: every fully invested
            portfolio then costs the same) and a turnover limit binds against them (against ``1/n`` when
            there are none; the backtest charges it against 0). NaN, or nonzero weights not summing to 1,
            raise an ``InputError``.
        features : DataFrame of shape (rows, d) or (T_f, d), optional
            The exogenous features of these rows, as in :meth:`fit`: required (the same columns) when the
            model was fitted with features, refused when it was not; the last ``window`` rows must be known.

        Returns
        -------
        ndarray of shape (n,)
            Long-only weights summing to 1.
        """
        with threads(self.num_threads):
            return self._weights(prices, current, features)

    def _weights(
        self, prices: pd.DataFrame, current: np.ndarray | None = None, exogenous: pd.DataFrame | None = None
    ) -> np.ndarray:
        if self.net_ is None:
            raise ConfigError(f"{self.name}: call fit(prices) before weights(prices)")
        extra = self._exogenous(prices, exogenous, "weights")
        features, returns = self._features(prices, "weights", extra)
        batch = self._data(features, returns, 0).latest()
        previous = previous_weights(current, len(self.assets_), f"{self.name}.weights")
        if previous is not None:
            previous = torch.as_tensor(previous[None], dtype=_DTYPES[self.dtype])
        self.net_.eval()
        with torch.no_grad():
            out = self.net_(batch.x, batch.sample_cov, previous)
        status = QPStatus(int(out.qp.status[0]))
        if not status.ok:
            warnings.warn(
                f"{self.name}: the portfolio QP on {prices.index[-1]:%Y-%m-%d} ended with "
                f"{status.name} ({status.message}); its best iterate is used, clipped to "
                "the bounds. A turnover limit with a cap can be infeasible when the drifted weights exceed "
                "the cap.",
                stacklevel=3,
            )
        w = np.clip(out.weights[0].double().numpy(), 0.0, None)
        return w / w.sum()

    # -- results ------------------------------------------------------------------------------------

    def diagnostics(self) -> dict[str, pd.DataFrame]:
        """Training curves and per-fit summaries (see :func:`~portfolio_layers.models.reporting.fit_tables`).

        Returns
        -------
        dict
            ``"training"``: one row per (fit date, epoch); ``"fits"``: one row per fit, with the decision
            layer's kept parameters.
        """
        return fit_tables(self.histories_)

    @property
    def history_(self) -> TrainHistory | None:
        """History of the last fit."""
        return self.histories_[-1][1] if self.histories_ else None
