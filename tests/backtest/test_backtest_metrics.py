from __future__ import annotations

import math

import numpy as np
import pytest

from portfolio_layers.backtest import metrics as M
from portfolio_layers.backtest import sharpe_tests as S
from portfolio_layers.errors import ConfigError, InputError


def test_metrics_by_hand():
    r = [0.02, 0.04, -0.03]
    # mean .01; deviations .01, .03, -.04 -> sample variance .0026 / 2 = .0013
    vol = math.sqrt(0.0013) * math.sqrt(252)
    assert M.annual_volatility(r) == pytest.approx(vol)
    assert M.sharpe(r) == pytest.approx(0.01 * 252 / vol)
    # downside: sqrt(mean(min(r,0)^2)) = sqrt(.0009 / 3)
    assert M.sortino(r) == pytest.approx(0.01 * 252 / (math.sqrt(0.0003) * math.sqrt(252)))
    # wealth 1.02, 1.0608, 1.028976: peak 1.0608, fall 3%
    assert M.max_drawdown(r) == pytest.approx(0.03)
    ann = 1.028976 ** (252 / 3) - 1
    assert M.annual_return(r) == pytest.approx(ann)
    assert M.calmar(r) == pytest.approx(ann / 0.03)


def test_two_period_case_and_initial_peak():
    r = [0.1, -0.1]
    assert M.annual_return(r, periods=2) == pytest.approx(1.1 * 0.9 - 1)
    assert M.annual_volatility(r, periods=2) == pytest.approx(0.2)
    assert M.sharpe(r, periods=2) == pytest.approx(0.0)
    assert M.max_drawdown(r) == pytest.approx(0.1)
    assert M.max_drawdown([-0.1, 0.05]) == pytest.approx(0.1)  # the starting wealth 1 is a peak
    np.testing.assert_allclose(M.drawdowns([-0.1, 0.05, 0.2]), [0.1, 1 - 0.945, 0.0])


def test_turnover_skips_first_trade_and_undefined_ratios_are_nan():
    assert M.mean_turnover([1.0, 0.2, 0.4]) == pytest.approx(0.3)
    assert math.isnan(M.mean_turnover([1.0]))
    up = [0.01, 0.02, 0.01]
    assert math.isnan(M.sortino(up)) and math.isnan(M.calmar(up)) and M.max_drawdown(up) == 0.0
    out = M.compute_metrics(up)
    assert list(out) == list(M.METRIC_NAMES) and math.isnan(out["turnover"])


def test_bad_returns():
    with pytest.raises(InputError, match="non-finite"):
        M.sharpe([0.1, np.nan])
    with pytest.raises(InputError, match="<= -100%"):
        M.annual_return([0.1, -1.0])


def _memmel_variance(a, b):
    s_a, s_b = a.mean() / a.std(ddof=1), b.mean() / b.std(ddof=1)
    rho = np.corrcoef(a, b)[0, 1]
    return (2 - 2 * rho + 0.5 * (s_a**2 + s_b**2 - 2 * s_a * s_b * rho**2)) / len(a)


def test_sharpe_difference_by_formula_and_symmetry():
    rng = np.random.default_rng(0)
    a = rng.normal(0.001, 0.01, 500)
    b = 0.5 * a + rng.normal(0.0, 0.01, 500)
    t = S.sharpe_difference_test(a, b)
    s_a, s_b = a.mean() / a.std(ddof=1), b.mean() / b.std(ddof=1)
    assert t.z == pytest.approx((s_a - s_b) / math.sqrt(_memmel_variance(a, b)))
    assert t.p_value == pytest.approx(math.erfc(abs(t.z) / math.sqrt(2)))
    assert t.sharpe_a == pytest.approx(M.sharpe(a)) and t.n_obs == 500
    back = S.sharpe_difference_test(b, a)
    assert back.z == pytest.approx(-t.z) and back.p_value == pytest.approx(t.p_value)
    same = S.sharpe_difference_test(a, a)
    assert same.z == 0.0 and same.p_value == 1.0


