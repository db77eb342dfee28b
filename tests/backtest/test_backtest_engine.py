from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portfolio_layers.backtest import BacktestConfig, run_backtest, sharpe_difference_test
from portfolio_layers.errors import ConfigError, DataError, InfeasibleError, InputError, StrategyError
from portfolio_layers.registry import build_strategies, build_strategy


class Scripted:
    """Returns preset weights in call order and records what it saw."""

    def __init__(self, weights, name="scripted"):
        self.name, self._weights, self.seen, self.currents = name, list(weights), [], []

    def fit(self, prices):
        pass

    def weights(self, prices, current):
        self.seen.append(prices.index.copy())
        self.currents.append(current.copy())
        return np.asarray(self._weights[len(self.seen) - 1], dtype=float)


def _hand_prices() -> pd.DataFrame:
    # Simple returns by row: R1 = (.1, -.1, 0), R2 = (.1, .1, 0), R3 = (.1, -.1, 0), R4 = (0, .2, -.5),
    # R5 = (-.5, 0, 1).
    rets = np.array([[0.1, -0.1, 0.0], [0.1, 0.1, 0.0], [0.1, -0.1, 0.0], [0.0, 0.2, -0.5], [-0.5, 0.0, 1.0]])
    p = 100.0 * np.vstack([np.ones(3), np.cumprod(1.0 + rets, axis=0)])
    return pd.DataFrame(p, index=pd.date_range("2021-01-04", periods=6, freq="B"), columns=["A", "B", "C"])


