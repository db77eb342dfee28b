"""The differentiable E2E-DRO model (Costa & Iyengar, 2023): linear prediction -> errors -> decision layer.

Rows are positions ``0 .. T-1`` of one table of features ``x`` and simple returns ``r`` (``r[s]`` is the
return of row ``s``, from the price of row ``s-1``; ``r[0]`` is never used). The features of row ``s``
predict the returns of row ``s+1``: ``y_hat[s] = W x[s] + b``. A decision at row ``u`` (its weights earn
the returns of rows ``u+1, ...``) sees

- the prediction errors ``eps[s] = r[s] - y_hat[s-1]`` of the last ``N`` rows ``s = u-N+1 .. u``, all
  recomputed with the current ``(W, b)``, so that the gradient of the loss reaches ``W`` and ``b`` through
  the risk term as well as through the predicted returns;
- the prediction ``y_hat[u]`` of the next row;

and passes them to the decision layer of :mod:`portfolio_layers.models.dro` with the learned ``gamma``
(and ``delta``). The training loss of a decision is the paper's: the negative Sharpe ratio of the fixed
weights ``z`` over the next ``H`` rows ``u+1 .. u+H`` (``sum_i z_i r[s, i]`` on each row, i.e. rebalanced
to ``z`` every row, as the authors' code scores it; annualised here with ``sqrt(periods_per_year)``), plus
``mse_weight / n`` times the mean squared error of ``y_hat[u]`` against ``r[u+1]`` (the authors' code
divides its factor 0.5 by the number of assets ``n`` in the same way).

With ``history = L > 0`` the prediction also reads the price history through this package's DEQ encoder:
``y_hat[s] = W x[s] + b + sigma / sqrt(d) * v' emb[s]``, where ``emb[s]`` (shape (n, d)) is
:class:`~portfolio_layers.deq.encoder.DEQEncoder` applied to the rows ``s-L+1 .. s``, each asset seeing its
own return and the features of the row (standardised by the training rows' scales), ``v`` a vector shared by
the assets (zero at the start, so an untrained network predicts as the linear one) and ``sigma`` the
training returns' standard deviation. Rows before the panel's first return read as zeros; a decision with
``N + L`` earlier rows reads none of them (``DROPortfolio.weights`` asks for that many).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from portfolio_layers.deq.encoder import DEQEncoder
from portfolio_layers.errors import ConfigError, DataError, ShapeError, SolverError
from portfolio_layers.models.dro import dro_layer, error_windows, nominal_layer

#: Decision layers: the nominal QP and the robust layers over a Hellinger or a total-variation ball.
LAYERS = ("nominal", "hellinger", "tv")
#: Smallest value of ``gamma`` and ``delta``: they are projected onto ``[PARAM_FLOOR, inf)`` after every
#: optimizer step (as in the authors' code), which keeps them positive.
PARAM_FLOOR = 1e-4
#: Largest share of a batch that :meth:`DRONet.forward` re-solves with the cone backend when the native
#: robust solver reports elements it could not solve; more failures are raised.
FALLBACK_SHARE = 0.05

logger = logging.getLogger(__name__)

__all__ = [
    "LAYERS",
    "PARAM_FLOOR",
    "DRONet",
    "Panel",
    "TrainSettings",
    "least_squares",
    "panel_loss",
    "paper_initial_values",
    "sharpe_mse_loss",
    "train_net",
]


@dataclass(frozen=True)
class Panel:
    """Features and returns of consecutive rows (see the module docstring).

    Attributes
    ----------
    x : Tensor of shape (T, d)
        Features of rows ``0 .. T-1``.
    r : Tensor of shape (T, n)
        Simple returns of the same rows (``r[0]`` unused, set to 0).
    """

    x: Tensor
    r: Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 2 or self.r.dim() != 2 or self.x.shape[0] != self.r.shape[0]:
            raise ShapeError(
                f"Panel needs x (T, d) and r (T, n) with the same rows, got {tuple(self.x.shape)} and "
                f"{tuple(self.r.shape)}"
            )
        if not (bool(torch.isfinite(self.x).all()) and bool(torch.isfinite(self.r[1:]).all())):
            raise DataError("the features or returns hold NaN or infinite values in the rows used")

    @property
    def rows(self) -> int:
        """``T``."""
        return self.x.shape[0]

    def decision_rows(self, first: int, last: int) -> Tensor:
        """Rows ``first .. last`` (inclusive) as a LongTensor (empty when ``last < first``)."""
        return torch.arange(first, max(first, last + 1), dtype=torch.long)

    def future(self, rows: Tensor, horizon: int) -> Tensor:
        """Returns of the ``horizon`` rows after each decision row, shape (B, H, n)."""
        if len(rows) and int(rows.max()) + horizon > self.rows - 1:
            raise DataError(
                f"a decision at row {int(rows.max())} needs {horizon} later rows; the panel has {self.rows}"
            )
        return self.r.unfold(0, horizon, 1).transpose(-1, -2)[rows + 1]


def least_squares(x: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Ordinary least squares with an intercept of ``r[s]`` on ``x[s-1]`` over all rows ``s = 1 .. T-1``.

    Parameters
    ----------
    x : Tensor of shape (T, d)
        Features.
    r : Tensor of shape (T, n)
        Returns (``r[0]`` unused).

    Returns
    -------
    weight : Tensor of shape (n, d)
    bias : Tensor of shape (n,)
    """
    X = torch.cat([torch.ones(x.shape[0] - 1, 1, dtype=x.dtype), x[:-1]], 1)
    if X.shape[0] < X.shape[1]:
        raise DataError(
            f"least squares of the returns on {x.shape[1]} features with an intercept needs at least "
            f"{X.shape[1] + 1} rows, got {x.shape[0]}"
        )
    theta = torch.linalg.lstsq(X, r[1:]).solution  # (d + 1, n)
    return theta[1:].T.contiguous(), theta[0].clone()