def test_sharpe_difference_variance_matches_monte_carlo_and_size_is_right():
    # iid normal pairs with equal Sharpe ratios: the formula's variance matches the simulated one and the test
    # rejects about 5% of the time at the 5% level.
    rng = np.random.default_rng(1)
    n, sims, rho = 750, 1500, 0.6
    cov = np.array([[1.0, rho], [rho, 1.0]]) * 1e-4
    chol = np.linalg.cholesky(cov)
    diffs, rejections, variances = [], 0, []
    for _ in range(sims):
        x = rng.standard_normal((n, 2)) @ chol.T + 0.0008
        a, b = x[:, 0], x[:, 1]
        diffs.append(a.mean() / a.std(ddof=1) - b.mean() / b.std(ddof=1))
        variances.append(_memmel_variance(a, b))
        rejections += S.sharpe_difference_test(a, b).p_value < 0.05
    assert np.var(diffs) == pytest.approx(np.mean(variances), rel=0.12)
    assert 0.03 <= rejections / sims <= 0.075


def test_sharpe_difference_detects_a_real_difference_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    a = rng.normal(0.002, 0.01, 2000)
    b = rng.normal(0.0, 0.01, 2000)
    assert S.sharpe_difference_test(a, b).p_value < 0.01
    with pytest.raises(InputError, match="paired"):
        S.sharpe_difference_test(a, b[:-1])
    with pytest.raises(InputError, match="constant"):
        S.sharpe_difference_test(a, np.full(2000, 0.001))


def test_periods_are_passed_through_and_validated():
    rng = np.random.default_rng(3)
    r = rng.normal(0.002, 0.02, 300)
    weekly = M.compute_metrics(r, periods=52)
    assert weekly["sharpe"] == pytest.approx(M.sharpe(r, periods=52))
    assert weekly["annual_volatility"] == pytest.approx(r.std(ddof=1) * math.sqrt(52))
    assert weekly["calmar"] == pytest.approx(M.annual_return(r, 52) / M.max_drawdown(r))
    assert M.compute_metrics(r, [1.0, 0.2], periods=252.0) == M.compute_metrics(r, [1.0, 0.2])
    test = S.sharpe_difference_test(r, 0.5 * r + rng.normal(0, 0.01, 300), periods=12)
    assert test.sharpe_a == pytest.approx(M.sharpe(r, periods=12))
    for bad in (0, -1, math.nan, math.inf, True, "252"):
        with pytest.raises(InputError, match="periods"):
            M.compute_metrics(r, periods=bad)
        with pytest.raises(InputError, match="periods"):
            S.sharpe_difference_test(r, r[::-1], periods=bad)


@pytest.mark.parametrize("method", S.SHARPE_TEST_METHODS)
@pytest.mark.parametrize("seed", [1, 2])
def test_series_identical_up_to_rounding_are_not_different(method, seed):
    # the case: equal weight computed two ways (a matrix product, a sum of products) differs by
    # rounding; np.corrcoef returns exactly 1, the Memmel variance cancels to <= 0 and gave z = inf, p = 0
    rng = np.random.default_rng(seed)
    asset_returns = rng.normal(0.0004, 0.01, (2500, 20))
    weights = np.full(20, 0.05)
    benchmark = asset_returns @ weights
    strategy = (asset_returns * weights).sum(axis=1)
    assert not np.array_equal(strategy, benchmark)
    for a, b in ((strategy, benchmark), (3.0 * benchmark, benchmark)):  # b a multiple of a: same Sharpe
        test = S.sharpe_difference_test(a, b, method=method, n_boot=99)
        assert test.z == 0.0 and test.p_value == 1.0 and test.settings == "identical up to rounding"
        assert abs(test.difference) < 1e-12


def test_a_constant_excess_return_is_a_difference_not_rounding():
    rng = np.random.default_rng(5)
    b = rng.normal(0.0, 0.01, 500)
    test = S.sharpe_difference_test(b + 1e-4, b)
    assert math.isfinite(test.z) and test.z > 0 and test.p_value < 0.01


def _null_pairs(rng, sims, n, *, shift=0.0, phi=0.2, df=5, corr=0.5, sharpe=0.05, burn=100):
    """``sims`` pairs of AR(1) series with Student-t(df) innovations correlated ``corr``, unit variance.

    Series a has per-period Sharpe ratio ``sharpe + shift`` and volatility 1%, series b ``sharpe`` and 2%:
    equal Sharpe ratios when ``shift = 0``. Returns two arrays of shape (sims, n).
    """
    chol = np.linalg.cholesky(np.array([[1.0, corr], [corr, 1.0]]))
    gauss = rng.standard_normal((sims, n + burn, 2)) @ chol.T
    mix = rng.chisquare(df, (sims, n + burn, 1)) / df
    shocks = gauss / np.sqrt(mix) * math.sqrt((df - 2) / df)  # unit-variance t innovations
    x = np.zeros_like(shocks)
    for t in range(1, n + burn):
        x[:, t] = phi * x[:, t - 1] + shocks[:, t]
    x = x[:, burn:] * math.sqrt(1.0 - phi**2)
    return 0.01 * (sharpe + shift + x[..., 0]), 0.02 * (sharpe + x[..., 1])


