"""E2EPortfolio with exogenous features: broadcast channels, clear refusals, no look-ahead, and a market where
only the features carry the signal, which the model learns to use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.errors import DataError, InputError
from portfolio_layers.models.inputs import broadcast_features
from portfolio_layers.models.strategy import E2EPortfolio

SMALL = {"encoder": "mlp", "d_model": 8, "window": 5, "cov_window": 20, "rebalance": 1, "horizon": 1}
TRAIN = {"epochs": 1, "stride": 2, "lr": 0.02, "cost_bps": 0.0, "seed": 0}
WARMUP = 60  # rows of the price features' warm-up (data/features.py)


def _model(**kw) -> E2EPortfolio:
    return E2EPortfolio(**{"train": TRAIN, **SMALL, **kw})


def signal_market(rows: int = 360, seed: int = 0, move: float = 0.01, noise: float = 0.003):
    """Assets with market betas 0, 0.5, 1, 1.5 and a market move of random sign every row.

    The sign of row ``t+1``'s move cannot be read from the prices (it is drawn independently every row); the
    feature ``signal`` of row ``t`` is that sign, published at ``t`` (a forecast known at the decision). With
    it, a model holds the high-beta assets before an up move and the zero-beta one before a down move.
    """
    rng = np.random.default_rng(seed)
    betas = np.array([0.0, 0.5, 1.0, 1.5])
    sign = rng.choice([-1.0, 1.0], size=rows + 1)
    R = betas * move * sign[:rows, None] + noise * rng.standard_normal((rows, betas.size))
    R[0] = 0.0
    index = pd.bdate_range("2015-01-01", periods=rows)
    prices = pd.DataFrame(100.0 * np.cumprod(1.0 + R, axis=0), index=index, columns=["A0", "A1", "A2", "A3"])
    return prices, pd.DataFrame({"signal": sign[1:]}, index=index)


@pytest.fixture(scope="module")
def market():
    return signal_market()


@pytest.fixture(scope="module")
def fitted(market):
    prices, features = market
    return _model().fit(prices.iloc[:200], features=features.iloc[:200])


def test_features_are_channels_broadcast_to_every_asset_and_standardised_on_the_window(market, fitted):
    values = np.arange(6.0).reshape(3, 2)
    out = broadcast_features(np.zeros((3, 4, 5)), values)
    assert out.shape == (3, 4, 7)
    for i in range(4):
        np.testing.assert_array_equal(out[:, i, 5:], values)
    prices, features = market
    assert fitted.features_ == ("signal",)
    assert fitted.net_.encoder.n_features == 14  # 13 price features + 1
    known = features["signal"].iloc[WARMUP:200]  # the rows where every channel is known
    mean, std = fitted.scaler_
    assert mean[-1] == pytest.approx(known.mean()) and std[-1] == pytest.approx(known.std(ddof=0), rel=1e-6)


def test_a_model_fitted_with_features_needs_them_and_one_fitted_without_refuses_them(market, fitted):
    prices, features = market
    view = slice(120, 200)
    with pytest.raises(InputError, match=r"fitted with features \['signal'\] and needs them here too"):
        fitted.weights(prices.iloc[view])
    renamed = features.rename(columns={"signal": "other"})
    with pytest.raises(InputError, match=r"fitted with features \['signal'\] but got \['other'\]"):
        fitted.weights(prices.iloc[view], features=renamed.iloc[view])
    with pytest.raises(InputError, match="must be a date-indexed pandas DataFrame"):
        fitted.weights(prices.iloc[view], features=features.iloc[view].to_numpy())
    plain = _model().fit(prices.iloc[:200])
    with pytest.raises(InputError, match=r"fitted without features but got features \['signal'\]"):
        plain.weights(prices.iloc[view], features=features.iloc[view])
    with pytest.raises(InputError, match="fitted without features"):
        plain.fit(prices.iloc[:220], features=features.iloc[:220])
    w = fitted.weights(prices.iloc[view], features=features.iloc[view])
    assert w.shape == (4,) and w.sum() == pytest.approx(1.0)


def test_a_decision_needs_a_window_of_known_features(market, fitted):
    prices, features = market
    view = prices.index[120:200]
    late = features.loc[view[-3:]]  # known only on the last 3 rows; the window is 5
    with pytest.raises(DataError, match=r"reads 5 feature rows .* no feature row is dated on or before"):
        fitted.weights(prices.loc[view], features=late)
    holes = features.loc[view].copy()
    holes.iloc[-10] = np.nan
    with pytest.raises(DataError, match="missing on"):
        fitted.weights(prices.loc[view], features=holes)


def test_feature_rows_after_t_never_change_the_fit_or_the_weights_at_t(market):
    """Pass the whole feature table (its own dates, beyond t): perturbing rows after t moves nothing."""
    prices, features = market
    weekly = features.iloc[::3]  # its own calendar: aligned from the past by the model
    t = prices.index[199]
    perturbed = weekly.copy()
    perturbed.loc[perturbed.index > t] = -perturbed.loc[perturbed.index > t] + 7.0
    a = _model().fit(prices.loc[:t], features=weekly)
    b = _model().fit(prices.loc[:t], features=perturbed)
    view = prices.loc[:t].iloc[-80:]
    np.testing.assert_array_equal(a.weights(view, features=weekly), b.weights(view, features=perturbed))
    np.testing.assert_array_equal(a.weights(view, features=weekly), a.weights(view, features=perturbed))


def test_the_feature_names_and_values_are_part_of_the_checkpoint_key(market, tmp_path):
    prices, features = market
    train = prices.iloc[:200]

    def fit(frame):
        model = _model(checkpoint_dir=str(tmp_path)).fit(train, features=frame)
        return model.histories_[-1][2]  # loaded from a checkpoint?

    assert fit(features.iloc[:200]) is False
    assert fit(features.iloc[:200]) is True
    assert fit(features.iloc[:200].rename(columns={"signal": "other"})) is False
    assert fit(features.iloc[:200] * 2.0) is False
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_the_model_learns_a_signal_that_only_the_features_carry(market):
    """Out of sample through the engine: the same model beats its twin without features by far.

    The prior gate starts at 1 (not 0, where the untrained model holds exactly equal weight and leaves it
    slowly) so that four short epochs suffice.
    """
    prices, features = market
    config = BacktestConfig(
        strategies=("e2e",),
        lookback=65,
        rebalance=1,
        retrain_every=1000,
        train_window=320,
        trade_start=str(prices.index[320].date()),
        cost_bps=0.0,
        benchmark=None,
    )
    train = {**TRAIN, "epochs": 4, "stride": 1, "patience": 10}
    with_features = run_backtest(prices, [_model(train=train, prior_gate=1.0)], config, features)
    without = run_backtest(prices, [_model(train=train, prior_gate=1.0)], config)
    assert len(with_features.turnover) == 39
    gain, base = with_features.returns["e2e"].mean(), without.returns["e2e"].mean()
    # Holding beta 1.5 before a +1% move and beta 0 before a -1% move earns about 0.75% a row.
    assert gain > 0.004 and gain > base + 0.003, (gain, base)
    assert with_features.metrics.loc["e2e", "sharpe"] > without.metrics.loc["e2e", "sharpe"] + 3.0