def paper_initial_values(layer: str, N: int, seed: int) -> tuple[float, float | None]:
    """Initial ``gamma`` and ``delta`` drawn as in the authors' code, from ``seed``.

    ``gamma ~ U(0.02, 0.1)``; ``delta ~ U(c/10, c/2)`` with ``c = 1 - 1/sqrt(N)`` (Hellinger) or
    ``c = 1 - 1/N`` (total variation); ``delta`` is None for the nominal layer.
    """
    rng = np.random.default_rng(seed)
    gamma = float(rng.uniform(0.02, 0.1))
    if layer == "nominal":
        return gamma, None
    c = 1 - 1 / math.sqrt(N) if layer == "hellinger" else 1 - 1 / N
    return gamma, float(rng.uniform(c / 10, c / 2))


def sharpe_mse_loss(
    z: Tensor, y_hat: Tensor, future: Tensor, *, mse_weight: float, periods_per_year: float
) -> Tensor:
    """Mean over decisions of ``-sqrt(A) mean(p) / std(p) + (mse_weight / n) mean_i (y_hat_i - r_i)^2``.

    Parameters
    ----------
    z : Tensor of shape (B, n)
        Weights of each decision.
    y_hat : Tensor of shape (B, n)
        Predicted returns of the row after each decision.
    future : Tensor of shape (B, H, n)
        Realised returns of the ``H >= 2`` rows after each decision; ``p = future @ z`` (weights
        rebalanced to ``z`` every row) and the MSE uses its first row.
    mse_weight : float
    periods_per_year : float
        ``A``, annualises the Sharpe ratio (``std`` with ``ddof=1``).

    Returns
    -------
    Tensor of shape ()
    """
    if future.shape[-2] < 2:
        raise ConfigError(f"the Sharpe loss needs a horizon of at least 2 rows, got {future.shape[-2]}")
    p = (future @ z[..., None]).squeeze(-1)
    sharpe = p.mean(-1) / p.std(-1).clamp_min(1e-12) * math.sqrt(periods_per_year)
    mse = (y_hat - future[:, 0]).square().mean(-1)
    return (-sharpe + mse_weight / z.shape[-1] * mse).mean()


