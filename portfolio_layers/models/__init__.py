"""End-to-end portfolio models: encoder -> risk and return heads -> differentiable QP -> weights.

- :mod:`~portfolio_layers.models.heads`: PSD risk head (factor structure, learned blend toward the sample
  covariance) and return head;
- :mod:`~portfolio_layers.models.encoders`: the DEQ encoder and the ``mlp``/``lstm`` baselines;
- :mod:`~portfolio_layers.models.model`: :class:`E2ENet` (learnable risk aversion, portfolio QP layer);
- :mod:`~portfolio_layers.models.losses`: negative Sharpe/Sortino/utility on net returns of the next ``H``
  rows, consistent with the backtest engine (drift, ``cost_bps * turnover``), auxiliary MSE;
- :mod:`~portfolio_layers.models.training`: the training loop, early stopping;
- :mod:`~portfolio_layers.models.checkpoints`: checkpoints of fits, damaged or unsafe files reported by name;
- :mod:`~portfolio_layers.models.checks`: the checks shared by the entry points (settings, prices, weights);
- :mod:`~portfolio_layers.models.strategy`: :class:`E2EPortfolio` (``fit``/``weights``), an engine strategy;
- :mod:`~portfolio_layers.models.decision`: the turnover-aware decision layer (L1 cost against the drifted
  previous weights, a gated prior at equal weight);
- :mod:`~portfolio_layers.models.dro`: E2E-DRO decision layers (nominal QP, Hellinger/TV robust layers);
- :mod:`~portfolio_layers.models.e2edro`: :class:`DROPortfolio`, the E2E-DRO strategies.
"""

from __future__ import annotations

from portfolio_layers.models.checkpoints import load_checkpoint, restore_fit, save_checkpoint
from portfolio_layers.models.decision import DecisionLayer, cost_per_year
from portfolio_layers.models.dro import (
    AMBIGUITY_SETS,
    DROLayer,
    NominalLayer,
    dro_layer,
    error_windows,
    nominal_layer,
    prediction_errors,
)
from portfolio_layers.models.e2edro import DROPortfolio
from portfolio_layers.models.encoders import ENCODERS, LSTMEncoder, MLPEncoder, make_encoder
from portfolio_layers.models.heads import ReturnHead, RiskHead, sample_covariance
from portfolio_layers.models.losses import (
    mse_loss,
    negative_sharpe,
    negative_sortino,
    negative_utility,
    portfolio_loss,
    portfolio_returns,
    turnover,
)
from portfolio_layers.models.model import E2ENet, NetOutput, portfolio_qp_layer
from portfolio_layers.models.samples import Batch, WindowData, drift_weights
from portfolio_layers.models.strategy import E2EPortfolio
from portfolio_layers.models.synthetic import planted_market
from portfolio_layers.models.training import TrainConfig, TrainHistory, train

__all__ = [
    "AMBIGUITY_SETS",
    "ENCODERS",
    "Batch",
    "DROLayer",
    "DROPortfolio",
    "DecisionLayer",
    "E2ENet",
    "E2EPortfolio",
    "LSTMEncoder",
    "MLPEncoder",
    "NominalLayer",
    "NetOutput",
    "ReturnHead",
    "RiskHead",
    "TrainConfig",
    "TrainHistory",
    "WindowData",
    "cost_per_year",
    "drift_weights",
    "dro_layer",
    "error_windows",
    "load_checkpoint",
    "make_encoder",
    "mse_loss",
    "negative_sharpe",
    "negative_sortino",
    "negative_utility",
    "nominal_layer",
    "planted_market",
    "portfolio_loss",
    "portfolio_qp_layer",
    "portfolio_returns",
    "prediction_errors",
    "restore_fit",
    "sample_covariance",
    "save_checkpoint",
    "train",
    "turnover",
]