def test_hand_computed_drift_turnover_and_costs():
    prices = _hand_prices()
    strat = Scripted([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    cfg = BacktestConfig(lookback=2, rebalance=2, cost_bps=100.0, strategies=("scripted",), benchmark=None)
    res = run_backtest(prices, [strat], cfg)
    # Rebalance rows t = 2 and 4 (t <= T-2 = 4); returns of rows 3, 4, 5.
    assert list(res.turnover.index) == list(prices.index[[2, 4]])
    # Row 3: r = .5*.1 + .3*(-.1) = .02, minus the cost of buying from cash: 1% * tau = 1% * 1.
    # Drift: h3 = (.55, .27, .2) / 1.02. Row 4: r = (.27*.2 - .2*.5) / 1.02 = -.046/1.02.
    # h4 = (.55, .324, .1) / .974; tau_4 = (.3552 + .0318 + .387) / .974 = .774 / .974.
    # Row 5: r = .2*(-.5) + .5*1 = .4, minus 1% * tau_4.
    expected = [0.02 - 0.01, -0.046 / 1.02, 0.4 - 0.01 * 0.774 / 0.974]
    np.testing.assert_allclose(res.returns["scripted"].to_numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        res.gross_returns["scripted"].to_numpy(), [0.02, -0.046 / 1.02, 0.4], atol=1e-12
    )
    np.testing.assert_allclose(res.turnover["scripted"].to_numpy(), [1.0, 0.774 / 0.974], atol=1e-12)
    # The strategy saw rows t-L..t and the drifted weights just before each trade.
    assert [list(s) for s in strat.seen] == [list(prices.index[0:3]), list(prices.index[2:5])]
    np.testing.assert_array_equal(strat.currents[0], np.zeros(3))
    np.testing.assert_allclose(strat.currents[1], np.array([0.55, 0.324, 0.1]) / 0.974, atol=1e-12)
    np.testing.assert_allclose(res.weights["scripted"].to_numpy(), [[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    assert res.metrics.loc["scripted", "turnover"] == pytest.approx(0.774 / 0.974)
    assert res.metrics.loc["scripted", "annual_return"] == pytest.approx(
        np.prod(1.0 + np.array(expected)) ** (252 / 3) - 1
    )


class Recorder:
    """A 'learning' strategy whose weights depend on everything it has seen, recording all of it."""

    def __init__(self, cap: float | None = None):
        self.name, self.cap, self.memory, self.max_seen = "recorder", cap, 0.0, []

    def fit(self, prices):
        self.max_seen.append(prices.index[-1])
        self.memory = float(np.log(prices.to_numpy()).mean())

    def weights(self, prices, current):
        self.max_seen.append(prices.index[-1])
        x = np.log(prices.to_numpy()).sum(axis=0) + self.memory + current
        w = np.exp(x - x.max())
        return w / w.sum()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_rows=st.integers(8, 40),
    n_assets=st.integers(2, 4),
    lookback=st.integers(2, 6),
    rebalance=st.integers(1, 5),
    retrain_every=st.integers(1, 10),
    window=st.sampled_from(["rolling", "expanding"]),
    cut=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_no_strategy_can_see_the_future(
    n_rows, n_assets, lookback, rebalance, retrain_every, window, cut, seed
):
    if n_rows < lookback + 2:
        return
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2020-01-01", periods=n_rows, freq="B")
    p = pd.DataFrame(np.exp(np.cumsum(rng.normal(0, 0.02, (n_rows, n_assets)), axis=0)), index=idx)
    c = lookback + int(cut * (n_rows - lookback - 1))  # first perturbed row
    q = p.copy()
    q.iloc[c:] *= np.exp(rng.normal(0, 0.5, (n_rows - c, n_assets)))
    cfg = BacktestConfig(
        lookback=lookback,
        rebalance=rebalance,
        retrain_every=retrain_every,
        train_window=3,
        window=window,
        cost_bps=5.0,
        strategies=("recorder",),
        benchmark=None,
    )
    a, b = Recorder(), Recorder()
    ra, rb = run_backtest(p, [a], cfg), run_backtest(q, [b], cfg)
    before = ra.weights["recorder"].index < idx[c]
    assert before.sum() >= (1 if c > lookback else 0)
    np.testing.assert_array_equal(
        ra.weights["recorder"][before].to_numpy(), rb.weights["recorder"][before].to_numpy()
    )
    # Net returns of rows before the perturbation are identical too.
    early = ra.returns.index < idx[c]
    np.testing.assert_array_equal(ra.returns[early].to_numpy(), rb.returns[early].to_numpy())
    # Structurally: nothing handed to fit/weights ever ends after the rebalance date.
    calls = iter(a.max_seen)
    for date in ra.weights["recorder"].index:
        last = next(calls)
        if date in ra.fit_dates:
            assert last == date
            last = next(calls)
        assert last == date


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_assets=st.integers(2, 6),
    cap_frac=st.floats(0.0, 1.0),
    name=st.sampled_from(["equal_weight", "inverse_volatility", "min_variance", "mean_variance"]),
    seed=st.integers(0, 2**16),
)
def test_weights_sum_to_one_and_respect_bounds(n_assets, cap_frac, name, seed):
    rng = np.random.default_rng(seed)
    rows = 40
    idx = pd.date_range("2020-01-01", periods=rows, freq="B")
    vols = rng.uniform(0.005, 0.04, n_assets)
    p = pd.DataFrame(np.exp(np.cumsum(rng.normal(0.0005, vols, (rows, n_assets)), axis=0)), index=idx)
    cap = 1.0 / n_assets + cap_frac * (1.0 - 1.0 / n_assets)
    cfg = BacktestConfig(lookback=15, rebalance=7, max_weight=cap, strategies=(name,), benchmark=None)
    res = run_backtest(p, build_strategies(cfg), cfg)
    w = res.weights[name].to_numpy()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    assert (w >= -1e-9).all() and (w <= cap + 1e-7).all()


def test_fit_schedule_rolling_and_expanding():
    idx = pd.date_range("2020-01-01", periods=30, freq="B")
    p = pd.DataFrame(np.linspace(1, 2, 60).reshape(30, 2), index=idx)

    class Spy(Recorder):
        def __init__(self):
            super().__init__()
            self.windows = []

        def fit(self, prices):
            self.windows.append((prices.index[0], prices.index[-1]))

    for window, first_rows in (("rolling", [1, 6, 11]), ("expanding", [0, 0, 0])):
        spy = Spy()
        cfg = BacktestConfig(
            lookback=5,
            rebalance=3,
            retrain_every=5,
            train_window=10,
            window=window,
            strategies=("recorder",),
            benchmark=None,
        )
        res = run_backtest(p, [spy], cfg)
        # Rebalances at rows 5, 8, ..., 26; fits at 5, 11 (>= 5+5), 17, 23.
        assert list(res.fit_dates) == list(idx[[5, 11, 17, 23]])
        assert [w[1] for w in spy.windows] == list(idx[[5, 11, 17, 23]])
        starts = [idx.get_loc(w[0]) for w in spy.windows][:3]
        assert starts == ([max(0, t + 1 - 10) for t in (5, 11, 17)] if window == "rolling" else first_rows)


def test_bad_weights_are_reported():
    p = _hand_prices()
    cfg = BacktestConfig(lookback=2, rebalance=2, strategies=("scripted",), benchmark=None)
    with pytest.raises(InputError, match=r"summing to 0\.9 on 2021-01-06"):
        run_backtest(p, [Scripted([[0.5, 0.3, 0.1]] * 2)], cfg)
    with pytest.raises(InputError, match=r"shape \(2,\)"):
        run_backtest(p, [Scripted([[0.5, 0.5]] * 2)], cfg)
    with pytest.raises(InputError, match="non-finite"):
        run_backtest(p, [Scripted([[np.nan, 0.5, 0.5]] * 2)], cfg)
    with pytest.raises(DataError, match="too few rows"):
        run_backtest(p, [Scripted([])], BacktestConfig(lookback=5, strategies=("scripted",)))
    with pytest.raises(ConfigError, match="run_backtest takes strategy objects, got 'equal_weight'"):
        run_backtest(p, ["equal_weight"], cfg)  # names are built by portfolio_layers.registry


class Failing(Scripted):
    """Equal weights, but its second fit (or its weights, with ``in_weights``) raises ``error``."""

    def __init__(self, error, in_weights=False):
        super().__init__([], name="failing")
        self.error, self.in_weights, self.fits = error, in_weights, 0

    def fit(self, prices):
        self.fits += 1
        if self.fits == 2 and not self.in_weights:
            raise self.error

    def weights(self, prices, current):
        if self.in_weights:
            raise self.error
        return np.full(len(current), 1.0 / len(current))


def test_strategy_failures_name_the_strategy_and_date():
    idx = pd.date_range("2020-01-01", periods=30, freq="B")
    p = pd.DataFrame(np.linspace(1, 2, 60).reshape(30, 2), index=idx)
    cfg = BacktestConfig(lookback=5, rebalance=3, retrain_every=5, strategies=("failing",), benchmark=None)
    # An unexpected exception (e.g. torch's linalg error on NaN weights) becomes a StrategyError at the second
    # fit (row 11), with the original as its cause.
    with pytest.raises(
        StrategyError,
        match=r"'failing' failed while fitting on the prices up to 2020-01-16: "
        r"RuntimeError: svd failed\.",
    ) as info:
        run_backtest(p, [Failing(RuntimeError("svd failed\nlong torch detail"))], cfg)
    assert isinstance(info.value.__cause__, RuntimeError) and "long torch detail" not in str(info.value)
    # Our own errors keep their type and message, with the place added as a note.
    with pytest.raises(InfeasibleError, match="no portfolio") as info:
        run_backtest(p, [Failing(InfeasibleError("no portfolio"), in_weights=True)], cfg)
    assert info.value.__notes__ == ["(strategy 'failing' failed while choosing weights on 2020-01-08.)"]


def test_diagnostics_are_kept_and_benchmark_test_runs():
    p = _hand_prices()
    s = Scripted([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], name="scripted")
    s.diagnostics = lambda: {"loss": pd.DataFrame({"train": [3.0, 2.0, 1.5]})}
    cfg = BacktestConfig(
        lookback=2, rebalance=2, strategies=("scripted", "equal_weight"), benchmark="equal_weight"
    )
    res = run_backtest(p, [s, build_strategy("equal_weight", cfg)], cfg)
    assert list(res.diagnostics) == ["scripted"]
    assert res.diagnostics["scripted"]["loss"]["train"].tolist() == [3.0, 2.0, 1.5]
    assert list(res.metrics.index) == ["scripted", "equal_weight"]
    tests = res.sharpe_tests()
    assert tests.index.tolist() == ["scripted"] and 0.0 <= tests.loc["scripted", "p_value"] <= 1.0


def test_trade_start_keeps_earlier_rows_as_history_only():
    rng = np.random.default_rng(5)
    idx = pd.date_range("2020-01-01", periods=60, freq="B")
    p = pd.DataFrame(np.exp(np.cumsum(rng.normal(0, 0.01, (60, 3)), axis=0)), index=idx, columns=list("ABC"))
    base = dict(lookback=5, rebalance=4, strategies=("inverse_volatility", "equal_weight"), benchmark=None)
    late_config = BacktestConfig(trade_start=str(idx[20].date()), **base)
    late = run_backtest(p, build_strategies(late_config), late_config)
    assert late.turnover.index[0] == idx[20] and late.returns.index[0] == idx[21]
    assert list(late.turnover.index) == list(idx[20:59:4])
    # Same decisions from the same rows: a run on the data from row 15 (= 20 - lookback) trades at the
    # same dates with identical weights and returns.
    cut_config = BacktestConfig(**base)
    cut = run_backtest(p.iloc[15:], build_strategies(cut_config), cut_config)
    pd.testing.assert_frame_equal(late.weights["inverse_volatility"], cut.weights["inverse_volatility"])
    pd.testing.assert_frame_equal(late.returns, cut.returns)
    # trade_start earlier than row L changes nothing; one past the end is an error.
    early_config = BacktestConfig(trade_start="2019-01-01", **base)
    early = run_backtest(p, build_strategies(early_config), early_config)
    assert early.turnover.index[0] == idx[5]
    with pytest.raises(DataError, match="no trade possible"):
        past_config = BacktestConfig(trade_start="2021-01-01", **base)
        run_backtest(p, build_strategies(past_config), past_config)


def test_sharpe_tests_report_ledoit_wolf_beside_jobson_korkie():
    rng = np.random.default_rng(3)
    idx = pd.date_range("2020-01-01", periods=300, freq="B")
    p = pd.DataFrame(
        np.exp(np.cumsum(rng.normal(0, 0.01, (300, 4)), axis=0)), index=idx, columns=list("ABCD")
    )
    cfg = BacktestConfig(lookback=20, rebalance=10, strategies=("equal_weight", "min_variance"))
    res = run_backtest(p, build_strategies(cfg), cfg)
    tests = res.sharpe_tests()
    assert list(tests.columns) == [
        "sharpe",
        "sharpe_difference",
        "z",
        "p_value",
        "z_lw",
        "p_value_lw",
        "lw_settings",
    ]
    a, b = res.returns["min_variance"], res.returns["equal_weight"]
    jk = sharpe_difference_test(a, b, res.periods_per_year)
    lw = sharpe_difference_test(
        a, b, res.periods_per_year, method="ledoit_wolf_bootstrap", block_length=5, n_boot=4999, seed=0
    )
    row = tests.loc["min_variance"]
    assert (row["z"], row["p_value"]) == (jk.z, jk.p_value)
    assert (row["z_lw"], row["p_value_lw"], row["lw_settings"]) == (lw.z, lw.p_value, lw.settings)
    assert "circular blocks of 5, 4999 resamples, seed 0" in row["lw_settings"]
    other = res.sharpe_tests(block_length=10, n_boot=999, seed=1).loc["min_variance"]
    assert "circular blocks of 10, 999 resamples, seed 1" in other["lw_settings"]
    # Too few returns for the bootstrap: JK is reported, LW is NaN and says why.
    short = run_backtest(p.iloc[:28], build_strategies(cfg), cfg).sharpe_tests().loc["min_variance"]
    assert np.isfinite(short["p_value"]) and np.isnan(short["p_value_lw"])
    assert short["lw_settings"].startswith("not computed: 7 paired returns, at least 10")


# -- exogenous features --------------------------------------------------------------------------------


class FeatureTilt:
    """Tilts toward asset ``i`` by ``i * f``, ``f`` the sum of its last feature row; records its inputs."""

    def __init__(self, name="tilt"):
        self.name, self.calls = name, []

    def fit(self, prices, features=None):
        self.calls.append(("fit", prices.index.copy(), features))

    def weights(self, prices, current, features=None):
        self.calls.append(("weights", prices.index.copy(), features))
        f = features.to_numpy()[-1].sum()
        x = f * np.arange(prices.shape[1])
        w = np.exp(x - x.max())
        return w / w.sum()


def _feature_market(rows=60, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.bdate_range("2021-01-04", periods=rows)
    prices = pd.DataFrame(
        np.exp(np.cumsum(rng.normal(0, 0.01, (rows, 3)), axis=0)), index=idx, columns=list("ABC")
    )
    weekly = pd.date_range("2020-12-25", idx[-1], freq="W-FRI")  # one row dated before the prices
    features = pd.DataFrame(rng.normal(size=(len(weekly), 2)), index=weekly, columns=["mkt", "rate"])
    return prices, features


_FEATURE_CONFIG = {"lookback": 5, "rebalance": 3, "retrain_every": 6, "train_window": 8, "benchmark": None}


def test_features_reach_every_strategy_sliced_like_the_prices():
    prices, features = _feature_market()
    cfg = BacktestConfig(strategies=("tilt", "equal_weight"), **_FEATURE_CONFIG)
    tilt = FeatureTilt()
    ew = build_strategies(BacktestConfig(strategies=("equal_weight",)))[0]
    res = run_backtest(prices, [tilt, ew], cfg, features)
    assert {kind for kind, _, _ in tilt.calls} == {"fit", "weights"}
    for _, dates, seen in tilt.calls:
        assert seen.index.equals(dates) and list(seen.columns) == ["mkt", "rate"]
        for day, row in seen.iterrows():  # the latest feature row dated on or before each price date
            np.testing.assert_array_equal(row.to_numpy(), features.loc[:day].iloc[-1].to_numpy())
    # A classical strategy ignores them: the same weights as without features.
    plain = run_backtest(prices, [ew], BacktestConfig(strategies=("equal_weight",), **_FEATURE_CONFIG))
    pd.testing.assert_frame_equal(res.weights["equal_weight"], plain.weights["equal_weight"])
    # Without features, a strategy written for prices only is called as before (no features keyword).
    Scripted([[1 / 3] * 3] * 20).weights(prices, np.zeros(3))
    run_backtest(
        prices, [Scripted([[1 / 3] * 3] * 20)], BacktestConfig(strategies=("scripted",), **_FEATURE_CONFIG)
    )


def test_the_config_names_the_feature_file(tmp_path):
    prices, features = _feature_market()
    path = tmp_path / "factors.csv"
    features.to_csv(path, index_label="date")
    cfg = BacktestConfig(strategies=("tilt",), features=str(path), **_FEATURE_CONFIG)
    from_config = run_backtest(prices, [FeatureTilt()], cfg)
    given = run_backtest(
        prices, [FeatureTilt()], BacktestConfig(strategies=("tilt",), **_FEATURE_CONFIG), features
    )
    np.testing.assert_allclose(from_config.weights["tilt"].to_numpy(), given.weights["tilt"].to_numpy())
    assert BacktestConfig.from_toml(_written(tmp_path, cfg.to_toml())).features == str(path)


def _written(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(5, 58), seed=st.integers(0, 2**16))
def test_changing_future_features_moves_nothing_before_them(cut, seed):
    """Feature rows dated after date t are perturbed: weights and net returns up to t do not move."""
    prices, features = _feature_market(seed=seed)
    t = prices.index[cut]
    perturbed = features.copy()
    later = perturbed.index > t
    perturbed.loc[later] += np.random.default_rng(seed + 1).normal(0, 5.0, (int(later.sum()), 2))
    cfg = BacktestConfig(strategies=("tilt",), cost_bps=10.0, **_FEATURE_CONFIG)
    a = run_backtest(prices, [FeatureTilt()], cfg, features)
    b = run_backtest(prices, [FeatureTilt()], cfg, perturbed)
    upto = a.weights["tilt"].index <= t
    np.testing.assert_array_equal(a.weights["tilt"][upto].to_numpy(), b.weights["tilt"][upto].to_numpy())
    early = a.returns.index <= t
    np.testing.assert_array_equal(a.returns[early].to_numpy(), b.returns[early].to_numpy())
    if later.any() and (a.weights["tilt"].index > features.index[later][0]).any():
        assert not np.array_equal(a.weights["tilt"].to_numpy(), b.weights["tilt"].to_numpy())


def test_features_that_do_not_cover_the_decisions_are_refused(tmp_path):
    prices, features = _feature_market()
    cfg = BacktestConfig(strategies=("tilt",), **_FEATURE_CONFIG)
    first = prices.index[cfg.lookback]
    late = features.loc[features.index > first]
    with pytest.raises(DataError, match=f"first decision, on {first.date()}, has no feature row"):
        run_backtest(prices, [FeatureTilt()], cfg, late)
    no_overlap = features.copy()
    no_overlap.index = no_overlap.index + pd.Timedelta(days=400)
    with pytest.raises(DataError, match="has no feature row dated on or before it"):
        run_backtest(prices, [FeatureTilt()], cfg, no_overlap)
    with pytest.raises(DataError, match="extend the features or end the run earlier"):
        run_backtest(prices, [FeatureTilt()], cfg, features.iloc[:4])
    bad = tmp_path / "bad.csv"
    bad.write_text("date,mkt\n2021-01-01,1\n2021-01-08,oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.csv: column 'mkt' holds non-numeric"):
        run_backtest(prices, [FeatureTilt()], cfg, bad)
    with pytest.raises(DataError, match=r"feature file .*missing\.csv not found"):
        run_backtest(
            prices,
            [FeatureTilt()],
            BacktestConfig(
                features=str(tmp_path / "missing.csv"), **{**_FEATURE_CONFIG, "strategies": ("tilt",)}
            ),
        )
