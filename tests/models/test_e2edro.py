"""The E2E-DRO model family: alignment of errors and predictions, gradients, training, CV, strategy checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from portfolio_layers.errors import ConfigError, DataError, InputError
from portfolio_layers.models.dro import nominal_layer
from portfolio_layers.models.e2edro import DROPortfolio, cross_validate, make_panel
from portfolio_layers.models.e2edro_net import (
    DRONet,
    Panel,
    TrainSettings,
    least_squares,
    panel_loss,
    paper_initial_values,
    sharpe_mse_loss,
    train_net,
)
from portfolio_layers.registry import make_strategy, strategy_kwargs

F64 = torch.float64


def planted(T: int = 120, n: int = 4, d: int = 3, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Weekly prices whose returns follow ``r[s] = a + B x[s-1] + noise`` and the features ``x``."""
    rng = np.random.default_rng(seed)
    x = 0.02 * rng.standard_normal((T, d))
    B = rng.standard_normal((n, d)) * 0.3
    a = 0.002 + 0.001 * np.arange(n)
    r = np.zeros((T, n))
    r[1:] = a + x[:-1] @ B.T + 0.02 * rng.standard_normal((T - 1, n))
    dates = pd.date_range("2001-01-05", periods=T, freq="W-FRI")
    prices = pd.DataFrame(np.cumprod(1 + r, axis=0), index=dates, columns=[f"A{i}" for i in range(n)])
    features = pd.DataFrame(x, index=dates, columns=[f"f{j}" for j in range(d)])
    return prices, features


def settings(**changes: object) -> TrainSettings:
    base = {"lr": 0.02, "epochs": 3, "horizon": 4, "mse_weight": 0.5, "periods_per_year": 52}
    return TrainSettings(**{**base, **changes})


def test_least_squares_recovers_planted_coefficients() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=g, dtype=F64)
    W, b = torch.randn(2, 3, generator=g, dtype=F64), torch.tensor([0.1, -0.2], dtype=F64)
    r = torch.zeros(400, 2, dtype=F64)
    r[1:] = x[:-1] @ W.T + b  # r[s] from x[s-1], exactly
    W_hat, b_hat = least_squares(x, r)
    torch.testing.assert_close(W_hat, W)
    torch.testing.assert_close(b_hat, b)


def test_forward_aligns_errors_and_prediction_with_the_decision_row() -> None:
    """Decision u: errors r[s] - y_hat[s-1] for s = u-N+1 .. u, prediction y_hat[u] from x[u]."""
    prices, features = planted(T=40)
    panel = make_panel(prices, features, "test")
    net = DRONet(3, 4, layer="nominal", N=10, gamma=0.05, delta=None)
    net.set_theta(*least_squares(panel.x, panel.r))
    u = 25
    with torch.no_grad():
        z, y_hat = net(panel, torch.tensor([u]))
        pred = panel.x @ net.weight.T + net.bias
        E = torch.stack([panel.r[s] - pred[s - 1] for s in range(u - 9, u + 1)])
        expected = nominal_layer(E, pred[u], 0.05)
    torch.testing.assert_close(y_hat[0], pred[u])
    torch.testing.assert_close(z[0], expected)


def test_batched_decisions_equal_a_loop() -> None:
    prices, features = planted(T=60)
    panel = make_panel(prices, features, "test")
    net = DRONet(3, 4, layer="nominal", N=12, gamma=0.05, delta=None)
    net.set_theta(*least_squares(panel.x, panel.r))
    rows = torch.arange(12, 50)
    with torch.no_grad():
        z, _ = net(panel, rows)
        one = torch.cat([net(panel, rows[i : i + 1])[0] for i in range(len(rows))])
    torch.testing.assert_close(z, one, atol=1e-8, rtol=0)


