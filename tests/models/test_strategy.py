"""E2EPortfolio directly: fit and weights, the training settings it takes, the checkpoint fingerprint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from portfolio_layers.deq import Anderson
from portfolio_layers.errors import ConfigError, DataError
from portfolio_layers.models.strategy import E2E_TRAIN, E2EPortfolio
from portfolio_layers.models.synthetic import planted_market
from portfolio_layers.models.training import TrainConfig

SMALL = {"d_model": 8, "window": 10, "cov_window": 40, "rebalance": 5}
TRAIN = {"epochs": 1, "stride": 3, "lr": 0.01}
# A valid value other than the E2E default for every TrainConfig field.
CHANGED = {
    "loss": "sortino",
    "epochs": 9,
    "batch_size": 16,
    "lr": 0.01,
    "weight_decay": 0.1,
    "clip_norm": 2.0,
    "val_fraction": 0.3,
    "patience": 5,
    "stride": 1,
    "cost_bps": 5.0,
    "chain": 2,
    "risk_aversion": 3.0,
    "aux_mse": 0.5,
    "jacobian_weight": 0.2,
    "equal_weight_competes": False,
    "seed": 1,
}
JACOBIAN = {"train": {"jacobian_weight": 0.1}, "encoder_options": {"jacobian_samples": 1}}


def _model(**kw) -> E2EPortfolio:
    return E2EPortfolio(**{"train": TRAIN, **SMALL, **kw})


@pytest.fixture(scope="module")
def prices():
    return planted_market(n_assets=4, n_rows=300, seed=2)


@pytest.mark.parametrize("encoder", ["deq", "mlp"])
def test_fit_then_weights_are_long_only_and_fully_invested(prices, encoder):
    model = _model(encoder=encoder, max_weight=0.4).fit(prices)
    for window in (prices.iloc[-151:], prices.iloc[-200:-40]):
        w = model.weights(window)
        assert w.shape == (4,) and np.isfinite(w).all()
        assert w.min() >= 0 and w.max() <= 0.4 + 1e-6 and w.sum() == pytest.approx(1.0, abs=1e-9)
    fits = model.diagnostics()["fits"]
    assert fits["from_checkpoint"].tolist() == [False] and model.history_.n_train > 0


def test_weights_before_fit_and_on_other_assets_raise_clear_errors(prices):
    with pytest.raises(ConfigError, match=r"call fit\(prices\) before weights"):
        _model().weights(prices)
    model = _model(encoder="mlp").fit(prices)
    with pytest.raises(DataError, match="same assets in the same order"):
        model.weights(prices[prices.columns[::-1]])


def test_train_accepts_a_config_or_a_mapping_over_the_e2e_defaults():
    assert E2EPortfolio().train == E2E_TRAIN
    assert _model().train == dataclasses.replace(E2E_TRAIN, **TRAIN)
    config = TrainConfig(epochs=2, loss="utility")
    assert E2EPortfolio(train=config).train == config
    shorthand = E2EPortfolio(train=config, loss="mse", seed=4, cost_bps=0.0).train
    assert shorthand == dataclasses.replace(config, loss="mse", seed=4, cost_bps=0.0)
    with pytest.raises(ConfigError, match="unknown TrainConfig keys"):
        E2EPortfolio(train={"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="positive"):
        E2EPortfolio(train={"epochs": 0})


def test_the_fingerprint_follows_every_training_setting():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(TrainConfig)}
    base = _model(**JACOBIAN)._fingerprint
    for name, value in CHANGED.items():
        other = _model(**{**JACOBIAN, "train": {**JACOBIAN["train"], name: value}})
        assert other._fingerprint != base, name


def test_the_fingerprint_follows_the_model_but_not_the_run_settings(tmp_path):
    base = _model()._fingerprint
    assert _model(d_model=16)._fingerprint != base
    assert _model(encoder_options={"solver": Anderson(max_iter=20)})._fingerprint != base
    same = [
        _model(name="other", checkpoint_dir=str(tmp_path), progress=True, num_threads=None),
        _model(train=dataclasses.replace(E2E_TRAIN, **TRAIN)),
        _model(seed=0, cost_bps=10.0),  # the shorthands at the values train already has
        _model(horizon=5),  # the default horizon is the rebalance step
    ]
    assert [m._fingerprint for m in same] == [base] * len(same)
    options = {"solver": Anderson(max_iter=20), "jacobian_samples": 1}
    reordered = dict(reversed(options.items()))
    train = {**TRAIN, "jacobian_weight": 0.1}
    assert _model(train=train, encoder_options=options)._fingerprint == (
        _model(train=train, encoder_options=reordered)._fingerprint
    )


def test_a_checkpoint_of_another_configuration_or_other_prices_is_not_loaded(prices, tmp_path):
    first = _model(encoder="mlp", checkpoint_dir=str(tmp_path)).fit(prices)
    assert first.diagnostics()["fits"]["from_checkpoint"].tolist() == [False]
    again = _model(encoder="mlp", checkpoint_dir=str(tmp_path)).fit(prices)
    assert again.diagnostics()["fits"]["from_checkpoint"].tolist() == [True]
    other_lr = _model(encoder="mlp", train={**TRAIN, "lr": 0.02}, checkpoint_dir=str(tmp_path)).fit(prices)
    other_prices = _model(encoder="mlp", checkpoint_dir=str(tmp_path)).fit(prices.iloc[1:])
    for model in (other_lr, other_prices):
        assert model.diagnostics()["fits"]["from_checkpoint"].tolist() == [False]
    assert len(list(tmp_path.glob("e2e-*.pt"))) == 3
