"""The end-to-end network and strategy: gradients, learning, no look-ahead, checkpoints, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import portfolio_layers.models.strategy as strategy_module
from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.errors import ConfigError
from portfolio_layers.models.encoders import make_encoder
from portfolio_layers.models.heads import sample_covariance
from portfolio_layers.models.losses import portfolio_loss
from portfolio_layers.models.model import E2ENet, portfolio_qp_layer
from portfolio_layers.models.strategy import E2EPortfolio
from portfolio_layers.models.synthetic import planted_market
from portfolio_layers.registry import build_strategy, make_strategy, strategy_parameters

SMALL = {"d_model": 8, "window": 10, "cov_window": 40, "horizon": 5, "rebalance": 5}


def _net(encoder: str, n: int, F: int, **qp) -> E2ENet:
    torch.manual_seed(0)
    layer = portfolio_qp_layer(n, **qp)
    return E2ENet(make_encoder(encoder, F, 8), 8, layer).double()


def _inputs(batch=6, T=10, n=5, F=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, n, F, generator=g, dtype=torch.float64)
    cov = sample_covariance(0.01 * torch.randn(batch, 40, n, generator=g, dtype=torch.float64)) * 252
    future = 0.01 * torch.randn(batch, 5, n, generator=g, dtype=torch.float64)
    prev = torch.softmax(torch.randn(batch, n, generator=g, dtype=torch.float64), -1)
    return x, cov, future, prev


@pytest.mark.parametrize("encoder", ["deq", "mlp", "lstm"])
def test_gradients_reach_every_parameter(encoder):
    net = _net(encoder, 5, 4, max_weight=0.6)
    x, cov, future, prev = _inputs()
    out = net(x, cov, prev)
    loss = portfolio_loss("sharpe", out.weights, future, prev, cost_bps=10.0)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    encoder_grad = sum(float(p.grad.abs().sum()) for p in net.encoder.parameters())
    assert encoder_grad > 0, "the loss does not reach the encoder"
    assert float(net.raw_risk_aversion.grad.abs()) > 0


def test_weights_respect_the_constraints():
    net = _net("mlp", 5, 4, max_weight=0.3, turnover_limit=0.2)
    x, cov, _, _ = _inputs()
    prev = torch.softmax(0.2 * torch.randn(6, 5, dtype=torch.float64), -1)  # all below the cap
    assert float(prev.max()) < 0.3
    with torch.no_grad():
        out = net(x, cov, prev)
    w = out.weights
    torch.testing.assert_close(w.sum(-1), torch.ones(6, dtype=torch.float64))
    assert float(w.min()) > -1e-8 and float(w.max()) < 0.3 + 1e-8
    assert float((w - prev).abs().sum(-1).max()) < 0.2 + 1e-6
    assert (out.qp.status == 0).all()


def test_end_to_end_learns_the_planted_signal_and_beats_equal_weight():
    # Measured with model seeds 0, 1, 2 on this market: e2e Sharpe 3.3, 3.2, 4.0 against 0.33 for equal
    # weight (net of 10 bps costs, 500 out-of-sample days), without the turnover-aware decision layer (no
    # prior, no cost term, no chain). With the defaults (prior at equal weight, cost term, chains of 4): 1.09
    # with a turnover of 0.001: at 5-row rebalancing the cost term (kappa = 0.05 a year) makes most decisions
    # "hold", where the L1 cost's no-trade region leaves no gradient (see models.decision), and the model
    # learns little of the signal in 8 epochs.
    prices = planted_market(n_assets=5, n_rows=800, seed=3, persistence=100)
    train = {"epochs": 8, "patience": 8, "stride": 1, "seed": 0, "lr": 0.01}
    plain = E2EPortfolio(train={**train, "chain": 1}, prior=False, decision_cost=0.0, **SMALL)
    aware = E2EPortfolio(name="aware", train=train, **SMALL)
    config = BacktestConfig(lookback=300, rebalance=5, retrain_every=10_000, train_window=301, cost_bps=10.0)
    result = run_backtest(prices, [build_strategy("equal_weight", config), plain, aware], config)
    history = plain.history_
    assert history.train_loss[-1] < history.train_loss[0] - 1.0
    sharpe, turnover = result.metrics["sharpe"], result.metrics["turnover"]
    assert sharpe["e2e"] > sharpe["equal_weight"] + 1.5, sharpe
    assert sharpe["aware"] > sharpe["equal_weight"] + 0.5, sharpe
    assert turnover["aware"] < turnover["equal_weight"] < turnover["e2e"]
    for name in ("e2e", "aware"):
        assert result.diagnostics[name]["training"]["qp_failed"].sum() == 0


def _tiny(**kw):
    train = {"epochs": 1, "stride": 3, "seed": 0, "lr": 0.01}
    return E2EPortfolio(**{"train": train, "refit_epochs": 1, **SMALL, **kw})


TINY_CONFIG = BacktestConfig(lookback=150, rebalance=25, retrain_every=50, train_window=151, cost_bps=10.0)


def test_perturbing_prices_after_a_date_changes_nothing_before_it():
    prices = planted_market(n_assets=4, n_rows=450, seed=5)
    cut = prices.index[320]
    future_noise = np.exp(0.05 * np.random.default_rng(0).standard_normal(prices.shape))
    perturbed = prices.copy()
    perturbed.loc[perturbed.index > cut] *= future_noise[perturbed.index > cut]
    a = run_backtest(prices, [_tiny()], TINY_CONFIG)
    b = run_backtest(perturbed, [_tiny()], TINY_CONFIG)
    wa, wb = a.weights["e2e"], b.weights["e2e"]
    before = wa.index <= cut
    pd.testing.assert_frame_equal(wa[before], wb[before])
    assert not np.allclose(wa[~before].to_numpy(), wb[~before].to_numpy())  # the perturbation is visible
    fits_a, fits_b = (r.diagnostics["e2e"]["training"] for r in (a, b))
    early = fits_a["fit_date"] <= cut
    pd.testing.assert_frame_equal(
        fits_a[early].drop(columns="grad_norm"), fits_b[early].drop(columns="grad_norm")
    )


def test_checkpoint_round_trip(tmp_path):
    prices = planted_market(n_assets=4, n_rows=300, seed=2)
    first = _tiny(checkpoint_dir=str(tmp_path)).fit(prices)
    assert len(list(tmp_path.glob("e2e-*.pt"))) == 1
    second = _tiny(checkpoint_dir=str(tmp_path)).fit(prices)
    assert second.diagnostics()["fits"]["from_checkpoint"].tolist() == [True]
    for key, value in first.net_.state_dict().items():
        assert torch.equal(value, second.net_.state_dict()[key]), key
    window = prices.iloc[-151:]
    np.testing.assert_array_equal(first.weights(window), second.weights(window))
    other = _tiny(checkpoint_dir=str(tmp_path), seed=1).fit(prices)  # another config: no stale reuse
    assert other.diagnostics()["fits"]["from_checkpoint"].tolist() == [False]


def test_interrupted_walk_forward_resumes_from_the_last_completed_fold(tmp_path, monkeypatch):
    prices = planted_market(n_assets=4, n_rows=450, seed=4)
    reference = run_backtest(prices, [_tiny()], TINY_CONFIG)
    n_fits = len(reference.fit_dates)
    assert n_fits >= 4
    calls = []
    real_train = strategy_module.train

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(strategy_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_backtest(prices, [_tiny(checkpoint_dir=str(tmp_path))], TINY_CONFIG)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    calls.clear()
    monkeypatch.setattr(strategy_module, "train", lambda *a, **k: (calls.append(1), real_train(*a, **k))[1])
    resumed = run_backtest(prices, [_tiny(checkpoint_dir=str(tmp_path))], TINY_CONFIG)
    assert len(calls) == n_fits - 2
    fits = resumed.diagnostics["e2e"]["fits"]
    assert fits["from_checkpoint"].tolist() == [True, True] + [False] * (n_fits - 2)
    pd.testing.assert_frame_equal(resumed.weights["e2e"], reference.weights["e2e"])


def test_pto_trains_on_mse_without_the_qp_then_uses_it():
    prices = planted_market(n_assets=4, n_rows=300, seed=2)
    model = make_strategy("pto", train={"epochs": 2, "lr": 0.01}, seed=0, **SMALL).fit(prices)
    curves = model.diagnostics()["training"]
    assert "qp_iterations" not in curves and "deq_iterations" in curves
    w = model.weights(prices.iloc[-151:])
    assert w.shape == (4,) and abs(w.sum() - 1) < 1e-9 and w.min() >= 0


def test_registry_names_and_parameters():
    for name, encoder in [("e2e", "deq"), ("e2e_mlp", "mlp"), ("e2e_lstm", "lstm"), ("pto", "deq")]:
        strategy = make_strategy(name, train={"epochs": 1})
        assert strategy.name == name and strategy.encoder == encoder
    accepted = strategy_parameters("e2e")
    assert "max_weight" in accepted and "seed" in accepted and "encoder" not in accepted
    with pytest.raises(ConfigError, match="no parameter"):
        make_strategy("e2e", learning_rate=0.1)
    with pytest.raises(ConfigError, match="fit"):
        E2EPortfolio().weights(planted_market(n_rows=200))


def test_options_that_would_be_silently_ignored_are_rejected_or_wired():
    assert E2EPortfolio(rebalance=5).horizon == 5  # the loss's trading cost follows the rebalance period
    assert E2EPortfolio(rebalance=5, horizon=21).horizon == 21
    with pytest.raises(ConfigError, match="rebalance must be >= 1"):
        E2EPortfolio(rebalance=0)
    with pytest.raises(ConfigError, match="set both or neither"):
        E2EPortfolio(encoder_options={"jacobian_samples": 2})
    with pytest.raises(ConfigError, match="set both or neither"):
        E2EPortfolio(train={"jacobian_weight": 0.1})
    model = E2EPortfolio(
        train={"loss": "utility", "risk_aversion": 2.0, "jacobian_weight": 0.1},
        encoder_options={"jacobian_samples": 1},
    )
    assert model.train.risk_aversion == 2.0 and model.train.jacobian_weight == 0.1


def test_turnover_limit_holds_in_the_engine():
    prices = planted_market(n_assets=4, n_rows=450, seed=6)
    result = run_backtest(prices, [_tiny(turnover_limit=0.15)], TINY_CONFIG)
    turnover = result.turnover["e2e"].to_numpy()
    assert turnover[0] == pytest.approx(1.0)  # the first trade starts from cash
    assert turnover[1:].max() <= 0.15 + 1e-6  # without the limit: up to 0.38 here