def test_gradient_reaches_theta_through_the_errors_and_matches_finite_differences() -> None:
    """With zero mean predictions the loss depends on theta's slope only through the risk window."""
    prices, features = planted(T=50, n=3, d=2)
    panel = make_panel(prices, features, "test")
    net = DRONet(2, 3, layer="nominal", N=10, gamma=0.3, delta=None)
    W, b = least_squares(panel.x, panel.r)
    net.set_theta(W, b)
    rows = torch.arange(10, 40)
    cfg = settings(mse_weight=0.0)
    loss = panel_loss(net, panel, rows, cfg)
    (grad,) = torch.autograd.grad(loss, net.weight)
    assert grad.abs().max() > 0
    direction = torch.randn(W.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    h = 1e-5
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            net.weight.copy_(W + sign * h * direction)
            values.append(float(panel_loss(net, panel, rows, cfg)))
    fd = (values[0] - values[1]) / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_sharpe_mse_loss_by_hand() -> None:
    z = torch.tensor([[0.25, 0.75]], dtype=F64)
    future = torch.tensor([[[0.01, 0.02], [-0.01, 0.00], [0.03, 0.01]]], dtype=F64)
    y_hat = torch.tensor([[0.0, 0.01]], dtype=F64)
    p = np.array([0.0175, -0.0025, 0.015])
    sharpe = p.mean() / p.std(ddof=1) * math.sqrt(52)
    mse = ((0.0 - 0.01) ** 2 + (0.01 - 0.02) ** 2) / 2
    got = sharpe_mse_loss(z, y_hat, future, mse_weight=0.5, periods_per_year=52)
    assert float(got) == pytest.approx(-sharpe + 0.5 / 2 * mse, rel=1e-12)


def test_panel_future_refuses_rows_past_the_end() -> None:
    panel = Panel(torch.zeros(10, 1, dtype=F64), torch.zeros(10, 2, dtype=F64))
    assert panel.future(torch.tensor([5]), 4).shape == (1, 4, 2)
    with pytest.raises(DataError, match="later rows"):
        panel.future(torch.tensor([6]), 4)


def test_training_lowers_the_loss_and_keeps_gamma_delta_positive() -> None:
    prices, features = planted(T=90)
    panel = make_panel(prices, features, "test")
    net = DRONet(3, 4, layer="nominal", N=20, gamma=0.05, delta=None)
    net.set_theta(*least_squares(panel.x, panel.r))
    losses, _ = train_net(net, panel, torch.arange(20, 86), settings(epochs=15, lr=0.02))
    assert losses[-1] < losses[0]
    assert float(net.gamma.detach()) >= 1e-4


def test_robust_layer_trains_gamma_and_delta() -> None:
    prices, features = planted(T=40, n=3, d=2)
    panel = make_panel(prices, features, "test")
    net = DRONet(2, 3, layer="hellinger", N=16, gamma=0.05, delta=0.2)
    net.set_theta(*least_squares(panel.x, panel.r))
    before = (float(net.gamma.detach()), float(net.delta.detach()))
    train_net(net, panel, torch.arange(16, 22), settings(epochs=2))
    after = (float(net.gamma.detach()), float(net.delta.detach()))
    assert after != before and min(after) >= 1e-4


def test_paper_initial_values() -> None:
    gamma, delta = paper_initial_values("hellinger", 104, seed=5)
    c = 1 - 1 / math.sqrt(104)
    assert 0.02 <= gamma <= 0.1 and c / 10 <= delta <= c / 2
    assert paper_initial_values("hellinger", 104, seed=5) == (gamma, delta)
    assert paper_initial_values("nominal", 104, seed=5) == (gamma, None)
    assert paper_initial_values("hellinger", 104, seed=6) != (gamma, delta)


def test_cross_validation_scores_every_grid_point_on_the_rows_given() -> None:
    prices, features = planted(T=150)
    panel = make_panel(prices, features, "test")
    strategy = DROPortfolio(layer="nominal", error_window=12, horizon=4, periods_per_year=52)
    table = cross_validate(panel, strategy._build, settings(), N=12, lrs=(0.005, 0.02), epoch_grid=(1, 3))
    assert list(table[["lr", "epochs"]].itertuples(index=False, name=None)) == [
        (0.005, 1),
        (0.005, 3),
        (0.02, 1),
        (0.02, 3),
    ]
    assert {"fold_1", "fold_4"} <= set(table.columns) and table["val_loss"].notna().all()
    fit = DROPortfolio(
        layer="nominal",
        error_window=12,
        horizon=4,
        periods_per_year=52,
        lr_grid=(0.005, 0.02),
        epoch_grid=(1, 3),
    ).fit(prices, features)
    best = fit.cv_.loc[fit.cv_["val_loss"].idxmin()]
    assert (fit.lr_, fit.epochs_) == (best["lr"], best["epochs"])
    assert fit.diagnostics()["fits"]["epochs"].tolist() == [fit.epochs_]


def test_cross_validation_with_too_few_rows_says_what_to_do() -> None:
    prices, features = planted(T=40)
    with pytest.raises(DataError, match="set lr and epochs"):
        DROPortfolio(layer="nominal", error_window=20, horizon=4, periods_per_year=52).fit(prices, features)


def test_fit_ignores_the_features_of_its_last_row() -> None:
    """x[t] predicts r[t+1], unknown at the fit: perturbing it cannot change what the fit learns."""
    prices, features = planted(T=80)
    kw = {
        "layer": "nominal",
        "error_window": 20,
        "horizon": 4,
        "lr": 0.02,
        "epochs": 3,
        "periods_per_year": 52,
    }
    a = DROPortfolio(**kw).fit(prices, features)
    moved = features.copy()
    moved.iloc[-1] += 1.0
    b = DROPortfolio(**kw).fit(prices, moved)
    # A leak of the moved row (+1.0) would move the parameters by far more than 1e-12; below that, two fits
    # differ only by the order of floating-point reductions (seen: up to 9e-15 between identical fits).
    for p, q in zip(a.net_.parameters(), b.net_.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_pto_is_least_squares_with_the_initial_gamma() -> None:
    prices, features = planted(T=80)
    s = DROPortfolio(layer="nominal", end_to_end=False, error_window=20, seed=4, periods_per_year=52)
    s.fit(prices, features)
    W, b = least_squares(*(lambda p: (p.x, p.r))(make_panel(prices, features, "t")))
    torch.testing.assert_close(s.net_.weight.detach(), W)
    assert float(s.net_.gamma) == pytest.approx(paper_initial_values("nominal", 20, 4)[0])
    w = s.weights(prices.iloc[-21:], np.zeros(4), features.iloc[-21:])
    assert w.shape == (4,) and w.min() >= 0 and w.sum() == pytest.approx(1.0)


def test_weights_use_only_the_last_rows_given() -> None:
    prices, features = planted(T=80)
    s = DROPortfolio(layer="nominal", end_to_end=False, error_window=20, periods_per_year=52).fit(
        prices, features
    )
    short = s.weights(prices.iloc[-21:], None, features.iloc[-21:])
    long = s.weights(prices, None, features)
    np.testing.assert_allclose(short, long, atol=1e-9)
    with pytest.raises(DataError, match="lookback >= 20"):
        s.weights(prices.iloc[-20:], None, features.iloc[-20:])


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda p, f: (p, None), DataError, "exogenous features"),
        (lambda p, f: (p, f.iloc[1:]), DataError, "carry the dates"),
        (lambda p, f: (p, f.assign(f0=np.where(np.arange(len(f)) == 5, np.nan, f["f0"]))), DataError, "NaN"),
        (lambda p, f: (p, f.assign(f1="a")), DataError, "not numeric"),
        (lambda p, f: (p, f * np.nan), DataError, "no feature row is complete"),
        (lambda p, f: (p, f.to_numpy()), InputError, "DataFrame"),
    ],
)
def test_bad_features_raise_clear_errors(change, error, match) -> None:
    prices, features = planted(T=60)
    p, f = change(prices, features)
    with pytest.raises(error, match=match):
        DROPortfolio(layer="nominal", end_to_end=False, error_window=10).fit(p, f)


