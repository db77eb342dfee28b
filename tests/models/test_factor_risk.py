"""The risk head and the decision layer in factor form: the same matrices, weights and gradients as the
dense form, the sample code's batches in factor form, the automatic switch, a quick walk-forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import portfolio_layers.models.decision as decision_module
from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.models.decision import DecisionLayer, cost_per_year
from portfolio_layers.models.encoders import make_encoder
from portfolio_layers.models.heads import (
    FACTOR_MIN_ASSETS,
    FactorCovBatch,
    RiskHead,
    sample_covariance,
    sample_factor,
    window_covariance,
)
from portfolio_layers.models.model import E2ENet
from portfolio_layers.models.samples import WindowData
from portfolio_layers.models.strategy import E2EPortfolio
from portfolio_layers.models.synthetic import planted_market
from portfolio_layers.models.training import TrainConfig, batch_loss
from portfolio_layers.qp import FactorCov

F64 = torch.float64
COST = cost_per_year(10.0, 252, 21)


def _returns(batch: int, rows: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.01 * torch.randn(batch, rows, n, generator=g, dtype=F64)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """``max |a - b| <= tol * max(1, max |a|)`` (absolute for entries of order one, relative above)."""
    scale = max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, (float((a - b).abs().max()), scale)


# -- the head ---------------------------------------------------------------------------------------------


def test_sample_factor_is_the_sample_covariance():
    R = _returns(3, 40, 7)
    S = sample_factor(R, 252.0)
    assert isinstance(S, FactorCovBatch) and S.F.shape == (3, 7, 40) and bool((S.d == 0).all())
    torch.testing.assert_close(S.dense(), sample_covariance(R) * 252.0, rtol=0, atol=1e-15)
    assert isinstance(window_covariance(R, 252.0, "dense"), torch.Tensor)
    assert isinstance(window_covariance(R, 252.0, "factor"), FactorCovBatch)


@pytest.mark.parametrize("blend", [True, False])
def test_factor_head_is_the_dense_head(blend):
    """``(1 - a)(s (B B' + diag u) + eps I) + a S`` stacked as ``F F' + diag(d)``: the same matrix (1e-10) and
    the same gradients of every parameter."""
    torch.manual_seed(0)
    head = RiskHead(8, 3, blend=blend, blend_init=0.7).double()
    emb = 3 * torch.randn(4, 12, 8, dtype=F64)
    R = _returns(4, 40, 12)
    dense = head(emb, sample_covariance(R) * 252 if blend else None)
    factor = head(emb, sample_factor(R, 252.0) if blend else None, form="factor")
    assert isinstance(factor, FactorCovBatch) and factor.F.shape[-1] == 3 + 40 * blend
    assert bool((factor.d > 0).all())
    torch.testing.assert_close(factor.dense(), dense, rtol=0, atol=1e-10)
    probe = torch.randn(4, 12, 12, dtype=F64)
    params = list(head.parameters())
    g_dense = torch.autograd.grad((probe * dense).sum(), params)
    g_factor = torch.autograd.grad((probe * factor.dense()).sum(), params)
    for a, b in zip(g_dense, g_factor, strict=True):
        _close(a, b, 1e-10)


def test_auto_form_follows_the_sample_covariance():
    head = RiskHead(4, 2).double()
    emb = torch.randn(2, 5, 4, dtype=F64)
    R = _returns(2, 30, 5)
    assert isinstance(head(emb, sample_factor(R), form="auto"), FactorCovBatch)
    assert isinstance(head(emb, sample_covariance(R), form="auto"), torch.Tensor)
    assert isinstance(head(emb, sample_factor(R), form="dense"), torch.Tensor)  # made dense
    with pytest.raises(ShapeError, match="factor form"):
        head(emb, sample_covariance(R), form="factor")
    with pytest.raises(ConfigError, match="form"):
        head(emb, sample_covariance(R), form="sparse")
    plain = RiskHead(4, 2, blend=False).double()
    assert isinstance(plain(torch.randn(1, FACTOR_MIN_ASSETS, 4, dtype=F64), form="auto"), torch.Tensor)
    assert isinstance(plain(torch.randn(1, FACTOR_MIN_ASSETS + 1, 4, dtype=F64), form="auto"), FactorCovBatch)


def test_factor_batches_reshape_and_index_like_dense_ones():
    R = _returns(6, 30, 5)
    S, dense = sample_factor(R), sample_covariance(R)
    chain = S.reshape(2, 3, *S.shape[1:])
    assert chain.shape == (2, 3, 5, 5)
    torch.testing.assert_close(chain[:, -1].dense(), dense.reshape(2, 3, 5, 5)[:, -1])
    torch.testing.assert_close(chain[1:2, 0].dense(), dense.reshape(2, 3, 5, 5)[1:2, 0])
    torch.testing.assert_close(chain.reshape(6, 5, 5).dense(), dense)
    assert not chain.detach().F.requires_grad
    with pytest.raises(ShapeError):
        S.reshape(3, 2, 5, 4)
    with pytest.raises(ShapeError, match="batch dimension"):
        S[0, 1]
    with pytest.raises(ShapeError, match="batch dimension"):
        S[..., 0]


# -- the decision layer -----------------------------------------------------------------------------------


def _decision_case(n: int = 30, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = RiskHead(8, 3, blend=True, blend_init=0.7).double()
    emb = torch.randn(batch, n, 8, generator=g, dtype=F64)
    cov = head(emb, sample_factor(_returns(batch, 40, n, seed), 252.0), form="factor")
    previous = torch.softmax(torch.randn(batch, n, generator=g, dtype=F64), -1)
    mu = 0.1 * torch.randn(batch, n, generator=g, dtype=F64)
    return 5.0 * cov.F.detach() / 5.0**0.5, 5.0 * cov.d.detach(), mu, previous


def _solve_both(layer: DecisionLayer, F, d, mu, previous):
    """Weights and gradients (to mu, F, d, previous, the layer's parameters) of the dense and factor forms."""
    probe = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    out = []
    for factor in (False, True):
        leaves = [t.clone().requires_grad_() for t in (mu, F, d, previous)]
        mu_, F_, d_, prev_ = leaves
        P = FactorCov(F_, d_) if factor else F_ @ F_.mT + torch.diag_embed(d_)
        sol = layer.solve(P, mu_, prev_)
        assert bool((sol.status == 0).all())
        inputs = leaves + [p for p in layer.parameters()]
        grads = torch.autograd.grad((probe * sol.x).sum(), inputs, allow_unused=True)
        out.append((sol.x.detach(), grads))
    return out


CASES = {
    "initial (tau 0), cost": {"cost": COST, "prior_init": 0.0},
    "tau 0.7, cost, cap": {"cost": COST, "prior_init": 0.7, "max_weight": 0.2},
    "tau 0.7, cost, turnover limit": {"cost": COST, "prior_init": 0.7, "turnover_limit": 0.3},
    "tau 2, no cost": {"cost": 0.0, "prior_init": 2.0, "max_weight": 0.1},
    "no prior, cost": {"cost": COST, "prior": False, "max_weight": 0.2},
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_factor_decision_is_the_dense_decision(case, monkeypatch):
    """Without the lifted form's ridge the two forms solve one problem: weights and gradients agree to 1e-10.
    With the ridge (the dense form's default) they agree to 1e-8."""
    layer = DecisionLayer(30, **CASES[case]).double()
    data = _decision_case()
    for ridge, tol in ((decision_module.AUX_RIDGE, 1e-8), (1e-15, 1e-10)):
        monkeypatch.setattr(decision_module, "AUX_RIDGE", ridge)
        (x_dense, g_dense), (x_factor, g_factor) = _solve_both(layer, *data)
        _close(x_dense, x_factor, tol)
        for a, b in zip(g_dense, g_factor, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.isfinite(b).all()
                _close(a, b, tol)


def test_factor_decision_at_tau_zero_is_equal_weight_with_a_finite_gate_gradient():
    layer = DecisionLayer(30, cost=COST, prior_init=0.0).double()
    F, d, mu, previous = _decision_case()
    x = layer.solve(FactorCov(F, d), mu, previous).x
    torch.testing.assert_close(x, torch.full_like(x, 1 / 30), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad((x * mu).sum(), [layer.prior_gate])
    assert torch.isfinite(grad) and float(grad.abs()) > 0


# -- the network and training -----------------------------------------------------------------------------


def _window_data(n: int, cov_form: str, rows: int = 160, seed: int = 0) -> WindowData:
    rng = np.random.default_rng(seed)
    returns = 0.01 * rng.standard_normal((rows, n))
    features = rng.standard_normal((rows, n, 4))
    return WindowData(
        features, returns, window=10, cov_window=40, horizon=5, rebalance=5, chain=2, cov_form=cov_form
    )


def _net(n: int, risk_form: str, cost: float = COST) -> E2ENet:
    torch.manual_seed(0)
    layer = DecisionLayer(n, cost=cost, prior_init=0.5, max_weight=0.3)
    return E2ENet(make_encoder("mlp", 4, 8), 8, layer, blend_init=0.5, risk_form=risk_form).double()


@pytest.mark.parametrize("cost_bps", [10.0, 0.0])
def test_a_training_step_in_factor_form_is_the_dense_one(cost_bps, monkeypatch):
    """``batch_loss`` over chains of decisions (reshaped, indexed and detached covariances): the same loss and
    parameter gradients from factor-form and dense samples."""
    monkeypatch.setattr(decision_module, "AUX_RIDGE", 1e-15)
    n = 12
    config = TrainConfig(cost_bps=cost_bps, chain=2)
    results = []
    for form in ("dense", "factor"):
        data = _window_data(n, form)
        batch = data.batch(data.decision_rows()[:6])
        assert isinstance(batch.chain_cov, FactorCovBatch) == (form == "factor")
        net = _net(n, form)
        loss, _ = batch_loss(net, batch, config)
        grads = torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad], allow_unused=True)
        results.append((loss.detach(), grads))
    (loss_d, g_d), (loss_f, g_f) = results
    _close(loss_d, loss_f, 1e-10)
    for a, b in zip(g_d, g_f, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            _close(a, b, 1e-8)


def test_window_data_switches_form_by_the_number_of_assets():
    small = _window_data(FACTOR_MIN_ASSETS, "auto", rows=60)
    large = _window_data(FACTOR_MIN_ASSETS + 1, "auto", rows=60)
    assert isinstance(small.latest().sample_cov, torch.Tensor)
    assert isinstance(large.latest().sample_cov, FactorCovBatch)
    with pytest.raises(ConfigError, match="form"):
        _window_data(5, "sparse", rows=60)


def test_strategy_risk_form_is_checked_and_left_out_of_the_fingerprint():
    base = E2EPortfolio()
    assert base.risk_form == "auto"
    assert E2EPortfolio(risk_form="dense")._fingerprint == base._fingerprint
    for bad in ("factor", "sparse", 1):
        with pytest.raises(ConfigError, match="risk_form"):
            E2EPortfolio(risk_form=bad)
    field = next(f for f in dataclasses.fields(E2EPortfolio) if f.name == "risk_form")
    assert field.metadata.get("run")


def test_mse_networks_stay_dense():
    from portfolio_layers.models.build import build_net

    model = E2EPortfolio(loss="mse")
    assert build_net(model, FACTOR_MIN_ASSETS + 10, 13, F64).risk_form == "dense"
    assert build_net(E2EPortfolio(), FACTOR_MIN_ASSETS + 10, 13, F64).risk_form == "auto"


QUICK = {
    "d_model": 8,
    "window": 10,
    "cov_window": 40,
    "rebalance": 10,
    "refit_epochs": 1,
    "train": {"epochs": 1, "batch_size": 16, "stride": 4, "chain": 2, "cost_bps": 10.0, "seed": 0},
}


def test_quick_walk_forward_in_factor_form():
    """A walk-forward of the end-to-end model on more assets than FACTOR_MIN_ASSETS (factor form), two fits:
    the engine's checks on the weights pass and the fits record the decision layer's parameters."""
    n = FACTOR_MIN_ASSETS + 10
    prices = planted_market(n, 260, seed=1)
    config = BacktestConfig(
        lookback=150, rebalance=10, retrain_every=60, train_window=151, cost_bps=10.0, benchmark=None
    )
    model = E2EPortfolio(**QUICK)
    result = run_backtest(prices, [model], config)
    x = torch.zeros(1, 10, n, len(model.scaler_[0]), dtype=F64)
    assert isinstance(model.net_.predict(x, sample_factor(_returns(1, 40, n))).cov, FactorCovBatch)
    fits = model.diagnostics()["fits"]
    assert len(fits) == 2
    weights = result.weights[model.name].to_numpy()
    assert np.isfinite(weights).all() and np.allclose(weights.sum(1), 1.0)
