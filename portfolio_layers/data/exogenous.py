"""Exogenous features: market-level series (factor returns, an index, macro data) beside the prices.

A feature table is a date-indexed DataFrame of shape (T_f, d), one column per feature, the same for every
asset. :func:`load_features` reads and checks one (a CSV file whose first column holds dates, or a frame);
:func:`align_features` puts it on the dates of the prices **from the past only**: the row of price date
``t`` is the latest feature row dated on or before ``t`` (a row dated ``d`` counts as known at the close of
``d``), never a later one. Weekly features on daily prices are thus carried forward through the week, and
daily features on weekly prices are sampled on the price dates. Price dates before the first feature date
get NaN rows: no feature is known there, and the caller must treat them as unavailable
(:func:`check_coverage` says whether a period is covered).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from portfolio_layers.data.loaders import _read_csv
from portfolio_layers.data.validation import validate_dates
from portfolio_layers.errors import DataError

__all__ = ["align_features", "check_coverage", "load_features"]

_FILL_HINT = (
    "every feature needs a value on every date of the file: start the file on the first date where all "
    "columns have one, fill the gaps from the past (features.ffill() in pandas), or drop the column"
)


def _day(value: pd.Timestamp) -> str:
    return value.date().isoformat()


def load_features(source: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    """Read and check a table of exogenous features.

    Parameters
    ----------
    source : str, path-like or DataFrame of shape (T_f, d)
        The path of a CSV file whose first column holds dates and the others one feature each (a relative
        path is read from the current folder), or such a table with dates as index.

    Returns
    -------
    DataFrame of shape (T_f, d)
        Float64 features, DatetimeIndex named ``"date"`` (unique, increasing), string column names.

    Raises
    ------
    DataError
        Missing or unreadable file, no feature column, a repeated column name, dates that are numbers,
        repeated or unsorted, a non-numeric column, a missing or non-finite value; each names the file, the
        column or the date and what to do.
    """
    if isinstance(source, pd.DataFrame):
        label = "features"
        raw = source.copy()
        if raw.shape[1] == 0:
            raise DataError(f"{label}: the table has no feature column (one column per feature).")
    else:
        path = Path(os.fspath(source))
        label = f"feature file {path}"
        if not path.is_file():
            raise DataError(
                f"{label} not found (relative paths are read from the current folder {Path.cwd()}); give the "
                "path of a CSV file whose first column holds dates and the others one feature each."
            )
        raw = _read_csv(path, label, column="feature")
    raw.columns = [str(c) for c in raw.columns]
    repeated = sorted(set(raw.columns[raw.columns.duplicated()]))
    if repeated:
        raise DataError(f"{label}: column name(s) {repeated} appear more than once; rename them.")
    if raw.shape[0] == 0:
        raise DataError(f"{label}: the table has no rows.")
    raw.index = validate_dates(raw.index, label)
    out = pd.DataFrame(index=raw.index)
    for col in raw.columns:
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = values.isna() & raw[col].notna()
        if bad.any():
            pos = int(np.argmax(bad.to_numpy()))
            raise DataError(
                f"{label}: column {col!r} holds non-numeric values (the first, {raw[col].iloc[pos]!r}, on "
                f"{_day(raw.index[pos])}); features must be numbers: fix or remove the column."
            )
        out[col] = values.astype("float64")
    values = out.to_numpy()
    for j, col in enumerate(out.columns):
        column = values[:, j]
        missing = np.isnan(column)
        if missing.any():
            pos = int(np.argmax(missing))
            raise DataError(
                f"{label}: column {col!r} has {int(missing.sum())} missing value(s), the first on "
                f"{_day(out.index[pos])}; {_FILL_HINT}."
            )
        infinite = np.isinf(column)
        if infinite.any():
            pos = int(np.argmax(infinite))
            raise DataError(
                f"{label}: column {col!r} has a non-finite value on {_day(out.index[pos])}; {_FILL_HINT}."
            )
    out.index.name = "date"
    return out


def align_features(features: pd.DataFrame, index: pd.DatetimeIndex) -> pd.DataFrame:
    """Features on the dates ``index``, from the past only.

    Row ``t`` of the result is the latest row of ``features`` dated ``<= index[t]``; NaN when every feature
    row is dated after ``index[t]``. A feature row never reaches a price date before its own date, so
    changing the rows dated after ``index[t]`` never changes row ``t``.

    Parameters
    ----------
    features : DataFrame of shape (T_f, d)
        Checked features (:func:`load_features`): dates as index, unique and increasing.
    index : DatetimeIndex of length T
        The price dates.

    Returns
    -------
    DataFrame of shape (T, d)
        Indexed by ``index``, columns those of ``features``; leading NaN rows before the first feature date.

    Raises
    ------
    DataError
        Feature dates that are not a unique increasing DatetimeIndex, or dates that cannot be compared with
        ``index`` (one with a time zone, the other without).
    """
    dates = features.index
    if not isinstance(dates, pd.DatetimeIndex) or not (dates.is_unique and dates.is_monotonic_increasing):
        raise DataError(
            "features: the index must hold unique, increasing dates; check the table with load_features "
            "first."
        )
    try:
        pos = dates.searchsorted(pd.DatetimeIndex(index), side="right") - 1
    except TypeError as exc:
        raise DataError(
            f"features: their dates cannot be compared with the price dates ({exc}); use dates without time "
            "zones in both (index.tz_localize(None))."
        ) from exc
    values = features.to_numpy(dtype=np.float64)[np.clip(pos, 0, None)]
    values[pos < 0] = np.nan
    return pd.DataFrame(values, index=index, columns=features.columns)


def check_coverage(
    features: pd.DataFrame,
    first: pd.Timestamp,
    last: pd.Timestamp,
    source: str = "features",
) -> None:
    """Raise unless the features cover the decisions from ``first`` to ``last``.

    Covered means: a feature row is dated on or before ``first`` (the first decision sees one), and the
    features do not stop before ``last``: the time from the last feature date to ``last`` is at most the
    longest time between two consecutive feature dates (weekly features end at most a week before).

    Parameters
    ----------
    features : DataFrame of shape (T_f, d)
        Checked features (:func:`load_features`).
    first, last : Timestamp
        Dates of the first and the last decision.
    source : str
        Name of the features in messages (the file).

    Raises
    ------
    DataError
        Naming the uncovered date and the feature dates.
    """
    dates = features.index
    span = f"the features run from {_day(dates[0])} to {_day(dates[-1])}"
    if dates[0] > first:
        raise DataError(
            f"{source}: the first decision, on {_day(first)}, has no feature row dated on or before it "
            f"({span}); give features that start earlier, or start trading later (trade_start)."
        )
    longest = dates.to_series().diff().max() if len(dates) > 1 else pd.Timedelta(0)
    if last - dates[-1] > longest:
        raise DataError(
            f"{source}: the last decision, on {_day(last)}, would use the feature row of {_day(dates[-1])} "
            f"({span}, {longest.days} days apart at most); extend the features or end the run earlier (end)."
        )