def test_features_that_start_after_the_prices_drop_the_leading_rows() -> None:
    prices, features = planted(T=80)
    late = features.copy()
    late.iloc[:7] = np.nan  # e.g. a factor series that begins later than the prices
    kw = {"layer": "nominal", "end_to_end": False, "error_window": 20, "periods_per_year": 52}
    a = DROPortfolio(**kw).fit(prices, late)
    b = DROPortfolio(**kw).fit(prices.iloc[7:], features.iloc[7:])
    for p, q in zip(a.net_.parameters(), b.net_.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        a.weights(prices, None, late), b.weights(prices.iloc[7:], None, features.iloc[7:])
    )
    with pytest.raises(DataError, match="after their first complete row"):  # a gap later is not dropped
        DROPortfolio(**kw).fit(prices, late.assign(f0=np.where(np.arange(80) == 40, np.nan, late["f0"])))


def test_bad_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown layer"):
        DROPortfolio(layer="wasserstein")
    with pytest.raises(ConfigError, match="epoch_grid"):
        DROPortfolio(epoch_grid=(10, 0))
    with pytest.raises(ConfigError, match="error_window"):
        DROPortfolio(error_window=1)
    with pytest.raises(ConfigError, match="call fit"):
        DROPortfolio().weights(*planted(T=30)[:1], None, planted(T=30)[1])


