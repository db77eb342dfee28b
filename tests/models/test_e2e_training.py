"""The training loop, samples and checkpoints, on a small stand-in network (no QP needed)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from portfolio_layers.errors import ConfigError, DataError
from portfolio_layers.models import training as training_module
from portfolio_layers.models.checkpoints import load_checkpoint, save_checkpoint
from portfolio_layers.models.model import NetOutput
from portfolio_layers.models.samples import WindowData
from portfolio_layers.models.training import TrainConfig, TrainHistory, split_rows, train


def trailing_features(prices, windows=(1, 5, 20)):
    """Causal features (rows, n, F): trailing mean log returns over a few windows, scaled to O(1)."""
    logret = np.log(prices).diff()
    return np.stack([logret.rolling(w).mean().to_numpy() * 100.0 for w in windows], axis=-1)


class SoftmaxNet(nn.Module):
    """Weights = softmax of a linear score of the last feature row: enough to learn the planted signal."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.score = nn.Linear(n_features, 1)

    def predict(self, x, sample_cov=None):
        mu = self.score(x[:, -1]).squeeze(-1)
        return NetOutput(None, mu, sample_cov, torch.tensor(1.0))

    def forward(self, x, sample_cov=None, previous=None):
        pred = self.predict(x, sample_cov)
        return NetOutput(torch.softmax(pred.mu, -1), pred.mu, pred.cov, pred.risk_aversion)


def _data(prices, **kw):
    returns = prices.pct_change().to_numpy()
    opts = dict(window=5, cov_window=20, horizon=10, rebalance=5)
    opts.update(kw)
    return WindowData(trailing_features(prices), returns, **opts)


def test_samples_stay_inside_the_block_and_match_the_arrays(market):
    data = _data(market)
    rows = data.decision_rows()
    assert data.warmup == 20  # 20-row rolling mean of returns starting at row 1
    assert rows[0] == max(20 + 5 - 1, 20) + 5 and rows[-1] + 10 == len(market) - 1
    batch = data.batch(rows[[0, -1]])
    returns = market.pct_change().to_numpy()
    np.testing.assert_allclose(batch.future[1].numpy(), returns[rows[-1] + 1 : rows[-1] + 11])
    np.testing.assert_allclose(batch.drift[0, 0].numpy(), returns[rows[0] - 4 : rows[0] + 1])
    np.testing.assert_allclose(batch.x[0, -1].numpy(), trailing_features(market)[rows[0]])
    np.testing.assert_allclose(
        batch.sample_cov[0].numpy(), np.cov(returns[rows[0] - 19 : rows[0] + 1].T) * 252, rtol=1e-10
    )
    with pytest.raises(DataError, match="inside the block"):
        data.batch([rows[-1] + 1])


def test_validation_split_is_later_and_purged():
    rows = np.arange(100, 200)
    train_rows, val_rows = split_rows(rows, 0.2, horizon=10)
    assert val_rows[0] == 180 and len(val_rows) == 20
    assert train_rows.max() + 10 < val_rows.min()


def test_training_decreases_the_loss_and_beats_equal_weight(market):
    data = _data(market)
    torch.manual_seed(0)
    net = SoftmaxNet(3).double()
    history = train(net, data, TrainConfig(epochs=15, lr=0.05, patience=15, cost_bps=0.0))
    assert history.train_loss[-1] < history.train_loss[0]
    assert len(history.val_loss) == len(history.train_loss) and history.n_val > 0
    # On the validation rows the learned weights beat equal weight (loss = -Sharpe).
    from portfolio_layers.models.losses import portfolio_loss

    batch = data.batch(data.decision_rows()[-100:])
    with torch.no_grad():
        learned = portfolio_loss("sharpe", net(batch.x, batch.sample_cov).weights, batch.future)
    equal = portfolio_loss("sharpe", torch.full_like(batch.future[:, 0], 1 / 5), batch.future)
    assert float(learned) < float(equal) - 0.5