class DRONet(nn.Module):
    """Linear prediction layer, prediction-error risk window and decision layer (module docstring).

    Parameters
    ----------
    n_features, n_assets : int
        ``d`` and ``n``.
    layer : {"nominal", "hellinger", "tv"}
    N : int
        Rows of prediction errors in the risk window.
    gamma, delta : float
        Initial risk-return trade-off and ambiguity size (``delta`` unused by the nominal layer).
    learn : tuple of str
        Parameters that carry gradients, among ``"theta"`` (``W``, ``b`` and the history encoder),
        ``"gamma"``, ``"delta"``.
    history : int
        ``L``, rows of price history read by the DEQ encoder (module docstring); 0 for the paper's linear
        prediction.
    d_model : int
        Width ``d`` of the encoder's embeddings.
    scales : (float, Tensor of shape (d,)), optional
        Standard deviations of the returns and of each feature that standardise the encoder's inputs (and
        ``sigma``); required when ``history > 0`` (take them from the training rows).
    """

    def __init__(
        self,
        n_features: int,
        n_assets: int,
        *,
        layer: str,
        N: int,
        gamma: float,
        delta: float | None,
        learn: tuple[str, ...] = ("theta", "gamma", "delta"),
        history: int = 0,
        d_model: int = 16,
        scales: tuple[float, Tensor] | None = None,
    ) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ConfigError(f"unknown decision layer {layer!r}; choose one of {LAYERS}")
        if layer != "nominal" and delta is None:
            raise ConfigError(f"the {layer} layer needs an initial delta")
        self.layer, self.N = layer, N
        f64 = torch.float64
        self.weight = nn.Parameter(torch.zeros(n_assets, n_features, dtype=f64), "theta" in learn)
        self.bias = nn.Parameter(torch.zeros(n_assets, dtype=f64), "theta" in learn)
        self.gamma = nn.Parameter(torch.tensor(float(gamma), dtype=f64), "gamma" in learn)
        robust = layer != "nominal"
        self.delta = nn.Parameter(
            torch.tensor(float(delta) if robust else 0.0, dtype=f64), robust and "delta" in learn
        )
        self.fallbacks = 0
        self.history = int(history)
        self.encoder: DEQEncoder | None = None
        if self.history > 0:
            if scales is None:
                raise ConfigError("a history encoder needs the scales of the training returns and features")
            self.encoder = DEQEncoder(1 + n_features, d_model).double()
            self.head = nn.Linear(d_model, 1, bias=False, dtype=f64)
            nn.init.zeros_(self.head.weight)
            scale_x = torch.as_tensor(scales[1], dtype=f64).clamp_min(1e-12)
            self.register_buffer("scale_r", torch.tensor(max(float(scales[0]), 1e-12), dtype=f64))
            self.register_buffer("scale_x", scale_x)
            for p in [*self.encoder.parameters(), *self.head.parameters()]:
                p.requires_grad_("theta" in learn)

    def history_term(self, panel: Panel, first: int, last: int) -> Tensor:
        """The encoder's part of ``y_hat[s]`` for rows ``s = first .. last - 1``, shape (last - first, n)."""
        L = self.history
        n = panel.r.shape[1]
        r = torch.cat([panel.r.new_zeros(L - 1, n), panel.r[:last]]) / self.scale_r  # r[0] = 0 is unused
        x = torch.cat([panel.x.new_zeros(L - 1, panel.x.shape[1]), panel.x[:last]]) / self.scale_x
        rows = slice(first, last + L - 1)  # row s of the panel at s + L - 1: windows of rows s-L+1 .. s
        inputs = torch.cat([r[rows, :, None], x[rows, None, :].expand(-1, n, -1)], -1)  # (S + L - 1, n, 1+d)
        emb, _ = self.encoder.rolling(inputs, L)
        return self.head(emb)[..., 0] * (self.scale_r / math.sqrt(emb.shape[-1]))

    def set_theta(self, weight: Tensor, bias: Tensor) -> None:
        """Copy prediction weights (for example :func:`least_squares`) into the layer."""
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)

    def project(self) -> None:
        """Clamp ``gamma`` and ``delta`` to ``[PARAM_FLOOR, inf)`` (after an optimizer step)."""
        with torch.no_grad():
            self.gamma.clamp_(min=PARAM_FLOOR)
            if self.layer != "nominal":
                self.delta.clamp_(min=PARAM_FLOOR)

    def forward(self, panel: Panel, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Weights and predictions of the decisions at ``rows`` (each ``>= N``).

        Parameters
        ----------
        panel : Panel
            Features and returns; only rows ``<= max(rows)`` are used.
        rows : LongTensor of shape (B,)

        Returns
        -------
        z : Tensor of shape (B, n)
            Long-only weights summing to 1.
        y_hat : Tensor of shape (B, n)
            The predictions ``y_hat[u]`` of the rows after the decisions.
        """
        if len(rows) == 0:
            raise DataError("no decision rows: the window is too short for N error rows and the horizon")
        if int(rows.min()) < self.N:
            raise DataError(f"a decision at row {int(rows.min())} needs N = {self.N} earlier error rows")
        last = int(rows.max()) + 1
        y_all = panel.x[:last] @ self.weight.T + self.bias  # (last, n): y_hat[s] predicts r[s + 1]
        if self.encoder is not None:
            first = int(rows.min()) - self.N  # the earliest prediction a risk window uses
            y_all = torch.cat([y_all[:first], y_all[first:] + self.history_term(panel, first, last)])
        errors = panel.r[1:last] - y_all[:-1]  # errors[i] = eps[i + 1]
        windows = error_windows(errors, self.N)[rows - self.N]  # eps[u - N + 1 .. u]
        y_hat = y_all[rows]
        if self.layer == "nominal":
            z = nominal_layer(windows, y_hat, self.gamma)
        else:
            z = self._robust(windows, y_hat)
        return z, y_hat

    def _robust(self, E: Tensor, y: Tensor) -> Tensor:
        """:func:`dro_layer`; elements its native solver reports as failed are solved as cone programs.

        A failure of a few elements (at most :data:`FALLBACK_SHARE` of the batch) does not stop training:
        the others are solved again natively and the failed ones by ``backend="cvxpylayers"`` (Clarabel, the
        same program); ``fallbacks`` counts them.
        """
        try:
            return dro_layer(E, y, self.gamma, self.delta, self.layer)
        except SolverError as exc:
            bad = sorted({int(i[0]) for i in exc.indices})
            if not bad or len(bad) > FALLBACK_SHARE * len(E):
                raise
            logger.warning(
                "%s layer: %d of %d elements re-solved as cone programs", self.layer, len(bad), len(E)
            )
            self.fallbacks += len(bad)
            failed = torch.zeros(len(E), dtype=torch.bool)
            failed[bad] = True
            z = torch.zeros_like(y)
            z = z.index_put((~failed,), dro_layer(E[~failed], y[~failed], self.gamma, self.delta, self.layer))
            cone = dro_layer(E[failed], y[failed], self.gamma, self.delta, self.layer, backend="cvxpylayers")
            return z.index_put((failed,), cone)


@dataclass(frozen=True)
class TrainSettings:
    """Settings of :func:`train_net` (one full-batch Adam step per epoch, as in the authors' code).

    Attributes
    ----------
    lr : float
        Adam learning rate.
    epochs : int
        Optimizer steps; each uses the gradient of the mean loss over every training decision.
    horizon : int
        ``H``, rows after a decision scored by the Sharpe ratio.
    mse_weight : float
        Weight of the prediction MSE (divided by ``n``, see :func:`sharpe_mse_loss`).
    periods_per_year : float
        Annualises the Sharpe ratio of the loss.
    """

    lr: float
    epochs: int
    horizon: int
    mse_weight: float
    periods_per_year: float


def panel_loss(net: DRONet, panel: Panel, rows: Tensor, settings: TrainSettings) -> Tensor:
    """:func:`sharpe_mse_loss` of the decisions of ``net`` at ``rows`` (each needs ``H`` later rows)."""
    z, y_hat = net(panel, rows)
    return sharpe_mse_loss(
        z,
        y_hat,
        panel.future(rows, settings.horizon),
        mse_weight=settings.mse_weight,
        periods_per_year=settings.periods_per_year,
    )


def train_net(
    net: DRONet,
    panel: Panel,
    rows: Tensor,
    settings: TrainSettings,
    *,
    validate: tuple[Panel, Tensor, tuple[int, ...]] | None = None,
) -> tuple[list[float], dict[int, float]]:
    """Train ``net`` in place on the decisions at ``rows`` of ``panel``.

    Parameters
    ----------
    net : DRONet
    panel : Panel
    rows : LongTensor of shape (B,)
        Training decision rows; every one needs ``H`` later rows in ``panel`` (no look-ahead past it).
    settings : TrainSettings
    validate : (Panel, LongTensor, tuple of int), optional
        A validation panel, its decision rows and the epochs after which to evaluate the validation loss
        (the same loss, without gradient). Full-batch Adam with a constant learning rate does not depend
        on the number of epochs still to come, so the loss after epoch ``e`` of a long run is the loss of
        a run of ``e`` epochs.

    Returns
    -------
    train_loss : list of float
        The training loss before each step (``epochs`` values).
    val_loss : dict of int to float
        Validation loss after each requested epoch.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter of the network requires gradients")
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    train_loss: list[float] = []
    val_loss: dict[int, float] = {}
    checkpoints = set(validate[2]) if validate is not None else set()
    for epoch in range(1, settings.epochs + 1):
        optimizer.zero_grad()
        loss = panel_loss(net, panel, rows, settings)
        loss.backward()
        optimizer.step()
        net.project()
        train_loss.append(float(loss.detach()))
        if epoch in checkpoints:
            with torch.no_grad():
                val_loss[epoch] = float(panel_loss(net, validate[0], validate[1], settings))
    return train_loss, val_loss