def test_registry_names_fix_the_layer_and_training() -> None:
    from portfolio_layers.backtest import BacktestConfig

    expected = {
        "pto_nominal": ("nominal", False),
        "e2e_nominal": ("nominal", True),
        "e2e_dro": ("hellinger", True),
    }
    for name, (layer, e2e) in expected.items():
        s = make_strategy(name)
        assert (s.name, s.layer, s.end_to_end) == (name, layer, e2e)
    config = BacktestConfig(strategies=("e2e_dro",), seed=7, cost_bps=0.0)
    assert strategy_kwargs("e2e_dro", config, 52) == {"seed": 7, "periods_per_year": 52}


def test_failed_robust_elements_are_solved_again_as_cone_programs(monkeypatch) -> None:
    import portfolio_layers.models.e2edro_net as module
    from portfolio_layers.errors import SolverError

    prices, features = planted(T=40, n=3, d=2)
    panel = make_panel(prices, features, "test")
    net = DRONet(2, 3, layer="hellinger", N=16, gamma=0.05, delta=0.2)
    net.set_theta(*least_squares(panel.x, panel.r))
    rows = torch.arange(16, 36)
    with torch.no_grad():
        expected, _ = net(panel, rows)
    real, calls = module.dro_layer, []

    def flaky(E, y, gamma, delta, ambiguity, **kw):
        calls.append((len(E), kw.get("backend")))
        if len(calls) == 1:
            raise SolverError("did not converge", [(3,)])
        return real(E, y, gamma, delta, ambiguity)

    monkeypatch.setattr(module, "dro_layer", flaky)
    with torch.no_grad():
        z, _ = net(panel, rows)
    assert calls == [(20, None), (19, None), (1, "cvxpylayers")] and net.fallbacks == 1
    torch.testing.assert_close(z, expected, atol=1e-6, rtol=0)
    calls.clear()
    monkeypatch.setattr(
        module, "dro_layer", lambda *a, **k: (_ for _ in ()).throw(SolverError("x", [(0,), (1,)]))
    )
    with pytest.raises(SolverError):
        net(panel, rows)


# -- the DEQ prediction layer (encoder="deq") ------------------------------------------------------------


def deq_net(panel, *, N: int = 10, L: int = 6, layer: str = "nominal") -> DRONet:
    torch.manual_seed(0)
    net = DRONet(
        panel.x.shape[1],
        panel.r.shape[1],
        layer=layer,
        N=N,
        gamma=0.05,
        delta=0.2 if layer != "nominal" else None,
        history=L,
        d_model=4,
        scales=(float(panel.r[1:].std()), panel.x.std(0)),
    )
    net.set_theta(*least_squares(panel.x, panel.r))
    return net


