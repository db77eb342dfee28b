"""Bad input to the end-to-end model is answered with a clear error: settings, prices, previous weights,
damaged or unsafe checkpoints; and the training losses follow the data's frequency."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch

from portfolio_layers.errors import ConfigError, DataError, InputError, NonFiniteError, ShapeError
from portfolio_layers.models.checkpoints import restore_fit
from portfolio_layers.models.losses import portfolio_returns
from portfolio_layers.models.samples import WindowData
from portfolio_layers.models.strategy import E2EPortfolio
from portfolio_layers.models.synthetic import planted_market
from portfolio_layers.models.training import TrainConfig, split_rows
from portfolio_layers.registry import make_strategy

SMALL = {"encoder": "mlp", "d_model": 8, "window": 10, "cov_window": 40, "rebalance": 5}
TRAIN = {"epochs": 1, "stride": 3, "lr": 0.01}


def _model(**kw) -> E2EPortfolio:
    return E2EPortfolio(**{"train": TRAIN, **SMALL, **kw})


def _checked(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "range" in f.metadata]


@pytest.fixture(scope="module")
def prices():
    return planted_market(n_assets=4, n_rows=300, seed=2)


@pytest.fixture(scope="module")
def fitted(prices, tmp_path_factory):
    """A fitted model and the checkpoint file its fit wrote."""
    folder = tmp_path_factory.mktemp("fitted")
    model = _model(checkpoint_dir=str(folder)).fit(prices)
    (path,) = folder.glob("*.pt")
    return model, path


# -- settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _checked(TrainConfig))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, "1"])
def test_every_numeric_training_setting_is_checked_at_construction(name, bad):
    with pytest.raises(ConfigError, match=rf"TrainConfig\.{name} must be"):
        TrainConfig(**{name: bad})
    with pytest.raises(ConfigError, match=rf"TrainConfig\.{name} must be"):
        E2EPortfolio(train={name: bad})  # as a [params.e2e.train] table gives it: fails at validation


@pytest.mark.parametrize("name", _checked(E2EPortfolio))
@pytest.mark.parametrize("bad", [math.nan, -math.inf, -1, "1"])
def test_every_numeric_model_setting_is_checked_at_construction(name, bad):
    with pytest.raises(ConfigError, match=rf"E2EPortfolio\.{name} must be"):
        E2EPortfolio(**{name: bad})


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"lr": 0.0}, r"lr must be positive \(a finite number\), got 0.0"),
        ({"seed": 10**20}, r"seed must be in \[0, 4294967295\] \(an integer\), got 100000000000000000000"),
        ({"seed": 1.0}, r"seed must be in \[0, 4294967295\] \(an integer\)"),
        ({"epochs": True}, r"epochs must be positive \(an integer\), got True"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_settings_messages_say_what_is_accepted(train, match):
    with pytest.raises(ConfigError, match=match):
        make_strategy("e2e", train=train)


def test_bounds_and_optional_settings_that_are_valid_pass():
    TrainConfig(seed=2**32 - 1, clip_norm=0.0, patience=0, val_fraction=0.0, risk_aversion=0.0)
    model = E2EPortfolio(horizon=None, max_weight=1.0, turnover_limit=0.0, num_threads=None, window=1)
    assert model.horizon == model.rebalance


def test_periods_per_year_is_part_of_the_fingerprint():
    base = _model()._fingerprint
    assert _model(periods_per_year=252.0)._fingerprint == base  # 252.0 and 252 are one setting
    assert _model(periods_per_year=52)._fingerprint != base


# -- prices ---------------------------------------------------------------------------------------------


def test_fit_and_weights_refuse_what_is_not_a_date_indexed_price_table(fitted, prices):
    model, _ = fitted
    fresh = _model()
    expected = r"expected a pandas DataFrame of prices \(not returns\), indexed by date"
    for call in (fresh.fit, model.weights):
        with pytest.raises(InputError, match=rf"{expected}.*got ndarray.*pd.DataFrame\(values"):
            call(prices.to_numpy())
        with pytest.raises(DataError, match=r"indexed by date.*RangeIndex.*set the dates as the index"):
            call(prices.reset_index(drop=True))
        with pytest.raises(DataError, match=r"empty table"):
            call(prices.iloc[:0])
        with pytest.raises(DataError, match=r"columns \['A1'\] are not numeric"):
            call(prices.astype({"A1": str}))
    with pytest.raises(InputError, match=r"e2e.weights: expected .* with the fitted columns \['A0', 'A1'"):
        model.weights(prices.to_numpy())
    with pytest.raises(DataError, match="same assets in the same order"):
        model.fit(prices[prices.columns[::-1]])


# -- previous weights -----------------------------------------------------------------------------------


def test_current_weights_follow_one_documented_rule(prices):
    model = _model(turnover_limit=0.2).fit(prices)
    window = prices.iloc[-151:]
    none = model.weights(window)
    np.testing.assert_array_equal(model.weights(window, np.zeros(4)), none)  # before the first trade
    held = np.array([0.7, 0.1, 0.1, 0.1])
    w = model.weights(window, held)
    assert np.abs(w - held).sum() <= 0.2 + 1e-6  # the limit binds against the given weights
    with pytest.raises(NonFiniteError, match=r"current holds NaN or infinite weights at positions \[2\]"):
        model.weights(window, np.array([0.5, 0.5, np.nan, 0.0]))
    with pytest.raises(
        InputError, match=r"current weights sum to 0.5; they must sum to 1 .* or be all zeros"
    ):
        model.weights(window, np.array([0.2, 0.1, 0.1, 0.1]))
    with pytest.raises(ShapeError, match=r"current must have shape \(4,\)"):
        model.weights(window, np.full(3, 1 / 3))


# -- checkpoints ----------------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def _damage(kind: str, good: bytes, path) -> None:
    """Write a damaged version of the checkpoint ``good`` to ``path``."""
    state = torch.load(path, weights_only=True) if kind in {"no history", "missing", "shape"} else None
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "junk":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "no history":
        del state["history"]
        torch.save(state, path)
    elif kind == "missing":
        state["model"].pop(next(iter(state["model"])))
        torch.save(state, path)
    elif kind == "shape":
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(3, 3, 3)
        torch.save(state, path)
    elif kind == "unsafe":
        torch.save({"model": _Evil(), "history": {}}, path)


@pytest.mark.parametrize("kind", ["empty", "truncated", "junk", "no history", "missing", "shape", "unsafe"])
def test_a_damaged_or_unsafe_checkpoint_is_an_error_naming_the_file(fitted, prices, tmp_path, kind):
    _, good_path = fitted
    path = tmp_path / good_path.name
    shutil.copy(good_path, path)
    _damage(kind, good_path.read_bytes(), path)
    with pytest.raises(InputError) as caught:
        _model(checkpoint_dir=str(tmp_path)).fit(prices)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path} is ") and "Delete" in message
    assert "weights_only" not in message and "seed" not in message
    if kind == "unsafe":
        assert re.search(r"is unsafe: it asks to import \w+\.system when loaded", message)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    else:
        assert f"{path} is damaged: " in message


def test_a_checkpoint_of_other_shapes_leaves_the_network_as_it_was(fitted, tmp_path):
    model, good_path = fitted
    path = tmp_path / "other.pt"
    shutil.copy(good_path, path)
    _damage("shape", b"", path)
    before = {k: v.clone() for k, v in model.net_.state_dict().items()}
    with pytest.raises(InputError, match=r"parameter .* is \(3, 3, 3\) where the model has"):
        restore_fit(path, model.net_)
    for key, value in model.net_.state_dict().items():
        assert torch.equal(value, before[key])


# -- frequency ------------------------------------------------------------------------------------------


def test_a_weekly_market_trains_on_a_sharpe_ratio_annualised_with_52():
    weekly = planted_market(n_assets=4, n_rows=1500, seed=3).iloc[::5]  # one row a week
    model = _model(periods_per_year=52, train={**TRAIN, "cost_bps": 0.0, "stride": 1}).fit(weekly)
    history = model.history_
    # the loss of the kept parameters on the validation rows, computed by hand
    features, returns = model._features(weekly, "fit")
    data = model._data(features, returns, model.rebalance)
    assert isinstance(data, WindowData) and data.periods_per_year == 52
    _, val_rows = split_rows(data.decision_rows(), model.train.val_fraction, data.horizon)
    batch = data.batch(val_rows)
    model.net_.eval()
    with torch.no_grad():
        r = portfolio_returns(model.net_(batch.x, batch.sample_cov).weights, batch.future).reshape(-1)
    sharpe = r.mean() / torch.sqrt(r.var() + 1e-8) * math.sqrt(52)
    kept = history.val_loss[history.best_epoch] if history.best_epoch >= 0 else history.initial_val_loss
    assert kept == pytest.approx(-float(sharpe), rel=1e-9, abs=1e-12)
    t = int(val_rows[0])
    window = torch.as_tensor(returns[t - 39 : t + 1])  # the covariance window of 40 rows ending at t
    centred = window - window.mean(0)
    torch.testing.assert_close(batch.sample_cov[0], centred.T @ centred / 39 * 52)