def _rejection_rate(a, b, method, **options):
    rejected = [
        S.sharpe_difference_test(a[i], b[i], method=method, seed=i, **options).p_value < 0.05
        for i in range(a.shape[0])
    ]
    return float(np.mean(rejected))


def test_ledoit_wolf_size_with_fat_tails_and_autocorrelation():
    # 400 null pairs of length 500 (t5, AR(1) 0.2, correlation 0.5). Measured with 2000 pairs: Jobson-Korkie
    # 11.3%, HAC 5.0%, bootstrap 4.6% rejections at the 5% level.
    a, b = _null_pairs(np.random.default_rng(6), 400, 500)
    hac = _rejection_rate(a, b, "ledoit_wolf_hac")
    boot = _rejection_rate(a[:200], b[:200], "ledoit_wolf_bootstrap", n_boot=199)
    assert 0.02 <= hac <= 0.09
    assert 0.015 <= boot <= 0.10
    assert _rejection_rate(a, b, "jobson_korkie") > 0.07  # the iid test over-rejects on these data


@pytest.mark.slow
def test_ledoit_wolf_bootstrap_size_many_pairs():
    a, b = _null_pairs(np.random.default_rng(7), 1000, 500)
    assert 0.03 <= _rejection_rate(a, b, "ledoit_wolf_bootstrap", n_boot=499) <= 0.07


def test_ledoit_wolf_power_and_agreement_with_jobson_korkie_on_iid_data():
    a, b = _null_pairs(np.random.default_rng(8), 200, 500, shift=0.2)  # annualised difference ~3.2
    assert _rejection_rate(a, b, "ledoit_wolf_hac") > 0.8
    assert _rejection_rate(a[:100], b[:100], "ledoit_wolf_bootstrap", n_boot=199) > 0.8
    rng = np.random.default_rng(9)
    x = rng.normal(0.001, 0.01, 5000)
    y = 0.5 * x + rng.normal(0.0005, 0.01, 5000)
    jk = S.sharpe_difference_test(x, y)
    hac = S.sharpe_difference_test(x, y, method="ledoit_wolf_hac")
    assert hac.z == pytest.approx(jk.z, rel=0.1)  # iid normal data: both standard errors are consistent
    assert (hac.sharpe_a, hac.difference, hac.n_obs) == (jk.sharpe_a, jk.difference, jk.n_obs)


def test_ledoit_wolf_bootstrap_is_reproducible_and_reports_its_settings():
    rng = np.random.default_rng(10)
    x = rng.normal(0.001, 0.01, 300)
    y = 0.3 * x + rng.normal(0.0, 0.01, 300)
    first = S.sharpe_difference_test(x, y, method="ledoit_wolf_bootstrap", n_boot=199, seed=3)
    again = S.sharpe_difference_test(x, y, method="ledoit_wolf_bootstrap", n_boot=199, seed=3)
    assert first == again and first.method == "ledoit_wolf_bootstrap"
    assert first.settings.startswith("circular blocks of 5, 199 resamples, seed 3")
    assert first.p_value * 200 == pytest.approx(round(first.p_value * 200))  # (1 + count) / (M + 1)
    hac = S.sharpe_difference_test(x, y, method="ledoit_wolf_hac")
    assert hac.z == first.z and "QS kernel" in hac.settings


def test_sharpe_test_options_are_checked():
    x = np.random.default_rng(11).normal(0.0, 0.01, 50)
    y = x[::-1].copy()
    with pytest.raises(ConfigError, match="unknown Sharpe-difference test 'memmel'"):
        S.sharpe_difference_test(x, y, method="memmel")
    for bad in ({"block_length": 0}, {"block_length": 2.5}, {"n_boot": 0}, {"block_length": 30}):
        with pytest.raises(ConfigError, match="block_length|n_boot"):
            S.sharpe_difference_test(x, y, method="ledoit_wolf_bootstrap", **bad)
    with pytest.raises(InputError, match="at least 10 paired returns"):
        S.sharpe_difference_test(x[:8], y[:8], method="ledoit_wolf_hac")