def test_untrained_deq_prediction_is_the_linear_one_and_training_moves_the_encoder() -> None:
    prices, features = planted(T=60)
    panel = make_panel(prices, features, "test")
    net = deq_net(panel)
    linear = DRONet(3, 4, layer="nominal", N=10, gamma=0.05, delta=None)
    linear.set_theta(*least_squares(panel.x, panel.r))
    rows = torch.arange(10, 50)
    with torch.no_grad():
        torch.testing.assert_close(net(panel, rows)[0], linear(panel, rows)[0], rtol=0, atol=1e-9)
    before = [p.detach().clone() for p in net.encoder.parameters()]
    train_net(net, panel, rows, settings(epochs=4))
    assert net.head.weight.abs().max() > 0
    assert any((p - q).abs().max() > 0 for p, q in zip(net.encoder.parameters(), before, strict=True))


def test_deq_prediction_sees_no_later_row_and_reads_its_history() -> None:
    """The decision at row u reads rows u - N - L + 1 .. u (N errors, each with L rows of history)."""
    prices, features = planted(T=60)
    panel = make_panel(prices, features, "test")
    net = deq_net(panel)
    with torch.no_grad():
        net.head.weight.normal_(generator=torch.Generator().manual_seed(2))
    u, N, L = 40, 10, 6

    def decision(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(Panel(x, r), torch.tensor([u]))[0][0]

    base = decision(panel.r, panel.x)
    later_r, later_x = panel.r.clone(), panel.x.clone()
    later_r[u + 1 :] += 0.5
    later_x[u + 1 :] += 0.5
    torch.testing.assert_close(decision(later_r, later_x), base, rtol=0, atol=1e-12)
    early = panel.r.clone()
    early[u - N - L + 1] += 0.5  # the oldest row the history of the oldest error reads
    assert (decision(early, panel.x) - base).abs().max() > 1e-8
    earlier = panel.r.clone()
    earlier[: u - N - L + 1] += 0.5
    torch.testing.assert_close(decision(earlier, panel.x), base, rtol=0, atol=1e-12)


def test_deq_prediction_gradient_matches_finite_differences() -> None:
    prices, features = planted(T=50, n=3, d=2)
    panel = make_panel(prices, features, "test")
    net = deq_net(panel)
    with torch.no_grad():
        net.head.weight.normal_(generator=torch.Generator().manual_seed(2))
    rows = torch.arange(10, 40)
    cfg = settings()
    param = net.encoder.inject.inp.weight
    (grad,) = torch.autograd.grad(panel_loss(net, panel, rows, cfg), param)
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    start, h, values = param.detach().clone(), 1e-5, []
    for sign in (1, -1):
        with torch.no_grad():
            param.copy_(start + sign * h * direction)
            values.append(float(panel_loss(net, panel, rows, cfg)))
    fd = (values[0] - values[1]) / (2 * h)
    assert abs(fd) > 1e-4
    assert float((grad * direction).sum()) == pytest.approx(fd, rel=1e-3)


def test_deq_strategy_needs_the_history_rows_and_the_registry_names_it() -> None:
    prices, features = planted(T=80)
    s = make_strategy(
        "e2e_nominal_deq",
        error_window=20,
        history=8,
        d_model=4,
        horizon=4,
        lr=0.02,
        epochs=2,
        periods_per_year=52,
    )
    assert (s.layer, s.end_to_end, s.encoder) == ("nominal", True, "deq")
    assert make_strategy("e2e_dro_deq").layer == "hellinger"
    s.fit(prices, features)
    w = s.weights(prices.iloc[-29:], None, features.iloc[-29:])
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, s.weights(prices, None, features), atol=1e-9)
    with pytest.raises(DataError, match=r"encoder's 8 rows of history.*lookback >= 28"):
        s.weights(prices.iloc[-28:], None, features.iloc[-28:])
    with pytest.raises(ConfigError, match="unknown encoder"):
        DROPortfolio(encoder="lstm")
