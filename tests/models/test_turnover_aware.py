"""Turnover-aware decisions: the QP's cost term and prior at equal weight, chained decisions in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.models.build import build_net
from portfolio_layers.models.decision import GATE_SCALE, DecisionLayer, cost_per_year
from portfolio_layers.models.encoders import make_encoder
from portfolio_layers.models.heads import sample_covariance
from portfolio_layers.models.losses import negative_sharpe
from portfolio_layers.models.model import E2ENet
from portfolio_layers.models.samples import WindowData
from portfolio_layers.models.strategy import E2EPortfolio
from portfolio_layers.models.synthetic import planted_market
from portfolio_layers.models.training import TrainConfig, batch_loss, chain_returns, split_rows, train
from tests.models.conftest import engine_returns

F64 = torch.float64


def _problem(batch=3, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = 0.1 * torch.randn(batch, n, n, generator=g, dtype=F64)
    P = 5.0 * (L @ L.transpose(-1, -2) + 0.01 * torch.eye(n, dtype=F64))
    mu = 0.05 * torch.randn(batch, n, generator=g, dtype=F64)
    h = torch.softmax(torch.randn(batch, n, generator=g, dtype=F64), -1)
    return P, mu, h


def _net(n_features=3, *, tau=2.0, cost=0.01, encoder="mlp", n=4, **layer):
    torch.manual_seed(0)
    decision = DecisionLayer(n, max_weight=0.6, cost=cost, prior_init=tau, **layer)
    return E2ENet(make_encoder(encoder, n_features, 4), 4, decision, return_scale=5.0).double()


def test_cost_per_year_puts_a_trade_in_annualised_units():
    assert cost_per_year(10.0, 252, 21) == pytest.approx(0.012)
    assert cost_per_year(10.0, 52, 1) == pytest.approx(0.052)
    with pytest.raises(ConfigError):
        cost_per_year(-1.0, 252, 21)


def test_the_cost_term_matches_the_qp_it_stands_for():
    """Against a brute-force search over a fine grid (n = 3, a cost large enough to bind)."""
    P, mu, h = _problem(batch=1, n=3, seed=3)
    layer = DecisionLayer(3, cost=0.02, prior=False).double()
    w = layer.solve(P, mu, h).x[0].detach().numpy()
    grid = np.linspace(0, 1, 401)
    a, b = np.meshgrid(grid, grid)
    W = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], -1)
    W = W[W[:, 2] >= 0]
    Pn, mun, hn = P[0].numpy(), mu[0].numpy(), h[0].numpy()
    obj = 0.5 * np.einsum("ki,ij,kj->k", W, Pn, W) - W @ mun + 0.02 * np.abs(W - hn).sum(-1)
    best = W[np.argmin(obj)]
    wobj = 0.5 * w @ Pn @ w - w @ mun + 0.02 * np.abs(w - hn).sum()
    assert wobj <= obj.min() + 1e-12 and np.abs(w - best).max() < 5e-3


@pytest.mark.parametrize("limit", [None, 0.3])
def test_cost_term_gradients_wrt_previous_weights_kappa_and_gate_match_finite_differences(limit):
    P, mu, h = _problem()
    layer = DecisionLayer(6, max_weight=0.5, cost=0.012, prior_init=2.0, turnover_limit=limit).double()
    g = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(1))

    def value(hh: torch.Tensor) -> torch.Tensor:
        sol = layer.solve(P, mu, hh)
        assert (sol.status == 0).all()
        return (sol.x * g).sum()

    hh = h.clone().requires_grad_()
    value(hh).backward()
    eps = 1e-6
    fd = torch.zeros_like(h)
    with torch.no_grad():
        for b in range(3):
            for i in range(6):
                e = torch.zeros_like(h)
                e[b, i] = eps
                fd[b, i] = (value(h + e) - value(h - e)) / (2 * eps)
        assert float(hh.grad.abs().max()) > 1e-3  # the previous weights matter
        torch.testing.assert_close(hh.grad, fd, atol=1e-6, rtol=1e-5)
        for param in (layer.log_cost_multiplier, layer.prior_gate):
            layer.zero_grad()
            with torch.enable_grad():
                value(h).backward()
            analytic = float(param.grad)
            param += eps
            up = value(h)
            param -= 2 * eps
            down = value(h)
            param += eps
            assert analytic == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5, abs=1e-8)


def test_the_cost_lowers_turnover_and_the_gate_moves_from_equal_weight():
    P, mu, h = _problem()
    free = DecisionLayer(6, prior=False).double().solve(P, mu, h).x
    dear = DecisionLayer(6, prior=False, cost=0.05).double().solve(P, mu, h).x
    assert ((dear - h).abs().sum(-1) < (free - h).abs().sum(-1) - 0.05).all()
    distances = []
    for tau in (0.0, 0.5, 5.0, 500.0):
        w = DecisionLayer(6, cost=0.05, prior_init=tau).double().solve(P, mu, h).x
        distances.append(float((w.detach() - 1 / 6).abs().sum()))
    assert distances[0] < 1e-8 and distances == sorted(distances)
    far = DecisionLayer(6, cost=0.05, prior_init=1e6).double().solve(P, mu, h).x
    torch.testing.assert_close(far, dear, atol=1e-4, rtol=0)  # tau -> inf: the problem without the prior


@pytest.mark.parametrize("encoder", ["deq", "mlp", "lstm"])
def test_an_untrained_model_holds_equal_weight_for_any_input(encoder):
    model = E2EPortfolio(encoder=encoder, d_model=8, max_weight=0.3, train={"cost_bps": 25.0, "seed": 3})
    net = build_net(model, 5, 4, F64)
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 10.0):
        x = scale * torch.randn(7, 12, 5, 4, generator=g, dtype=F64)
        cov = sample_covariance(0.02 * torch.randn(7, 30, 5, generator=g, dtype=F64)) * 252
        for previous in (None, torch.softmax(3 * torch.randn(7, 5, generator=g, dtype=F64), -1)):
            with torch.no_grad():
                w = net(x, cov, previous).weights
            torch.testing.assert_close(w, torch.full_like(w, 0.2), atol=1e-6, rtol=0)
    pto = E2EPortfolio(loss="mse")
    assert (
        pto.train.loss == "mse" and build_net(pto, 5, 4, F64).qp.tau > 0
    )  # the two-stage model cannot learn tau


def test_the_gate_stays_non_negative_and_bad_settings_raise():
    layer = DecisionLayer(4, cost=0.01)
    with torch.no_grad():
        layer.prior_gate.fill_(-1.0)
    layer.project_()
    assert float(layer.tau) == 0.0
    assert float(DecisionLayer(4, prior_init=3.0).tau) == pytest.approx(3.0)
    assert float(DecisionLayer(4, prior_init=3.0).prior_gate) == pytest.approx(3.0 / GATE_SCALE)
    assert DecisionLayer(4, cost=0.01, cost_multiplier=0.0).kappa is None
    with pytest.raises(ConfigError, match="max_weight"):
        DecisionLayer(4, max_weight=0.2)
    with pytest.raises(ShapeError, match="previous"):
        DecisionLayer(4, cost=0.01).solve(torch.eye(4)[None], torch.zeros(1, 4), torch.ones(1, 3) / 3)


# -- chained decisions ---------------------------------------------------------------------------------


def _chain_data(chain=3, rebalance=4, horizon=4, n=4):
    prices = planted_market(n_assets=n, n_rows=120, seed=1)
    returns = prices.pct_change().to_numpy()
    logret = np.log(prices).diff()
    features = np.stack([logret.rolling(w).mean().to_numpy() * 100 for w in (1, 3, 5)], -1)
    return WindowData(
        features, returns, window=5, cov_window=20, horizon=horizon, rebalance=rebalance, chain=chain
    )


def test_chain_batches_hold_consecutive_rebalances():
    data = _chain_data()
    rows = data.decision_rows()
    assert rows[0] == max(data.warmup + 4, 20) + 3 * 4
    batch = data.batch(rows[[0, 5]])
    r = data.returns.numpy()
    t = int(rows[5])
    assert batch.chain_x.shape == (2, 4, 5, 4, 3) and batch.drift.shape == (2, 3, 4, 4)
    for j, d in enumerate([t - 12, t - 8, t - 4, t]):
        np.testing.assert_array_equal(batch.chain_x[1, j].numpy(), data.features[d - 4 : d + 1].numpy())
        if j:
            np.testing.assert_array_equal(batch.chain_future[1, j - 1].numpy(), r[d + 1 : d + 5])
        if j < 3:
            np.testing.assert_array_equal(batch.drift[1, j].numpy(), r[d + 1 : d + 5])
    torch.testing.assert_close(batch.x, batch.chain_x[:, -1])
    torch.testing.assert_close(batch.future, batch.chain_future[:, -1])


def test_chained_loss_equals_the_engines_net_returns():
    data = _chain_data(chain=3)
    net = _net()
    batch = data.batch(data.decision_rows()[[0, 7, 20]])
    with torch.no_grad():
        returns, _, _, _ = chain_returns(net, batch, 10.0)
        for b in range(3):
            w0 = net(batch.chain_x[b : b + 1, 0], batch.chain_cov[b : b + 1, 0]).weights[0].numpy()
            _, h = engine_returns(w0, batch.drift[b, 0].numpy(), w0, 0.0)  # drift of the starting decision
            expected = []
            for j in range(1, 4):
                prev = torch.as_tensor(h)[None]
                w = net(batch.chain_x[b : b + 1, j], batch.chain_cov[b : b + 1, j], prev).weights[0].numpy()
                r, h = engine_returns(w, batch.chain_future[b, j - 1].numpy(), h, 10.0)
                expected.extend(r)
            np.testing.assert_allclose(returns[b].numpy(), expected, rtol=1e-10, atol=1e-13)
        config = TrainConfig(cost_bps=10.0, chain=3)
        loss, _ = batch_loss(net, batch, config)
        assert float(loss) == pytest.approx(float(negative_sharpe(returns)), rel=1e-12)


def test_chained_decision_gradient_matches_finite_differences():
    data = _chain_data(chain=3)
    net = _net()
    batch = data.batch(data.decision_rows()[[2, 9, 17]])
    config = TrainConfig(cost_bps=10.0, chain=3)
    params = [p for p in net.parameters() if p.requires_grad]
    loss, _ = batch_loss(net, batch, config)
    grads = torch.autograd.grad(loss, params)
    g = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=g, dtype=F64) for p in params]
    analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, direction, strict=True))
    eps = 1e-6
    # the chain is truncated: the decision that starts it carries no gradient, so it is held fixed here too
    real_decide, first = net.decide, {}

    def decide(pred, previous):
        if previous is None:
            return first.setdefault("out", real_decide(pred, previous))
        return real_decide(pred, previous)

    net.decide = decide
    with torch.no_grad():
        batch_loss(net, batch, config)  # caches the starting decision at the current parameters
        values = []
        for sign in (1.0, -1.0):
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * eps * d)
            values.append(float(batch_loss(net, batch, config)[0]))
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * eps * d)
    del net.decide
    numeric = (values[0] - values[1]) / (2 * eps)
    assert abs(analytic) > 1e-3
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    # the previous decision carries gradient: cutting it changes the gradient
    cut = _detached_chain_gradient(net, batch, params)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, cut, strict=True))


def _detached_chain_gradient(net, batch, params):
    from portfolio_layers.models import training

    real = training.drift_weights
    training.drift_weights = lambda w, r: real(w.detach(), r)
    try:
        loss, _ = batch_loss(net, batch, TrainConfig(cost_bps=10.0, chain=3))
    finally:
        training.drift_weights = real
    return torch.autograd.grad(loss, params)


def test_training_starts_from_equal_weight_and_the_initial_state_competes(market):
    returns = market.pct_change().to_numpy()
    logret = np.log(market).diff()
    features = np.stack([logret.rolling(w).mean().to_numpy() * 100 for w in (1, 5, 20)], -1)
    data = WindowData(features, returns, window=5, cov_window=20, horizon=5, rebalance=5, chain=2)
    net = _net(tau=0.0, cost=cost_per_year(10.0, 252, 5), n=5)
    history = train(net, data, TrainConfig(epochs=3, cost_bps=10.0, chain=2, lr=0.01, stride=3))
    assert np.isfinite(history.initial_val_loss) and len(history.train_loss) >= 1
    assert float(net.qp.tau) >= 0.0
    assert set(history.decision) == {"tau", "cost_multiplier", "risk_aversion"}
    assert history.decision["tau"] == pytest.approx(float(net.qp.tau))
    with pytest.raises(ConfigError, match="chain"):
        train(net, data, TrainConfig(epochs=1, cost_bps=10.0, chain=3))


@pytest.mark.parametrize("competes", [False, True])
def test_equal_weight_competes_at_a_re_fit_when_asked(competes):
    # A re-fit starts from a model that left equal weight (tau = 2). On a market without signal (drift 0) and
    # with a learning rate too small to move it, that model's tilt only adds noise; with
    # ``equal_weight_competes`` the kept state is the best of {start, equal weight, epochs} on validation.
    market = planted_market(n_assets=5, n_rows=320, drift=0.0, seed=3)
    returns = market.pct_change().to_numpy()
    logret = np.log(market).diff()
    features = np.stack([logret.rolling(w).mean().to_numpy() * 100 for w in (1, 5, 20)], -1)
    data = WindowData(features, returns, window=5, cov_window=20, horizon=5, rebalance=5, chain=2)
    net = _net(tau=2.0, cost=cost_per_year(10.0, 252, 5), n=5)
    config = TrainConfig(epochs=1, cost_bps=10.0, chain=2, lr=1e-9, stride=3, equal_weight_competes=competes)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    history = train(net, data, config)
    # the validation loss of equal weight, computed here independently: the same network with the gate at 0
    probe = _net(tau=2.0, cost=cost_per_year(10.0, 252, 5), n=5)
    probe.load_state_dict(start)
    with torch.no_grad():
        probe.qp.prior_gate.zero_()
        rows = data.decision_rows()[::3]
        _, val_rows = split_rows(rows, config.val_fraction, data.horizon + data.reach())
        equal_val = float(batch_loss(probe, data.batch(val_rows), config)[0])
    kept = min(history.initial_val_loss, *history.val_loss)
    if competes:
        assert equal_val < kept  # the situation this test is about
        assert history.best_epoch == -2
        assert float(net.qp.tau) == 0.0
        x = torch.randn(2, 5, 5, 3, dtype=F64)
        cov = torch.eye(5, dtype=F64).expand(2, 5, 5)
        w = net(x, cov, torch.full((2, 5), 0.2, dtype=F64)).weights
        torch.testing.assert_close(w, torch.full_like(w, 0.2), atol=1e-8, rtol=0)
    else:
        assert history.best_epoch != -2 and float(net.qp.tau) > 0.0
