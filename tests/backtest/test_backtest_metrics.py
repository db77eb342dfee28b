from __future__ import annotations

import math

import numpy as np
import pytest

from portfolio_layers.backtest import metrics as M
from portfolio_layers.errors import InputError


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
    t = M.sharpe_difference_test(a, b)
    s_a, s_b = a.mean() / a.std(ddof=1), b.mean() / b.std(ddof=1)
    assert t.z == pytest.approx((s_a - s_b) / math.sqrt(_memmel_variance(a, b)))
    assert t.p_value == pytest.approx(math.erfc(abs(t.z) / math.sqrt(2)))
    assert t.sharpe_a == pytest.approx(M.sharpe(a)) and t.n_obs == 500
    back = M.sharpe_difference_test(b, a)
    assert back.z == pytest.approx(-t.z) and back.p_value == pytest.approx(t.p_value)
    same = M.sharpe_difference_test(a, a)
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
        rejections += M.sharpe_difference_test(a, b).p_value < 0.05
    assert np.var(diffs) == pytest.approx(np.mean(variances), rel=0.12)
    assert 0.03 <= rejections / sims <= 0.075


def test_sharpe_difference_detects_a_real_difference_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    a = rng.normal(0.002, 0.01, 2000)
    b = rng.normal(0.0, 0.01, 2000)
    assert M.sharpe_difference_test(a, b).p_value < 0.01
    with pytest.raises(InputError, match="paired"):
        M.sharpe_difference_test(a, b[:-1])
    with pytest.raises(InputError, match="constant"):
        M.sharpe_difference_test(a, np.full(2000, 0.001))
