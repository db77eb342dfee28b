from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from portfolio_layers.errors import ConfigError, ShapeError
from portfolio_layers.models.losses import (
    mse_loss,
    negative_sharpe,
    negative_sortino,
    negative_utility,
    portfolio_loss,
    portfolio_returns,
    turnover,
)
from portfolio_layers.models.samples import drift_weights
from tests.models.conftest import engine_returns


def test_portfolio_returns_replays_the_engine_with_drift_and_cost():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(4), size=3)
    prev = rng.dirichlet(np.ones(4), size=3)
    R = 0.02 * rng.standard_normal((3, 6, 4))
    got = portfolio_returns(torch.tensor(w), torch.tensor(R), torch.tensor(prev), cost_bps=25.0).numpy()
    drifted = drift_weights(torch.tensor(w), torch.tensor(R)).numpy()
    for b in range(3):
        expected, h = engine_returns(w[b], R[b], prev[b], 25.0)
        np.testing.assert_allclose(got[b], expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(drifted[b], h, rtol=1e-12)


def test_turnover_and_first_trade():
    w = torch.tensor([[0.5, 0.5, 0.0]])
    assert float(turnover(w, torch.tensor([[0.0, 0.5, 0.5]]))) == pytest.approx(1.0)
    assert float(turnover(w, None)) == pytest.approx(1.0)


def test_sharpe_sortino_utility_match_the_metric_formulas():
    r = torch.tensor([[0.01, -0.02, 0.005, 0.003], [0.0, 0.004, -0.001, 0.002]], dtype=torch.float64)
    flat = r.flatten().numpy()
    sharpe = flat.mean() * 252 / (flat.std(ddof=1) * math.sqrt(252))
    sortino = flat.mean() * 252 / (math.sqrt(np.mean(np.minimum(flat, 0) ** 2)) * math.sqrt(252))
    utility = flat.mean() * 252 - 0.5 * 3.0 * flat.var(ddof=1) * 252
    assert float(negative_sharpe(r, eps=0.0)) == pytest.approx(-sharpe, rel=1e-12)
    assert float(negative_sortino(r, eps=0.0)) == pytest.approx(-sortino, rel=1e-12)
    assert float(negative_utility(r, risk_aversion=3.0)) == pytest.approx(-utility, rel=1e-12)
    per_sample = [row.mean() / row.std(ddof=1) * math.sqrt(252) for row in r.numpy()]
    assert float(negative_sharpe(r, pooled=False, eps=0.0)) == pytest.approx(-np.mean(per_sample), rel=1e-12)


def test_cost_raises_the_loss_and_its_gradient_pulls_toward_previous_weights():
    R = 0.01 * torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prev = torch.tensor([[0.2, 0.3, 0.5]] * 4, dtype=torch.float64)
    w = torch.tensor([[0.4, 0.3, 0.3]] * 4, dtype=torch.float64, requires_grad=True)
    cheap = portfolio_loss("sharpe", w, R, prev, cost_bps=0.0)
    dear = portfolio_loss("sharpe", w, R, prev, cost_bps=50.0)
    assert float(dear.detach()) > float(cheap.detach())
    grad = torch.autograd.grad(dear - cheap, w)[0]  # the cost term alone
    # d/dw of cost: sign(w - prev) scaled; asset 0 is overweight, asset 2 underweight
    assert torch.isfinite(grad).all()
    assert (grad[:, 0] > grad[:, 2]).all()


def test_mse_loss_against_realised_mean():
    R = torch.ones(2, 4, 3) * 0.001
    assert float(mse_loss(torch.full((2, 3), 0.252), R)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ShapeError):
        mse_loss(torch.zeros(2, 4), R)


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="unknown loss"):
        portfolio_loss("calmar", torch.ones(1, 2) / 2, torch.zeros(1, 3, 2))
    with pytest.raises(ShapeError, match="disagree"):
        portfolio_returns(torch.ones(1, 2) / 2, torch.zeros(1, 3, 4))
