"""Tests of equal Sharpe ratios of two paired series of net simple returns (rf = 0).

:func:`sharpe_difference_test` offers Jobson-Korkie with Memmel's correction (iid normal returns) and the two
tests of Ledoit & Wolf (2008), which allow heavy tails and autocorrelation: a HAC standard error, and a
studentized circular block bootstrap. Two series identical up to rounding are "no difference" (z = 0, p = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from portfolio_layers.backtest.metrics import PERIODS_PER_YEAR, as_array, check_periods
from portfolio_layers.errors import ConfigError, InputError

#: Methods of :func:`sharpe_difference_test`.
SHARPE_TEST_METHODS = ("jobson_korkie", "ledoit_wolf_hac", "ledoit_wolf_bootstrap")
#: Root mean square of the difference of the volatility-scaled series at or below which two return series
#: count as identical up to rounding (z = 0, p = 1), see :func:`sharpe_difference_test`.
ROUNDING_TOLERANCE = 1e-10
#: Default block length ``b`` of the circular block bootstrap (a trading week of daily returns).
DEFAULT_BLOCK_LENGTH = 5
#: Default number ``M`` of bootstrap resamples (p-values resolve to ``1 / (M + 1)``).
DEFAULT_N_BOOT = 4999
#: Fewest paired returns the Ledoit-Wolf tests accept (the HAC estimator fits a VAR(1) of 4 moment series).
MIN_OBS_LEDOIT_WOLF = 10

_QS_BANDWIDTH_CONSTANT = 1.3221  # Andrews (1991), quadratic-spectral kernel
_PREWHITEN_CAP = 0.97  # Andrews & Monahan (1992): largest singular value of the prewhitening VAR(1)
_BOOT_CHUNK = 1_000_000  # resampled blocks held in memory at once


@dataclass(frozen=True)
class SharpeTest:
    """Result of :func:`sharpe_difference_test`.

    Attributes
    ----------
    sharpe_a, sharpe_b : float
        Annualised Sharpe ratios of the two series (as :func:`sharpe`).
    difference : float
        ``sharpe_a - sharpe_b`` (annualised).
    z : float
        Studentized statistic, asymptotically standard normal when the Sharpe ratios are equal (0 for series
        identical up to rounding).
    p_value : float
        Two-sided p-value: ``2 * (1 - Phi(|z|))``, or the bootstrap p-value for ``"ledoit_wolf_bootstrap"``.
    n_obs : int
        Number of paired returns N.
    method : str
        One of :data:`SHARPE_TEST_METHODS`.
    settings : str
        The method's settings in words (kernel and bandwidth, block length, resamples, seed), for reports.
    """

    sharpe_a: float
    sharpe_b: float
    difference: float
    z: float
    p_value: float
    n_obs: int
    method: str = "jobson_korkie"
    settings: str = ""


def sharpe_difference_test(
    returns_a: pd.Series | np.ndarray,
    returns_b: pd.Series | np.ndarray,
    periods: int | float = PERIODS_PER_YEAR,
    *,
    method: str = "jobson_korkie",
    block_length: int = DEFAULT_BLOCK_LENGTH,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int | None = 0,
) -> SharpeTest:
    r"""Test equal Sharpe ratios of two paired return series.

    Write ``s_a = mean_a / sd_a`` and ``s_b`` for the per-period Sharpe ratios over N paired periods.

    ``"jobson_korkie"`` (Jobson & Korkie 1981 with Memmel's 2003 correction; iid normal returns assumed): with
    the correlation ``rho`` of the two series, ``V = (2 - 2 rho + (s_a^2 + s_b^2 - 2 s_a s_b rho^2) / 2) / N``
    and ``z = (s_a - s_b) / sqrt(V)``. ``2 - 2 rho`` is computed as the sample variance of
    ``a / sd_a - b / sd_b``, which is never negative, and ``s_a^2 + s_b^2 - 2 s_a s_b rho^2`` as
    ``(s_a - s_b)^2 + 2 s_a s_b (1 - rho^2)``: no cancellation when the series nearly agree.

    ``"ledoit_wolf_hac"`` (Ledoit & Wolf 2008, section 3.1; heavy tails and autocorrelation allowed): the
    difference is a function ``f(v) = mu_a / sqrt(g_a - mu_a^2) - mu_b / sqrt(g_b - mu_b^2)`` of the moments
    ``v = (mu_a, mu_b, g_a, g_b)`` (means and means of squares). By the delta method
    ``se = sqrt(grad f' Psi grad f / N)`` with
    ``grad f = (g_a / c_a^3, -g_b / c_b^3, -mu_a / (2 c_a^3), mu_b / (2 c_b^3))``, ``c = sqrt(g - mu^2)``, and
    ``Psi`` the long-run covariance of ``y_t = (a_t - mu_a, b_t - mu_b, a_t^2 - g_a, b_t^2 - g_b)``, estimated
    as Ledoit-Wolf do: quadratic-spectral kernel
    ``k(x) = 25 / (12 pi^2 x^2) * (sin(6 pi x / 5) / (6 pi x / 5) - cos(6 pi x / 5))`` on VAR(1)-prewhitened
    ``y_t`` (Andrews & Monahan 1992, singular values of the VAR matrix capped at 0.97), bandwidth
    ``S = 1.3221 (alpha N)^(1/5)`` from AR(1) fits to the residuals (Andrews 1991), recoloured by
    ``(I - A)^-1 Psi_e (I - A)^-T`` and scaled by ``N / (N - 4)``. Then ``z = f(v) / se`` (the moments are
    ``ddof=0``; the reported Sharpe ratios use ``ddof=1``, a factor ``sqrt(N / (N - 1))`` apart).

    ``"ledoit_wolf_bootstrap"`` (Ledoit & Wolf 2008, section 3.2): ``z`` as for the HAC test; the p-value
    comes from ``M = n_boot`` circular block bootstrap resamples of ``l = N // b`` blocks of
    ``b = block_length`` consecutive pairs (wrapping around the end), each giving ``d*`` and its standard
    error ``se*`` from the block sums, ``Psi* = (1 / l) sum_j zeta_j zeta_j'`` with
    ``zeta_j = b^(-1/2) sum_{t in block j} y*_t`` (``y*_t`` centred at the resample's moments):
    ``p = (1 + #{|d* - d| / se* >= |d| / se}) / (M + 1)``.

    Two series identical up to rounding are not different: when the root mean square of
    ``a / sd_a - b / sd_b`` is at most :data:`ROUNDING_TOLERANCE` (1e-10, about 5e5 machine epsilons, where
    rounding from computing one portfolio two ways stays near 1e-15 and every variance above is rounding
    noise), every method returns ``z = 0`` and ``p = 1``. This also covers ``b`` a positive multiple of ``a``.

    Parameters
    ----------
    returns_a, returns_b : Series or array of shape (N,)
        Paired returns (same dates), for example a strategy and a benchmark. Series are aligned on their
        index first.
    periods : int or float
        Periods per year, used only to annualise the reported Sharpe ratios (the tests are scale-free).
    method : {"jobson_korkie", "ledoit_wolf_hac", "ledoit_wolf_bootstrap"}
        The test; the Ledoit-Wolf ones need at least :data:`MIN_OBS_LEDOIT_WOLF` pairs.
    block_length : int
        Bootstrap block length ``b`` (default 5, a week of daily returns; longer for stronger
        autocorrelation).
    n_boot : int
        Number of bootstrap resamples ``M``.
    seed : int or None
        Seed of the bootstrap's random generator (reproducible p-values); None draws a fresh one.

    Returns
    -------
    SharpeTest
        ``z > 0`` means ``a`` has the higher Sharpe ratio; ``p_value`` is two-sided.

    Raises
    ------
    ConfigError
        Unknown method, or a block length or number of resamples that is not a positive integer.
    InputError
        Unpaired, non-finite or constant series, too few pairs.
    """
    if method not in SHARPE_TEST_METHODS:
        raise ConfigError(f"unknown Sharpe-difference test {method!r}; use one of {SHARPE_TEST_METHODS}.")
    scale = math.sqrt(check_periods(periods))
    a, b = _paired(returns_a, returns_b)
    n = a.size
    sd_a, sd_b = a.std(ddof=1), b.std(ddof=1)
    x, y = a / sd_a, b / sd_b  # scale-free: every test below depends on the series through x and y only
    s_a, s_b = float(a.mean() / sd_a), float(b.mean() / sd_b)

    def result(z: float, p_value: float, settings: str) -> SharpeTest:
        return SharpeTest(s_a * scale, s_b * scale, (s_a - s_b) * scale, z, p_value, n, method, settings)

    if method == "ledoit_wolf_bootstrap":
        _check_bootstrap_options(block_length, n_boot, n)
    u = x - y
    if math.sqrt(float(np.mean(u**2))) <= ROUNDING_TOLERANCE:
        return result(0.0, 1.0, "identical up to rounding")
    if method == "jobson_korkie":
        two_minus_two_rho = float(u.var(ddof=1))
        one_minus_rho2 = 0.5 * two_minus_two_rho * (2.0 - 0.5 * two_minus_two_rho)  # (1 - rho)(1 + rho)
        # s_a^2 + s_b^2 - 2 s_a s_b rho^2, written without cancellation when rho is near 1
        var = (two_minus_two_rho + 0.5 * ((s_a - s_b) ** 2 + 2.0 * s_a * s_b * one_minus_rho2)) / n
        z = (s_a - s_b) / math.sqrt(var)
        return result(z, math.erfc(abs(z) / math.sqrt(2.0)), "iid normal returns")
    if n < MIN_OBS_LEDOIT_WOLF:
        raise InputError(
            f"the Ledoit-Wolf tests need at least {MIN_OBS_LEDOIT_WOLF} paired returns, got {n}."
        )
    moments = np.array([x.mean(), y.mean(), np.mean(x**2), np.mean(y**2)])
    diff, grad = _sharpe_difference_and_gradient(moments)
    psi, bandwidth = _hac_covariance(np.column_stack([x, y, x**2, y**2]) - moments)
    z = float(diff / math.sqrt(grad @ psi @ grad / n))
    hac = f"prewhitened QS kernel, bandwidth {bandwidth:.2f}"
    if method == "ledoit_wolf_hac":
        return result(z, math.erfc(abs(z) / math.sqrt(2.0)), hac)
    p_value = _bootstrap_p_value(x, y, diff, abs(z), block_length, n_boot, seed)
    return result(z, p_value, f"circular blocks of {block_length}, {n_boot} resamples, seed {seed}; {hac}")


def _paired(
    returns_a: pd.Series | np.ndarray, returns_b: pd.Series | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(returns_a, pd.Series) and isinstance(returns_b, pd.Series):
        returns_a, returns_b = returns_a.align(returns_b, join="inner")
    a = as_array(returns_a, "returns_a")
    b = as_array(returns_b, "returns_b")
    if a.shape != b.shape:
        raise InputError(f"returns_a {a.shape} and returns_b {b.shape} must be paired (same length).")
    if a.size < 3:
        raise InputError(f"the Sharpe-difference test needs at least 3 paired returns, got {a.size}.")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise InputError("a return series is constant; its Sharpe ratio is undefined.")
    return a, b


def _check_bootstrap_options(block_length: int, n_boot: int, n: int) -> None:
    for name, value in (("block_length", block_length), ("n_boot", n_boot)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if 2 * block_length > n:
        raise ConfigError(
            f"block_length={block_length} leaves fewer than 2 blocks in {n} paired returns; use a shorter "
            "block."
        )


def _sharpe_difference_and_gradient(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``f(v)`` and ``grad f(v)`` of the Sharpe difference for moments ``v`` of shape (..., 4)."""
    mu_a, mu_b, g_a, g_b = np.moveaxis(moments, -1, 0)
    c_a, c_b = np.sqrt(g_a - mu_a**2), np.sqrt(g_b - mu_b**2)
    diff = mu_a / c_a - mu_b / c_b
    grad = np.stack([g_a / c_a**3, -g_b / c_b**3, -0.5 * mu_a / c_a**3, 0.5 * mu_b / c_b**3], axis=-1)
    return diff, grad


def _qs_kernel(x: np.ndarray) -> np.ndarray:
    """Quadratic-spectral kernel ``k(x)`` for ``x > 0``."""
    w = 6.0 * math.pi * x / 5.0
    return 25.0 / (12.0 * math.pi**2 * x**2) * (np.sin(w) / w - np.cos(w))


def _hac_covariance(y: np.ndarray) -> tuple[np.ndarray, float]:
    """Long-run covariance ``Psi`` (k, k) of centred series ``y`` (N, k) and the QS bandwidth used.

    VAR(1) prewhitening ``y_t = A y_{t-1} + e_t`` (singular values of ``A`` capped), QS kernel with the
    Andrews (1991) AR(1) plug-in bandwidth on the residuals, recolouring, and the ``N / (N - k)`` correction.
    """
    n, k = y.shape
    a_t = np.linalg.lstsq(y[:-1], y[1:], rcond=None)[0]  # y[1:] ~ y[:-1] @ A'
    left, sing, right = np.linalg.svd(a_t)
    a_t = (left * np.minimum(sing, _PREWHITEN_CAP)) @ right
    e = y[1:] - y[:-1] @ a_t
    m = e.shape[0]
    # Andrews (1991): alpha(2) from an AR(1) fit (rho_i, sigma_i^2) to each residual series.
    lagged = np.sum(e[:-1] ** 2, axis=0)
    keep = lagged > 0
    rho = np.sum(e[1:, keep] * e[:-1, keep], axis=0) / lagged[keep]
    sigma4 = np.mean((e[1:, keep] - rho * e[:-1, keep]) ** 2, axis=0) ** 2
    alpha = np.sum(4.0 * rho**2 * sigma4 / (1.0 - rho) ** 8) / np.sum(sigma4 / (1.0 - rho) ** 4)
    bandwidth = _QS_BANDWIDTH_CONSTANT * float(alpha * m) ** 0.2
    # Autocovariances Gamma_j = (1/m) sum_t e_{t+j} e_t', j = 0..m-1, by FFT (zero padding: no wrap-around).
    size = 1 << (2 * m - 1).bit_length()
    spectrum = np.fft.rfft(e, size, axis=0)
    gamma = np.fft.irfft(spectrum[:, :, None] * spectrum[:, None, :].conj(), size, axis=0)[:m] / m
    psi_e = gamma[0].copy()
    if bandwidth > 0:
        weights = _qs_kernel(np.arange(1, m) / bandwidth)
        lagged_sum = np.einsum("j,jik->ik", weights, gamma[1:])
        psi_e += lagged_sum + lagged_sum.T
    recolour = np.linalg.inv(np.eye(k) - a_t.T)
    return recolour @ psi_e @ recolour.T * n / (n - k), bandwidth


def _bootstrap_p_value(
    x: np.ndarray, y: np.ndarray, diff: float, z_abs: float, block: int, n_boot: int, seed: int | None
) -> float:
    """Studentized circular block bootstrap p-value of Ledoit & Wolf (2008) (:func:`sharpe_difference_test`).

    A resample only needs the sums of ``(x, y, x^2, y^2)`` over its blocks, so the sums over the N circular
    blocks are computed once, shape (N, 4), and each resample draws ``l`` of them.
    """
    n = x.size
    n_blocks = n // block
    series = np.column_stack([x, y, x**2, y**2])
    wrapped = np.concatenate([series, series[: block - 1]])
    block_sums = np.lib.stride_tricks.sliding_window_view(wrapped, block, axis=0).sum(axis=-1)  # (N, 4)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK // n_blocks)
    exceed = 0
    with np.errstate(divide="ignore", invalid="ignore"):  # a degenerate resample (se* = 0) never counts
        for done in range(0, n_boot, chunk):
            sums = block_sums[rng.integers(0, n, size=(min(chunk, n_boot - done), n_blocks))]  # (M', l, 4)
            moments = sums.sum(axis=1) / (n_blocks * block)
            d_star, grad = _sharpe_difference_and_gradient(moments)
            zeta = (sums - block * moments[:, None, :]) / math.sqrt(block)
            psi = np.einsum("mli,mlk->mik", zeta, zeta) / n_blocks
            se = np.sqrt(np.einsum("mi,mik,mk->m", grad, psi, grad) / (n_blocks * block))
            exceed += int(np.sum(np.abs(d_star - diff) / se >= z_abs))
    return (exceed + 1) / (n_boot + 1)


__all__ = [
    "DEFAULT_BLOCK_LENGTH",
    "DEFAULT_N_BOOT",
    "MIN_OBS_LEDOIT_WOLF",
    "ROUNDING_TOLERANCE",
    "SHARPE_TEST_METHODS",
    "SharpeTest",
    "sharpe_difference_test",
]
