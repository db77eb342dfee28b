from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.backtest.strategies import cap_weights, solve_long_only_qp
from portfolio_layers.errors import ConfigError, InfeasibleError
from portfolio_layers.registry import available_strategies, make_strategy


def _prices(n=4, rows=120, seed=0):
    rng = np.random.default_rng(seed)
    vols = np.linspace(0.01, 0.03, n)
    idx = pd.date_range("2020-01-01", periods=rows, freq="B")
    return pd.DataFrame(
        np.exp(np.cumsum(rng.normal(0.0003, vols, (rows, n)), axis=0)),
        index=idx,
        columns=[f"A{i}" for i in range(n)],
    )


def test_simplex_projection_by_hand():
    # P = I: minimize 1/2 |w - q|^2 on the simplex; q = (.5, .2, -.1) -> w = q + (1 - .6) / 3.
    w = solve_long_only_qp(np.eye(3), np.array([0.5, 0.2, -0.1]))
    np.testing.assert_allclose(w, [0.5 + 0.4 / 3, 0.2 + 0.4 / 3, -0.1 + 0.4 / 3], atol=1e-7)
    # With a cap of .5 the first asset is capped and the rest shares the remainder equally above q.
    w = solve_long_only_qp(np.eye(3), np.array([0.9, 0.2, -0.1]), max_weight=0.5)
    np.testing.assert_allclose(w, [0.5, 0.2 + 0.2, -0.1 + 0.2], atol=1e-7)


def test_min_variance_diagonal_is_inverse_variance():
    var = np.array([1.0, 2.0, 4.0]) * 1e-4
    w = solve_long_only_qp(np.diag(var), np.zeros(3))
    np.testing.assert_allclose(w, (1 / var) / (1 / var).sum(), atol=1e-7)


def test_cap_weights_redistributes_pro_rata():
    np.testing.assert_allclose(cap_weights(np.array([0.6, 0.3, 0.1]), 0.4), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(cap_weights(np.array([0.6, 0.3, 0.1]), None), [0.6, 0.3, 0.1])
    with pytest.raises(InfeasibleError, match="n \\* max_weight < 1"):
        cap_weights(np.array([0.5, 0.5]), 0.4)


def test_classical_strategies_on_data():
    p = _prices()
    R = p.pct_change().dropna().to_numpy()
    ew = make_strategy("equal_weight").weights(p, np.zeros(4))
    np.testing.assert_allclose(ew, 0.25)
    iv = make_strategy("inverse_volatility").weights(p, np.zeros(4))
    inv = 1 / R.std(axis=0, ddof=1)
    np.testing.assert_allclose(iv, inv / inv.sum())
    mv = make_strategy("min_variance").weights(p, np.zeros(4))
    cov = np.cov(R, rowvar=False)
    # Optimality: no long-only fully invested portfolio of a random sample has lower variance.
    rng = np.random.default_rng(1)
    others = rng.dirichlet(np.ones(4), 2000)
    assert mv @ cov @ mv <= np.min(np.einsum("ki,ij,kj->k", others, cov, others)) + 1e-12
    mean_var = make_strategy("mean_variance", risk_aversion=3.0, max_weight=0.4).weights(p, np.zeros(4))

    def objective(w):  # rows of w are portfolios
        w = np.atleast_2d(w)
        return w @ R.mean(0) - 1.5 * np.einsum("ki,ij,kj->k", w, cov, w)

    capped = others[(others <= 0.4).all(axis=1)]
    assert len(capped) > 100
    assert mean_var.max() <= 0.4 + 1e-9 and objective(mean_var)[0] >= objective(capped).max() - 1e-12


def test_registry_errors():
    assert available_strategies()[:4] == (
        "equal_weight",
        "inverse_volatility",
        "min_variance",
        "mean_variance",
    )
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; available: equal_weight"):
        make_strategy("nope")
    with pytest.raises(ConfigError, match=r"has no parameter\(s\) \['gamma'\]; it accepts"):
        make_strategy("mean_variance", gamma=1.0)
    with pytest.raises(ConfigError, match="risk_aversion must be a number > 0"):
        make_strategy("mean_variance", risk_aversion=-1)
    with pytest.raises(ConfigError, match="solver='osqp' is not available"):
        make_strategy("min_variance", solver="osqp")
    with pytest.raises(ConfigError, match="max_weight must be a number in"):
        make_strategy("equal_weight", max_weight=1.5)
    with pytest.raises(InfeasibleError):
        make_strategy("equal_weight", max_weight=0.2).weights(_prices(), np.zeros(4))


def test_qp_layer_solver_agrees_with_clarabel():
    p = _prices(n=6, seed=3)
    for name, params in (("min_variance", {"max_weight": 0.3}), ("mean_variance", {"risk_aversion": 2.0})):
        a = make_strategy(name, solver="clarabel", **params).weights(p, np.zeros(6))
        b = make_strategy(name, solver="qp", **params).weights(p, np.zeros(6))
        np.testing.assert_allclose(a, b, atol=1e-5)
