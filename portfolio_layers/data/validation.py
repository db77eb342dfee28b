"""Validation of price tables: every problem is a :class:`DataError` naming the column and the date.

Missing values are never filled silently: ``missing="raise"`` (the default) reports them, ``"ffill"`` carries
the last price forward and ``"drop"`` removes every row with a missing price.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from portfolio_layers.errors import DataError

MISSING_OPTIONS = ("raise", "ffill", "drop")


_ROW_NUMBER_HINT = (
    "; is it a column of row numbers? The first column must hold dates such as 2020-01-31: remove the "
    "row-number column from the file, or with pandas read it with index_col set to the date column "
    "(pd.read_csv(path, index_col='date', parse_dates=True)) or use prices.set_index('date')."
)


def _first_values(index: pd.Index) -> str:
    shown = ", ".join(str(v) for v in index[:3])
    return shown + (", ..." if len(index) > 3 else "")


def _date(index: pd.Index, pos: int) -> str:
    value = index[pos]
    return value.date().isoformat() if isinstance(value, pd.Timestamp) else str(value)


def validate_dates(index: pd.Index, source: str = "data") -> pd.DatetimeIndex:
    """The index of a date-indexed table as a DatetimeIndex: dates, unique and increasing.

    Shared by :func:`validate_prices` and :func:`~portfolio_layers.data.exogenous.load_features`.

    Parameters
    ----------
    index : Index of length T
        Dates, or values parseable as dates (the first column of a CSV file).
    source : str
        Name of the data source, used in error messages.

    Raises
    ------
    DataError
        Numbers (row numbers) instead of dates, unparseable or missing dates, timestamps less than a second
        apart, a repeated date, dates out of order; each names the date and the fix.
    """
    if pd.api.types.is_numeric_dtype(index.dtype) or pd.api.types.is_bool_dtype(index.dtype):
        raise DataError(
            f"{source}: the index (first column of a CSV) holds numbers ({_first_values(index)}), not "
            f"dates{_ROW_NUMBER_HINT}"
        )
    if not isinstance(index, pd.DatetimeIndex):
        try:
            with warnings.catch_warnings():  # pandas warns when it must guess the format; errors still raise
                warnings.simplefilter("ignore", UserWarning)
                index = pd.to_datetime(index)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{source}: the index (first column of a CSV) must hold dates; could not parse it ({exc})."
            ) from exc
    if index.hasnans:
        raise DataError(f"{source}: the date index has missing dates; every row needs a date.")
    if len(index) > 1 and index.max() - index.min() < pd.Timedelta(seconds=1):
        raise DataError(
            f"{source}: the dates ({_first_values(index)}) are less than a second apart: numbers "
            f"read as timestamps{_ROW_NUMBER_HINT}"
        )
    dup_mask = index.duplicated()
    if dup_mask.any():
        raise DataError(f"{source}: date {_date(index, int(np.argmax(dup_mask)))} appears more than once.")
    steps = np.diff(index.asi8)
    if (steps < 0).any():
        pos = int(np.argmax(steps < 0)) + 1
        raise DataError(
            f"{source}: dates are not sorted: {_date(index, pos)} comes after "
            f"{_date(index, pos - 1)}; "
            "sort the rows by date (frame.sort_index() in pandas)."
        )
    return pd.DatetimeIndex(index)


def validate_prices(
    prices: pd.DataFrame,
    *,
    missing: str = "raise",
    min_rows: int | None = None,
    source: str = "prices",
) -> pd.DataFrame:
    """Check a price table and return a clean float64 copy.

    Parameters
    ----------
    prices : DataFrame of shape (T, n)
        Prices (not returns), one row per date, one column per asset. The index must be dates (or parseable
        as dates), unique and increasing.
    missing : {"raise", "ffill", "drop"}
        What to do with missing prices: report them (default), carry the last price forward (leading gaps
        are still an error), or drop every row that has one.
    min_rows : int, optional
        Minimum number of rows required (for example ``lookback + 2`` for a backtest).
    source : str
        Name of the data source, used in error messages.

    Returns
    -------
    DataFrame of shape (T', n)
        Prices as float64 with a DatetimeIndex named ``"date"`` and string column names.

    Raises
    ------
    DataError
        Empty table, non-date index (numbers such as row numbers included), duplicated or unsorted dates,
        non-numeric, non-finite or non-positive prices, an entirely empty column, missing values with
        ``missing="raise"``, too few rows.
    """
    if missing not in MISSING_OPTIONS:
        raise DataError(f"missing={missing!r} is not an option; use one of {MISSING_OPTIONS}.")
    if not isinstance(prices, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame of prices, got {type(prices).__name__}.")
    if prices.shape[0] == 0 or prices.shape[1] == 0:
        raise DataError(f"{source}: the price table is empty (shape {prices.shape}).")
    out = prices.copy()
    out.columns = [str(c) for c in out.columns]
    if len(set(out.columns)) != len(out.columns):
        dup = out.columns[out.columns.duplicated()][0]
        raise DataError(f"{source}: column {dup!r} appears more than once; asset names must be unique.")
    out.index = validate_dates(out.index, source)
    for col in out.columns:
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{source}: column {col!r} holds non-numeric values ({exc}).") from exc
    values = out.to_numpy()
    for j, col in enumerate(out.columns):
        column = values[:, j]
        if np.isnan(column).all():
            raise DataError(f"{source}: column {col!r} is entirely empty; remove it or fix the source.")
        bad = np.isinf(column)
        if bad.any():
            raise DataError(
                f"{source}: column {col!r} has a non-finite price on {_date(out.index, int(np.argmax(bad)))}."
            )
        bad = column <= 0
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{source}: column {col!r} has a non-positive price ({column[pos]:g}) on "
                f"{_date(out.index, pos)}; "
                "prices (not returns) are expected, all > 0."
            )
    nan_mask = np.isnan(values)
    if nan_mask.any():
        if missing == "raise":
            j = int(np.argmax(nan_mask.any(axis=0)))
            pos = int(np.argmax(nan_mask[:, j]))
            raise DataError(
                f"{source}: column {out.columns[j]!r} has {int(nan_mask[:, j].sum())} missing price(s), "
                "the first "
                f"on {_date(out.index, pos)}; pass missing='ffill' (carry the last price forward) or "
                "missing='drop' (drop rows with a missing price), or fix the data."
            )
        if missing == "ffill":
            out = out.ffill()
            lead = out.isna().to_numpy()
            if lead.any():
                j = int(np.argmax(lead.any(axis=0)))
                raise DataError(
                    f"{source}: column {out.columns[j]!r} has no price before "
                    f"{_date(out.index, int(lead[:, j].sum()))}"
                    "; forward filling cannot fill leading gaps: start later or use missing='drop'."
                )
        else:
            out = out.dropna(how="any")
    if min_rows is not None and out.shape[0] < min_rows:
        raise DataError(
            f"{source}: too few rows: {out.shape[0]} price row(s), at least {min_rows} needed for the "
            "requested "
            "window; use a longer date range or a shorter lookback."
        )
    out.index.name = "date"
    out.columns.name = None
    return out


__all__ = ["MISSING_OPTIONS", "validate_dates", "validate_prices"]
