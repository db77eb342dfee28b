"""The end-to-end model as a walk-forward strategy: ``E2EPortfolio(...).fit(prices).weights(window)``.

``fit(prices)`` computes the per-asset features of :func:`~portfolio_layers.data.features.price_features`
on the given price rows only, standardises them with statistics of those rows, cuts the rows into decision
samples (:class:`~portfolio_layers.models.samples.WindowData`) and trains the network
(:func:`~portfolio_layers.models.training.train`).
Later ``fit`` calls continue from the current parameters (``refit_epochs``), as a walk-forward re-training.
``weights(prices, current)`` runs the network on the last row of the window it is given.

With a ``checkpoint_dir`` every fit is saved under a fingerprint of (configuration, training prices, previous
fit): a walk-forward run that was interrupted and is started again loads the folds it had completed instead of
re-training them, and re-trains from the first missing fold on, with the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from portfolio_layers.errors import ConfigError, DataError
from portfolio_layers.models.encoders import ENCODERS, make_encoder
from portfolio_layers.models.model import E2ENet, portfolio_qp_layer
from portfolio_layers.models.samples import WindowData
from portfolio_layers.models.training import (
    TrainConfig,
    TrainHistory,
    load_checkpoint,
    save_checkpoint,
    train,
)

__all__ = ["E2EPortfolio"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
FEATURE_CLIP = 5.0


@contextlib.contextmanager
def _threads(n: int | None):
    """Set torch's intra-op thread count for a block, then restore it."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class E2EPortfolio:
    """End-to-end portfolio model (encoder -> heads -> QP) trained on a backtest loss; an engine strategy.

    Parameters
    ----------
    name : str
        Strategy name in results.
    encoder : {"deq", "mlp", "lstm"}
        Market-history encoder.
    loss : {"sharpe", "sortino", "utility", "mse"}
        Training objective; ``"mse"`` is the two-stage predict-then-optimize baseline (the QP is not in its
        loss, so its risk aversion stays at ``risk_aversion`` whatever ``learn_risk_aversion`` says).
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
        Bound on ``sum |w - w_prev|`` in the QP (``w_prev`` = drifted weights before the trade).
    cost_bps : float
        Trading cost in the loss (use the backtest's ``cost_bps``).
    utility_risk_aversion : float
        Risk aversion of the ``"utility"`` loss (not of the QP).
    jacobian_weight : float
        Weight of the DEQ's Jacobian penalty in the loss; needs ``encoder_options={"jacobian_samples": k}``.
    epochs, refit_epochs : int
        Epoch budget of the first fit and of each later fit (warm-started from the previous parameters;
        ``refit_epochs=0`` re-trains from scratch with ``epochs`` every time).
    batch_size, lr, weight_decay, clip_norm, val_fraction, patience, stride, aux_mse
        See :class:`~portfolio_layers.models.training.TrainConfig`.
    seed : int
        Seeds the initial parameters and the sample order.
    dtype : {"float64", "float32"}
    encoder_options : dict, optional
        Extra keyword arguments of the encoder (e.g. ``{"max_iter": 20}`` for the DEQ).
    checkpoint_dir : str, optional
        Directory for per-fit checkpoints (resume of interrupted walk-forward runs).
    progress : bool
        Show a progress bar per fit (stderr).
    num_threads : int, optional
        Torch intra-op threads during ``fit`` and ``weights`` (restored afterwards). The tensors are small,
        so one thread is fastest, and several threads slow down badly when the cores are shared (measured
        4x on 2 busy cores). ``None`` keeps the current setting.
    """

    def __init__(
        self,
        *,
        name: str = "e2e",
        encoder: str = "deq",
        loss: str = "sharpe",
        d_model: int = 16,
        n_factors: int = 3,
        window: int = 60,
        cov_window: int = 252,
        horizon: int | None = None,
        rebalance: int = 21,
        blend_sample_cov: bool = True,
        blend_init: float = 0.9,
        risk_aversion: float = 5.0,
        learn_risk_aversion: bool = True,
        return_scale: float = 0.01,
        max_weight: float | None = None,
        turnover_limit: float | None = None,
        cost_bps: float = 10.0,
        utility_risk_aversion: float = 5.0,
        jacobian_weight: float = 0.0,
        epochs: int = 8,
        refit_epochs: int = 3,
        batch_size: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        clip_norm: float = 1.0,
        val_fraction: float = 0.2,
        patience: int = 3,
        stride: int = 2,
        aux_mse: float = 0.0,
        seed: int = 0,
        dtype: str = "float64",
        encoder_options: dict | None = None,
        checkpoint_dir: str | None = None,
        progress: bool = False,
        num_threads: int | None = 1,
    ) -> None:
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if refit_epochs < 0:
            raise ConfigError(f"refit_epochs must be >= 0, got {refit_epochs}")
        if rebalance < 1:
            raise ConfigError(f"rebalance must be >= 1 rows (the decision spacing), got {rebalance}")
        samples = int((encoder_options or {}).get("jacobian_samples", 0))
        if (jacobian_weight > 0) != (samples > 0):
            raise ConfigError(
                "the DEQ's Jacobian penalty needs both jacobian_weight > 0 and encoder_options="
                f"{{'jacobian_samples': k}} with k > 0 (got jacobian_weight={jacobian_weight}, "
                f"jacobian_samples={samples}); set both or neither"
            )
        horizon = rebalance if horizon is None else horizon
        self.name, self.encoder, self.d_model, self.n_factors = name, encoder, d_model, n_factors
        self.window, self.cov_window, self.horizon, self.rebalance = window, cov_window, horizon, rebalance
        self.blend_sample_cov, self.blend_init = blend_sample_cov, blend_init
        self.risk_aversion, self.return_scale = risk_aversion, return_scale
        self.learn_risk_aversion, self.max_weight, self.turnover_limit = (
            learn_risk_aversion,
            max_weight,
            turnover_limit,
        )
        self.epochs, self.refit_epochs, self.seed, self.dtype = epochs, refit_epochs, seed, dtype
        self.encoder_options = dict(encoder_options or {})
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress, self.num_threads = progress, num_threads
        # Validates every training option now (a ConfigError at construction, not at the first fit).
        self.train_config = TrainConfig(
            loss=loss,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            val_fraction=val_fraction,
            patience=patience,
            stride=stride,
            cost_bps=cost_bps,
            risk_aversion=utility_risk_aversion,
            aux_mse=aux_mse,
            jacobian_weight=jacobian_weight,
            seed=seed,
        )
        self.net_: E2ENet | None = None
        self.scaler_: tuple[np.ndarray, np.ndarray] | None = None
        self.assets_: tuple[str, ...] | None = None
        self.histories_: list[tuple[pd.Timestamp, TrainHistory, bool]] = []
        self._fingerprint = hashlib.sha256(repr(self._spec()).encode()).hexdigest()

    def _spec(self) -> tuple:
        return (
            self.encoder,
            self.d_model,
            self.n_factors,
            self.window,
            self.cov_window,
            self.horizon,
            self.rebalance,
            self.blend_sample_cov,
            self.blend_init,
            self.risk_aversion,
            self.return_scale,
            self.learn_risk_aversion,
            self.max_weight,
            self.turnover_limit,
            self.refit_epochs,
            self.dtype,
            sorted(self.encoder_options.items()),
            self.train_config,
        )

    def __repr__(self) -> str:
        return f"E2EPortfolio(name={self.name!r}, encoder={self.encoder!r}, loss={self.train_config.loss!r})"

    # -- data ---------------------------------------------------------------------------------------

    def _features(self, prices: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        from portfolio_layers.data.features import price_features

        if self.assets_ is not None and tuple(map(str, prices.columns)) != self.assets_:
            raise DataError(
                f"{self.name}: the prices have columns {list(prices.columns)} but the model was fitted on "
                f"{list(self.assets_)}; pass the same assets in the same order"
            )
        features = price_features(prices).values
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
            dtype=_DTYPES[self.dtype],
        )

    # -- model --------------------------------------------------------------------------------------

    def _build(self, n_assets: int, n_features: int) -> E2ENet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            encoder = make_encoder(self.encoder, n_features, self.d_model, **self.encoder_options)
            qp_layer = portfolio_qp_layer(
                n_assets,
                max_weight=self.max_weight,
                turnover_limit=self.turnover_limit,
            )
            net = E2ENet(
                encoder,
                self.d_model,
                qp_layer,
                n_factors=self.n_factors,
                blend_sample_cov=self.blend_sample_cov,
                blend_init=self.blend_init,
                risk_aversion=self.risk_aversion,
                return_scale=self.return_scale,
                learn_risk_aversion=self.learn_risk_aversion,
            )
        return net.to(_DTYPES[self.dtype])

    def fit(self, prices: pd.DataFrame) -> E2EPortfolio:
        """Train on these price rows only (the training window); later calls continue training.

        Parameters
        ----------
        prices : DataFrame of shape (rows, n)
            Prices (not returns), date-indexed, one column per asset.

        Returns
        -------
        self
        """
        with _threads(self.num_threads):
            return self._fit(prices)

    def _fit(self, prices: pd.DataFrame) -> E2EPortfolio:
        features, returns = self._features(prices)
        fold = len(self.histories_)
        first = self.net_ is None or self.refit_epochs == 0
        key = self._fold_key(prices)
        if first:
            self.assets_ = tuple(map(str, prices.columns))
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
            state = load_checkpoint(path)
            self.net_.load_state_dict(state["model"])
            history = TrainHistory.from_dict(state["history"])
            self.histories_.append((prices.index[-1], history, True))
            self._fingerprint = key
            return self
        config = dataclasses.replace(
            self.train_config,
            epochs=self.epochs if first else self.refit_epochs,
            seed=self.seed * 100_003 + fold,
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

    def _fold_key(self, prices: pd.DataFrame) -> str:
        digest = hashlib.sha256(self._fingerprint.encode())
        digest.update(str(len(self.histories_)).encode())
        digest.update(np.ascontiguousarray(prices.index.asi8).tobytes())
        digest.update(np.ascontiguousarray(prices.to_numpy(dtype=np.float64)).tobytes())
        digest.update("\x1f".join(map(str, prices.columns)).encode())
        return digest.hexdigest()

    def weights(self, prices: pd.DataFrame, current: np.ndarray | None = None) -> np.ndarray:
        """Target weights at the last row of ``prices``.

        Parameters
        ----------
        prices : DataFrame of shape (rows, n)
            The price rows the strategy may see (``t-L .. t``); needs at least the feature warm-up plus
            ``window`` rows and ``cov_window + 1`` rows.
        current : ndarray of shape (n,), optional
            Drifted weights before the trade (zeros or None before the first trade); used by a turnover
            limit, which binds against ``1/n`` when there are none (the backtest charges it against 0).

        Returns
        -------
        ndarray of shape (n,)
            Long-only weights summing to 1.
        """
        with _threads(self.num_threads):
            return self._weights(prices, current)

    def _weights(self, prices: pd.DataFrame, current: np.ndarray | None = None) -> np.ndarray:
        if self.net_ is None:
            raise ConfigError(f"{self.name}: call fit(prices) before weights(prices)")
        features, returns = self._features(prices)
        batch = self._data(features, returns, 0).latest()
        previous = None
        if current is not None and np.abs(np.sum(current)) > 0:
            previous = torch.as_tensor(np.asarray(current, dtype=np.float64)[None], dtype=_DTYPES[self.dtype])
        self.net_.eval()
        with torch.no_grad():
            out = self.net_(batch.x, batch.sample_cov, previous)
        status = int(out.qp.status[0])
        if status != 0:
            from portfolio_layers.qp import Status

            warnings.warn(
                f"{self.name}: the portfolio QP on {prices.index[-1]:%Y-%m-%d} ended with "
                f"{Status(status).name} ({Status(status).message}); its best iterate is used, clipped to "
                "the bounds. A turnover limit with a cap can be infeasible when the drifted weights exceed "
                "the cap.",
                stacklevel=3,
            )
        w = np.clip(out.weights[0].double().numpy(), 0.0, None)
        return w / w.sum()

    # -- results ------------------------------------------------------------------------------------

    def diagnostics(self) -> dict[str, pd.DataFrame]:
        """Training curves and per-fit summaries.

        Returns
        -------
        dict
            ``"training"``: one row per (fit date, epoch) with ``train_loss``, ``val_loss`` and the DEQ/QP
            diagnostics; ``"fits"``: one row per fit with ``best_epoch``, ``epochs``, ``stopped_early``,
            ``seconds``, ``n_train``, ``n_val``, ``from_checkpoint``.
        """
        curves, fits = [], []
        for date, history, loaded in self.histories_:
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
                }
            )
        return {"training": pd.DataFrame(curves), "fits": pd.DataFrame(fits)}

    @property
    def history_(self) -> TrainHistory | None:
        """History of the last fit."""
        return self.histories_[-1][1] if self.histories_ else None