def test_training_is_deterministic_for_a_seed(market):
    data = _data(market)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        net = SoftmaxNet(3).double()
        train(net, data, TrainConfig(epochs=2, seed=3, cost_bps=10.0))
        states.append(net.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_checkpoint_round_trip(tmp_path, market):
    data = _data(market)
    net = SoftmaxNet(3).double()
    history = train(net, data, TrainConfig(epochs=2))
    path = save_checkpoint(tmp_path / "ck" / "model.pt", net, history=history.to_dict(), meta={"fold": 3})
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_checkpoint(path)
    fresh = SoftmaxNet(3).double()
    fresh.load_state_dict(loaded["model"])
    batch = data.batch(data.decision_rows()[:4])
    torch.testing.assert_close(fresh(batch.x).weights, net(batch.x).weights)
    assert TrainHistory.from_dict(loaded["history"]) == history
    assert loaded["meta"] == {"fold": 3}
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_bad_config_and_too_short_blocks(market):
    with pytest.raises(ConfigError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 0.1})
    with pytest.raises(ConfigError, match="unknown loss"):
        TrainConfig(loss="calmar")
    with pytest.raises(DataError, match="training samples"):
        train(SoftmaxNet(3).double(), _data(market.iloc[:45]), TrainConfig(epochs=1))


def test_a_non_finite_step_is_skipped_not_applied(market):
    class Flaky(SoftmaxNet):
        calls = 0

        def forward(self, x, sample_cov=None, previous=None):
            out = super().forward(x, sample_cov, previous)
            if self.training:
                Flaky.calls += 1
                if Flaky.calls == 2:  # one poisoned training step
                    return NetOutput(out.weights * float("nan"), out.mu, out.cov, out.risk_aversion)
            return out

    torch.manual_seed(0)
    net = Flaky(3).double()
    history = train(net, _data(market), TrainConfig(epochs=2, patience=5, cost_bps=0.0))
    assert sum(d["skipped_steps"] for d in history.diagnostics) == 1
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert np.isfinite(history.train_loss).all()


def test_a_step_on_a_failed_solve_is_skipped_and_reported(market, caplog):
    class Unsolved(SoftmaxNet):
        """Reports a failed QP element on every training batch: its implicit gradient would be wrong."""

        def forward(self, x, sample_cov=None, previous=None):
            out = super().forward(x, sample_cov, previous)
            if self.training:
                status = torch.zeros(x.shape[0], dtype=torch.int64)
                status[0] = 2
                qp = SimpleNamespace(status=status, iterations=torch.full_like(status, 50))
                return NetOutput(out.weights, out.mu, out.cov, out.risk_aversion, qp=qp)
            return out

    torch.manual_seed(0)
    net = Unsolved(3).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="portfolio_layers.models.training"):
        history = train(net, _data(market), TrainConfig(epochs=2, patience=5), desc="fold-x")
    steps = sum(d["skipped_steps"] for d in history.diagnostics)
    assert steps > 0 and all(d["qp_failed"] > 0 for d in history.diagnostics)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])  # nothing was applied
    assert f"fold-x: {steps} optimizer steps skipped" in caplog.text


def test_a_non_finite_starting_validation_loss_does_not_discard_training(market, monkeypatch):
    real = training_module._evaluate
    calls = []

    def first_nan(*args):
        calls.append(1)
        return float("nan") if len(calls) == 1 else real(*args)

    monkeypatch.setattr(training_module, "_evaluate", first_nan)
    torch.manual_seed(0)
    history = train(SoftmaxNet(3).double(), _data(market), TrainConfig(epochs=3, patience=1))
    assert np.isnan(history.initial_val_loss)
    assert history.best_epoch >= 0  # an epoch was kept, not the untrained start


def test_global_random_draws_inside_training_are_seeded_and_isolated(market):
    class Noisy(SoftmaxNet):
        """Draws from torch's global generator in training, like the DEQ's Hutchinson penalty."""

        def forward(self, x, sample_cov=None, previous=None):
            out = super().forward(x, sample_cov, previous)
            if self.training:
                noise = 1.0 + 0.1 * torch.randn(out.mu.shape, dtype=out.mu.dtype)
                return NetOutput(torch.softmax(out.mu * noise, -1), out.mu, out.cov, out.risk_aversion)
            return out

    states = []
    for outside in (0, 1):
        torch.manual_seed(0)
        net = Noisy(3).double()
        torch.manual_seed(outside)  # the caller's state differs; training must not depend on it
        caller = torch.random.get_rng_state()
        train(net, _data(market), TrainConfig(epochs=2, seed=3))
        assert torch.equal(torch.random.get_rng_state(), caller)  # and is left as it was
        states.append(net.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])
