"""Building the network of an :class:`~portfolio_layers.models.strategy.E2EPortfolio` (kept apart from the
strategy's data and fitting code): encoder, heads and the turnover-aware decision layer."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from portfolio_layers.errors import ConfigError
from portfolio_layers.models.decision import DecisionLayer, cost_per_year
from portfolio_layers.models.encoders import make_encoder
from portfolio_layers.models.model import E2ENet
from portfolio_layers.models.training import TrainConfig

__all__ = ["PTO_PRIOR", "NetSpec", "build_net", "prior_init", "risk_form_field", "threads"]


class NetSpec(Protocol):
    """The settings of a network, as an :class:`~portfolio_layers.models.strategy.E2EPortfolio` holds them
    (a protocol, so that this module does not import the strategy that imports it)."""

    encoder: str
    encoder_options: Mapping[str, Any]
    d_model: int
    n_factors: int
    max_weight: float | None
    turnover_limit: float | None
    rebalance: int
    periods_per_year: float
    decision_cost: float
    prior: bool
    prior_gate: float | None
    blend_sample_cov: bool
    blend_init: float
    risk_aversion: float
    return_scale: float
    learn_risk_aversion: bool
    risk_form: str
    train: TrainConfig


@dataclasses.dataclass(frozen=True)
class _Choice:
    """The values a string setting accepts (checked by :func:`~.checks.check_fields`)."""

    values: tuple[str, ...]

    def check(self, where: str, value: object) -> None:
        if value not in self.values:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, self.values))}, got {value!r}.")


def risk_form_field() -> Any:
    """The ``risk_form`` setting of a strategy, ``"auto"`` (default) or ``"dense"``, checked at construction.

    ``"factor"`` is not offered: the strategy's samples follow ``"auto"``
    (:class:`~portfolio_layers.models.samples.WindowData`), which gives dense sample covariances for at most
    :data:`~portfolio_layers.models.heads.FACTOR_MIN_ASSETS` assets. A setting of the run (left out of the
    checkpoint fingerprint): the dense and factor forms give the same weights and gradients up to rounding.
    """
    return dataclasses.field(default="auto", metadata={"run": True, "range": _Choice(("auto", "dense"))})


#: Gate ``tau`` of the prior at equal weight for the two-stage ``loss="mse"`` model, which cannot learn it
#: (its training never solves the QP); chosen on the development period (see backtests/results).
PTO_PRIOR = 1.0


def prior_init(model: NetSpec) -> float:
    """The initial gate ``tau`` of the prior: ``model.prior_gate``, or 0 (an end-to-end model starts at equal
    weight and learns ``tau``), or :data:`PTO_PRIOR` for ``loss="mse"``."""
    if model.prior_gate is not None:
        return float(model.prior_gate)
    return PTO_PRIOR if model.train.loss == "mse" else 0.0


def build_net(model: NetSpec, n_assets: int, n_features: int, dtype: torch.dtype) -> E2ENet:
    """The network of ``model`` for ``n_assets`` assets and ``n_features`` features, seeded by its seed.

    The decision layer's cost is ``cost_per_year(train.cost_bps, periods_per_year, rebalance)`` times the
    learned multiplier (initially ``decision_cost``; 0 drops the term). ``loss="mse"`` scores the dense
    covariance, so its network is dense (``risk_form="auto"``; ``"factor"`` is refused).
    """
    risk_form = model.risk_form
    if model.train.loss == "mse":
        if risk_form == "factor":
            raise ConfigError(
                "risk_form='factor' does not support loss='mse' (its loss compares the dense covariance with "
                "realised second moments); use risk_form='auto' or 'dense'"
            )
        risk_form = "dense"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.train.seed)
        encoder = make_encoder(model.encoder, n_features, model.d_model, **model.encoder_options)
        layer = DecisionLayer(
            n_assets,
            max_weight=model.max_weight,
            turnover_limit=model.turnover_limit,
            cost=cost_per_year(model.train.cost_bps, model.periods_per_year, model.rebalance),
            cost_multiplier=model.decision_cost,
            prior=model.prior,
            prior_init=prior_init(model),
        )
        net = E2ENet(
            encoder,
            model.d_model,
            layer,
            n_factors=model.n_factors,
            blend_sample_cov=model.blend_sample_cov,
            blend_init=model.blend_init,
            risk_aversion=model.risk_aversion,
            return_scale=model.return_scale,
            learn_risk_aversion=model.learn_risk_aversion,
            risk_form=risk_form,
        )
    return net.to(dtype)


@contextlib.contextmanager
def threads(n: int | None):
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
