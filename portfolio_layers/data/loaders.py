"""Price loaders: the embedded skfolio S&P 500 dataset (offline) and CSV files.

``load_prices("sp500")`` returns the 20-stock dataset, ``load_prices("sp500_index")`` the S&P 500 index, and
``load_prices("path/to/prices.csv")`` a CSV file whose first column holds dates and the others one asset each.
The embedded files come from the skfolio wheel (BSD-3) and are for testing and example purposes only: see
``portfolio_layers/data/embedded/README.md``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pandas as pd

from portfolio_layers.data.validation import validate_prices
from portfolio_layers.errors import DataError

#: Names of the embedded datasets and their files in ``portfolio_layers/data/embedded/``.
EMBEDDED_DATASETS: dict[str, str] = {
    "sp500": "sp500_dataset.csv.gz",
    "sp500_index": "sp500_index.csv.gz",
}


def _read_csv(path: Path | str, source: str, column: str = "asset") -> pd.DataFrame:
    """The table of a CSV file, first column as index; a DataError for undecodable text or duplicate names.

    ``column`` names what a column holds in the messages (``"asset"``, or ``"feature"`` for
    :func:`~portfolio_layers.data.exogenous.load_features`).

    pandas silently renames a repeated column name (``A``, ``A.1``), so the header row is read first, as text.
    """
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0]
        frame = pd.read_csv(path, index_col=0)
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source}: the file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"position {exc.start}: {exc.reason}); save it as UTF-8 (a spreadsheet's 'CSV UTF-8' format, or "
            "pd.read_csv(path, encoding='latin-1').to_csv(path) for a Latin-1 file)."
        ) from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{source}: could not read the CSV file ({exc}).") from exc
    names = header.dropna()
    repeated = sorted(set(names[names.duplicated()]))
    if repeated:
        raise DataError(
            f"{source}: column name(s) {repeated} appear more than once in the header; every {column} "
            "needs its own name: rename or remove the repeated columns."
        )
    if frame.shape[1] == 0:
        raise DataError(
            f"{source}: the CSV file has no {column} column (first column dates, one column per {column})."
        )
    return frame


def load_embedded(name: str) -> pd.DataFrame:
    """Raw table of an embedded dataset (not yet validated).

    Parameters
    ----------
    name : {"sp500", "sp500_index"}
        Dataset name.

    Returns
    -------
    DataFrame of shape (T, n)
        Daily adjusted closes with the dates as index.
    """
    if name not in EMBEDDED_DATASETS:
        raise DataError(f"unknown embedded dataset {name!r}; available: {sorted(EMBEDDED_DATASETS)}.")
    ref = resources.files("portfolio_layers.data").joinpath("embedded", EMBEDDED_DATASETS[name])
    with resources.as_file(ref) as path:
        return _read_csv(path, f"embedded dataset {name!r}")


def load_prices(
    source: str | os.PathLike[str] = "sp500",
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    missing: str = "raise",
    min_rows: int | None = None,
) -> pd.DataFrame:
    """Load a validated price table.

    Parameters
    ----------
    source : str or path-like
        ``"sp500"`` (20 S&P 500 stocks, 1990-01-02 to 2022-12-28), ``"sp500_index"`` (the index, same dates),
        or the path of a CSV file (first column dates, one column per asset, prices not returns).
    start, end : str or Timestamp, optional
        Keep the rows with ``start <= date <= end`` (both inclusive).
    missing : {"raise", "ffill", "drop"}
        Missing-value policy, see :func:`~portfolio_layers.data.validation.validate_prices`.
    min_rows : int, optional
        Minimum number of rows after slicing.

    Returns
    -------
    DataFrame of shape (T, n)
        Prices, float64, DatetimeIndex named ``"date"``, one column per asset.

    Raises
    ------
    DataError
        Unknown name or missing file, invalid prices, empty date range, too few rows.
    """
    key = os.fspath(source)
    if key in EMBEDDED_DATASETS:
        raw = load_embedded(key)
        label = f"embedded dataset {key!r}"
    else:
        path = Path(key)
        if not path.is_file():
            raise DataError(
                f"price source {key!r} is neither an embedded dataset "
                f"({', '.join(sorted(EMBEDDED_DATASETS))}) "
                "nor an existing CSV file; pass one of those names or the path of a CSV whose first "
                "column holds "
                "dates and the others one asset each."
            )
        raw = _read_csv(path, str(path))
        label = str(path)
    prices = validate_prices(raw, missing=missing, source=label)
    return slice_dates(prices, start=start, end=end, min_rows=min_rows, source=label)


def slice_dates(
    prices: pd.DataFrame,
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    min_rows: int | None = None,
    source: str = "prices",
) -> pd.DataFrame:
    """Rows of validated ``prices`` with ``start <= date <= end``; a DataError if too few remain."""
    try:
        lo = pd.Timestamp(start) if start is not None else None
        hi = pd.Timestamp(end) if end is not None else None
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: start/end must be dates like '2015-01-31' ({exc}).") from exc
    if lo is not None and hi is not None and lo > hi:
        raise DataError(f"{source}: start {lo.date()} is after end {hi.date()}.")
    mask = pd.Series(True, index=prices.index)
    if lo is not None:
        mask &= prices.index >= lo
    if hi is not None:
        mask &= prices.index <= hi
    out = prices.loc[mask.to_numpy()]
    if out.shape[0] == 0:
        raise DataError(
            f"{source}: no rows between {lo.date() if lo is not None else 'the start'} and "
            f"{hi.date() if hi is not None else 'the end'}; the data covers {prices.index[0].date()} to "
            f"{prices.index[-1].date()}."
        )
    if min_rows is not None and out.shape[0] < min_rows:
        raise DataError(
            f"{source}: too few rows: {out.shape[0]} price row(s) from {out.index[0].date()} to "
            f"{out.index[-1].date()}, at least {min_rows} needed for the requested window; use a longer date "
            "range or a shorter lookback."
        )
    return out


__all__ = ["EMBEDDED_DATASETS", "load_embedded", "load_prices", "slice_dates"]
