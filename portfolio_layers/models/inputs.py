"""Exogenous features as model inputs: market-level columns broadcast to every asset as extra channels.

The end-to-end model reads per-asset features of shape (rows, n, F)
(:func:`~portfolio_layers.data.features.price_features`). Exogenous features (rows, d) -- factor returns, an
index, macro series (:mod:`portfolio_layers.data.exogenous`) -- are the same for every asset, so they join as
``d`` more channels holding the same values for each asset: (rows, n, F + d). The network stays
permutation-equivariant (reordering the assets reorders its outputs), and the channels are standardised
with the training window's statistics like the price features.

Feature rows must be known at their price row: :func:`exogenous_rows` takes rows already on the price
dates (the engine's slices, whose leading rows may be NaN before the first feature date) or aligns a raw
table from the past only (:func:`~portfolio_layers.data.exogenous.align_features`). NaN rows may only lead:
the model treats them like its feature warm-up (no sample uses them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from portfolio_layers.data.exogenous import align_features, load_features
from portfolio_layers.errors import DataError, InputError

__all__ = [
    "broadcast_features",
    "check_feature_names",
    "exogenous_input",
    "exogenous_rows",
    "recent_rows_known",
]


def exogenous_input(
    features: pd.DataFrame | None,
    prices: pd.DataFrame,
    fitted: tuple[str, ...] | None,
    where: str,
    *,
    fitted_before: bool,
    window: int | None = None,
) -> np.ndarray | None:
    """The exogenous features of a ``fit`` or ``weights`` call on its price rows; None without features.

    Parameters
    ----------
    features : DataFrame of shape (rows, d) or (T_f, d), or None
        What the call received (see :func:`exogenous_rows`).
    prices : DataFrame of shape (rows, n)
        The price rows of the call (checked before).
    fitted : tuple of str or None
        The feature names the model was fitted with.
    where : str
        The call, for messages.
    fitted_before : bool
        Whether the model has been fitted (see :func:`check_feature_names`).
    window : int, optional
        For a decision: the last ``window`` rows must be known (:func:`recent_rows_known`).

    Returns
    -------
    ndarray of shape (rows, d) or None
    """
    check_feature_names(features, fitted, where, fitted_before)
    if features is None:
        return None
    values = exogenous_rows(features, prices, where)
    if window is not None:
        recent_rows_known(values, prices.index, window, where)
    return values


def check_feature_names(
    features: pd.DataFrame | None, fitted: tuple[str, ...] | None, where: str, fitted_before: bool
) -> tuple[str, ...] | None:
    """The feature names of this call; an error when they differ from the fitted model's.

    Parameters
    ----------
    features : DataFrame of shape (rows, d) or None
        What the call received.
    fitted : tuple of str or None
        The names the model was fitted with (None: fitted without features).
    where : str
        The call, for messages (``"e2e.weights"``).
    fitted_before : bool
        Whether the model has been fitted (before the first fit any names are accepted).

    Raises
    ------
    InputError
        A DataFrame is expected, or features present on one side only, or other names or order.
    """
    if features is not None and not isinstance(features, pd.DataFrame):
        raise InputError(
            f"{where}: features must be a date-indexed pandas DataFrame (one column per feature), got "
            f"{type(features).__name__}."
        )
    names = None if features is None else tuple(map(str, features.columns))
    if not fitted_before or names == fitted:
        return names
    if fitted is None:
        raise InputError(
            f"{where}: the model was fitted without features but got features {list(names)}; fit it with "
            "them (fit(prices, features=...)) or leave them out here."
        )
    if names is None:
        raise InputError(
            f"{where}: the model was fitted with features {list(fitted)} and needs them here too: pass "
            "features= (a backtest passes them when the run has features: --features FILE.csv or the config "
            "key features)."
        )
    raise InputError(
        f"{where}: the model was fitted with features {list(fitted)} but got {list(names)}; pass the same "
        "columns in the same order."
    )


def exogenous_rows(features: pd.DataFrame, prices: pd.DataFrame, where: str) -> np.ndarray:
    """Feature values on the price rows, known at each row.

    Parameters
    ----------
    features : DataFrame of shape (T_f, d)
        Either on the dates of ``prices`` already (as the engine passes them; leading NaN rows mean "not
        known yet"), or a raw table of features with their own dates (checked with
        :func:`~portfolio_layers.data.exogenous.load_features` and aligned from the past only: each price
        row gets the latest feature row dated on or before it).
    prices : DataFrame of shape (rows, n)
        The price rows of the call.
    where : str
        The call, for messages.

    Returns
    -------
    ndarray of shape (rows, d)
        Float64 values; NaN in the leading rows that no feature row reaches.

    Raises
    ------
    DataError
        Non-numeric or infinite values, NaN after a known row, or no feature row for any price row.
    """
    if features.index.equals(prices.index):
        bad = [str(c) for c, t in features.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
        if bad:
            raise DataError(f"{where}: feature column(s) {bad} are not numeric.")
        values = features.to_numpy(dtype=np.float64)
    else:
        values = align_features(load_features(features), prices.index).to_numpy()
    if np.isinf(values).any():
        row = int(np.flatnonzero(np.isinf(values).any(axis=1))[0])
        raise DataError(f"{where}: the features hold an infinite value on {prices.index[row]:%Y-%m-%d}.")
    known = ~np.isnan(values).any(axis=1)
    if not known.any():
        raise DataError(
            f"{where}: no feature row is dated on or before {prices.index[-1]:%Y-%m-%d}, the last price "
            "date; give features that start earlier."
        )
    first = int(np.argmax(known))
    if not known[first:].all():
        row = first + int(np.argmax(~known[first:]))
        raise DataError(
            f"{where}: the features are missing on {prices.index[row]:%Y-%m-%d}, after earlier rows had "
            "values; fill them from the past (features.ffill()) or pass the raw table to be aligned."
        )
    return values


def broadcast_features(per_asset: np.ndarray, exogenous: np.ndarray) -> np.ndarray:
    """Append market-level features to every asset's channels.

    Parameters
    ----------
    per_asset : ndarray of shape (rows, n, F)
        Per-asset features.
    exogenous : ndarray of shape (rows, d)
        Market-level features of the same rows.

    Returns
    -------
    ndarray of shape (rows, n, F + d)
        ``out[s, i, F + j] = exogenous[s, j]`` for every asset ``i``.
    """
    rows, n, _ = per_asset.shape
    shared = np.broadcast_to(exogenous[:, None, :], (rows, n, exogenous.shape[1]))
    return np.concatenate([per_asset, shared], axis=-1)


def recent_rows_known(exogenous: np.ndarray, index: pd.DatetimeIndex, window: int, where: str) -> None:
    """Raise unless the last ``window`` rows of ``exogenous`` (rows, d) are known (a decision's input)."""
    recent = exogenous[-window:]
    missing = np.isnan(recent).any(axis=1)
    if missing.any():
        last = len(exogenous) - window + int(np.flatnonzero(missing)[-1])
        raise DataError(
            f"{where}: the decision on {index[-1]:%Y-%m-%d} reads {window} feature rows (the model's "
            f"window), but no feature row is dated on or before {index[last]:%Y-%m-%d}; give features that "
            "start earlier, or start trading later."
        )
