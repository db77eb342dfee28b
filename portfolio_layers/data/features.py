"""Per-asset, per-day features computed from prices only, for the market encoders.

``price_features(prices)`` returns a :class:`FeatureSet` whose ``values[s, i, :]`` uses the prices of asset
``i`` at rows ``<= s`` only (trailing windows, no look-ahead). Rows without enough history are NaN:
the first ``FeatureSet.warmup`` rows (the longest window), and nothing after them.

Features (``r_t = log(p_t / p_{t-1})`` is the daily log return; windows ``w`` are in rows/trading days):

- ``ret_1``: ``r_s`` (valid from row 1);
- ``ret_{k}``: ``log(p_s / p_{s-k})`` for ``k`` in ``return_windows`` (from row k);
- ``vol_{w}``: sample std (ddof=1) of ``r_{s-w+1}, ..., r_s`` for ``w`` in ``vol_windows`` (from row w);
- ``z_1``: ``r_s / vol_{w0}``, ``w0`` the shortest vol window;
- ``mom_{k}``: ``ret_k / (vol_{w0} sqrt(k))``, risk-adjusted momentum;
- ``ma_ratio_{w0}``: ``log(p_s / mean(p_{s-w0+1}, ..., p_s))``, distance to the moving average;
- ``drawdown_{wL}``: ``log(p_s / max(p_{s-wL+1}, ..., p_s))``, ``wL`` the longest vol window (<= 0);
- ``vol_ratio``: ``log(vol_{w0} / vol_{wL})`` (only with two or more vol windows).

Volatilities used as denominators are floored at ``VOL_FLOOR = 1e-4`` (0.01% a day) and the ratios
``z_1``, ``mom_{k}`` clipped to ``[-SCORE_CLIP, SCORE_CLIP] = [-10, 10]``, so stale (constant) prices,
which do occur in real data, give finite, bounded features. Returns and volatilities are in daily
units (not annualized). With the defaults (return windows 5, 20, 60; vol windows 20, 60) there are
13 features and ``warmup = 60``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from portfolio_layers.data.validation import validate_prices
from portfolio_layers.errors import ConfigError, DataError, LookAheadError

VOL_FLOOR = 1e-4
SCORE_CLIP = 10.0


@dataclass(frozen=True)
class FeatureSet:
    """Features aligned with the price rows.

    Attributes
    ----------
    values : ndarray of shape (rows, n, F), float64
        ``values[s, i, j]`` is feature ``names[j]`` of asset ``assets[i]`` at ``index[s]``.
    index : pd.DatetimeIndex of length rows
        The price dates.
    assets : tuple of str, length n
    names : tuple of str, length F
    warmup : int
        Number of leading rows holding NaN (not enough history); rows ``>= warmup`` are finite.
    """

    values: np.ndarray
    index: pd.DatetimeIndex
    assets: tuple[str, ...]
    names: tuple[str, ...]
    warmup: int

    @property
    def n_features(self) -> int:
        """F, the number of features per asset and day."""
        return len(self.names)

    def window(self, end: int, length: int) -> np.ndarray:
        """Rows ``end - length + 1 .. end`` (inclusive) as an array of shape (length, n, F).

        Raises ``LookAheadError`` if ``end`` is past the last row and ``DataError`` if the window reaches
        into the warm-up rows.
        """
        rows = self.values.shape[0]
        if end >= rows or end < 0:
            raise LookAheadError(f"window end row {end} is outside the {rows} feature rows.")
        start = end - length + 1
        if length < 1 or start < self.warmup:
            raise DataError(
                f"a window of {length} rows ending at row {end} starts at row {start}, before the first "
                f"complete feature row {self.warmup}; use a shorter window or a later end."
            )
        return self.values[start : end + 1]

    def frame(self, name: str) -> pd.DataFrame:
        """One feature as a DataFrame of shape (rows, n) indexed like the prices."""
        if name not in self.names:
            raise ConfigError(f"unknown feature {name!r}; available: {list(self.names)}.")
        j = self.names.index(name)
        return pd.DataFrame(self.values[:, :, j], index=self.index, columns=list(self.assets))


def _check_windows(name: str, windows: Sequence[int], minimum: int) -> tuple[int, ...]:
    out = tuple(int(w) for w in windows)
    if not out or any(w < minimum or w != ww for w, ww in zip(out, windows, strict=True)):
        raise ConfigError(f"{name} must be a non-empty sequence of integers >= {minimum}, got {windows}.")
    return tuple(sorted(set(out)))


def price_features(
    prices: pd.DataFrame,
    *,
    return_windows: Sequence[int] = (5, 20, 60),
    vol_windows: Sequence[int] = (20, 60),
) -> FeatureSet:
    """Compute the per-asset feature table of the module docstring from prices.

    Parameters
    ----------
    prices : DataFrame of shape (rows, n)
        Prices (not returns), date-indexed, one column per asset, positive and without missing values
        (checked by :func:`~portfolio_layers.data.validation.validate_prices`).
    return_windows : sequence of int
        Horizons ``k`` (>= 2) of the multi-day log returns ``ret_k`` and momentum ``mom_k``.
    vol_windows : sequence of int
        Windows (>= 2) of the rolling volatilities; the shortest also scales ``z_1`` and ``mom_k``, the
        longest sets the drawdown window.

    Returns
    -------
    FeatureSet
        ``values`` of shape (rows, n, F) with NaN in the first ``warmup`` rows.
    """
    rw = _check_windows("return_windows", return_windows, 2)
    vw = _check_windows("vol_windows", vol_windows, 2)
    clean = validate_prices(prices, missing="raise", source="price_features")
    logp = np.log(clean)
    r = logp.diff()
    w0, wl = vw[0], vw[-1]
    vols = {w: r.rolling(w, min_periods=w).std(ddof=1) for w in vw}
    cols: dict[str, pd.DataFrame] = {"ret_1": r}
    for k in rw:
        cols[f"ret_{k}"] = logp - logp.shift(k)
    for w in vw:
        cols[f"vol_{w}"] = vols[w]
    floored = {w: vols[w].clip(lower=VOL_FLOOR) for w in vw}
    cols["z_1"] = (r / floored[w0]).clip(-SCORE_CLIP, SCORE_CLIP)
    for k in rw:
        cols[f"mom_{k}"] = (cols[f"ret_{k}"] / (floored[w0] * np.sqrt(k))).clip(-SCORE_CLIP, SCORE_CLIP)
    cols[f"ma_ratio_{w0}"] = logp - np.log(clean.rolling(w0, min_periods=w0).mean())
    cols[f"drawdown_{wl}"] = logp - np.log(clean.rolling(wl, min_periods=wl).max())
    if len(vw) > 1:
        cols["vol_ratio"] = np.log(floored[w0] / floored[wl])
    names = tuple(cols)
    values = np.stack([cols[name].to_numpy(dtype=np.float64) for name in names], axis=-1)
    warmup = min(max(max(rw), wl), values.shape[0])
    values[:warmup] = np.nan  # every feature shares one warm-up, so rows >= warmup are complete
    return FeatureSet(
        values=values,
        index=pd.DatetimeIndex(clean.index),
        assets=tuple(str(c) for c in clean.columns),
        names=names,
        warmup=warmup,
    )
