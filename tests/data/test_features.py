"""price_features: definitions, warm-up, no look-ahead, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_layers.data.features import SCORE_CLIP, price_features
from portfolio_layers.errors import ConfigError, DataError, LookAheadError


def prices(rows=120, n=3, seed=0):
    rng = np.random.default_rng(seed)
    logp = np.cumsum(rng.normal(0.0003, 0.015, size=(rows, n)), axis=0)
    idx = pd.bdate_range("2020-01-01", periods=rows)
    return pd.DataFrame(100 * np.exp(logp), index=idx, columns=[f"A{i}" for i in range(n)])


def test_shapes_names_and_warmup():
    p = prices()
    fs = price_features(p)
    assert fs.values.shape == (120, 3, len(fs.names)) == (120, 3, fs.n_features)
    assert fs.names[:4] == ("ret_1", "ret_5", "ret_20", "ret_60")
    assert fs.warmup == 60 and fs.assets == ("A0", "A1", "A2")
    assert fs.index.equals(p.index)
    assert np.isnan(fs.values[: fs.warmup]).all()
    assert np.isfinite(fs.values[fs.warmup :]).all()


def test_values_match_hand_computation():
    p = prices()
    fs = price_features(p)
    s, i = 90, 1
    col = p.iloc[:, i].to_numpy()
    r = np.diff(np.log(col))
    want = {
        "ret_1": np.log(col[s] / col[s - 1]),
        "ret_5": np.log(col[s] / col[s - 5]),
        "vol_20": np.std(r[s - 20 : s], ddof=1),  # r[j] is the return of row j + 1
        "vol_60": np.std(r[s - 60 : s], ddof=1),
        "ma_ratio_20": np.log(col[s] / col[s - 19 : s + 1].mean()),
        "drawdown_60": np.log(col[s] / col[s - 59 : s + 1].max()),
    }
    want["z_1"] = want["ret_1"] / want["vol_20"]
    want["mom_5"] = want["ret_5"] / (want["vol_20"] * np.sqrt(5))
    want["vol_ratio"] = np.log(want["vol_20"] / want["vol_60"])
    for name, value in want.items():
        assert fs.frame(name).iloc[s, i] == pytest.approx(value, rel=1e-10, abs=1e-14), name


@settings(max_examples=15, deadline=None)
@given(s=st.integers(min_value=0, max_value=118), seed=st.integers(0, 1000))
def test_no_look_ahead(s, seed):
    p = prices()
    base = price_features(p).values
    perturbed = p.copy()
    rng = np.random.default_rng(seed)
    perturbed.iloc[s + 1 :] *= np.exp(rng.normal(0, 0.2, size=perturbed.iloc[s + 1 :].shape))
    after = price_features(perturbed).values
    np.testing.assert_array_equal(after[: s + 1], base[: s + 1])
    assert not np.allclose(after[-1], base[-1])  # the perturbation did reach the later rows


def test_custom_windows_and_constant_prices_stay_finite():
    p = prices(rows=40)
    p["A1"] = 50.0  # stale price
    fs = price_features(p, return_windows=(3,), vol_windows=(10,))
    assert fs.warmup == 10 and "vol_ratio" not in fs.names
    assert np.isfinite(fs.values[10:]).all()
    assert np.abs(fs.frame("z_1").to_numpy()[10:]).max() <= SCORE_CLIP


def test_window_helper():
    fs = price_features(prices())
    w = fs.window(100, 30)
    assert w.shape == (30, 3, fs.n_features)
    np.testing.assert_array_equal(w[-1], fs.values[100])
    with pytest.raises(DataError, match="warm-up|first complete"):
        fs.window(70, 20)
    with pytest.raises(LookAheadError):
        fs.window(120, 10)


def test_bad_input():
    p = prices()
    bad = p.copy()
    bad.iloc[5, 0] = -1.0
    with pytest.raises(DataError):
        price_features(bad)
    bad = p.copy()
    bad.iloc[5, 0] = np.nan
    with pytest.raises(DataError):
        price_features(bad)
    with pytest.raises(ConfigError, match="vol_windows"):
        price_features(p, vol_windows=(1,))
    with pytest.raises(ConfigError, match="return_windows"):
        price_features(p, return_windows=())
    with pytest.raises(ConfigError, match="unknown feature"):
        price_features(p).frame("rsi")
