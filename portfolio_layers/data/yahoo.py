"""Daily adjusted closes from Yahoo Finance (``yfinance``) with an on-disk cache.

A request ``(tickers, start, end)`` is stored as one CSV file in the cache directory; the same request again
is answered from the file without touching the network. The cache directory is, in order: the ``cache_dir``
argument, the ``PORTFOLIO_LAYERS_CACHE`` environment variable, ``$XDG_CACHE_HOME/portfolio_layers/prices``,
``~/.cache/portfolio_layers/prices``.

A damaged cache file (empty, binary, not the CSV this module wrote) is not an error: a warning names it and
the prices are downloaded again, replacing it. Cache files can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.data.loaders import EMBEDDED_DATASETS
from portfolio_layers.data.validation import validate_prices
from portfolio_layers.errors import DataError, DataUnavailableError

logger = logging.getLogger(__name__)

CACHE_ENV = "PORTFOLIO_LAYERS_CACHE"
_TICKER = re.compile(r"^[A-Za-z0-9.\-^=]{1,20}$")


def default_cache_dir() -> Path:
    """Cache directory: ``$PORTFOLIO_LAYERS_CACHE``, else ``$XDG_CACHE_HOME/portfolio_layers/prices``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "portfolio_layers" / "prices"


def _normalise_tickers(tickers: str | Sequence[str]) -> list[str]:
    items = tickers.replace(",", " ").split() if isinstance(tickers, str) else list(tickers)
    out: list[str] = []
    for t in items:
        t = str(t).strip().upper()
        if not _TICKER.match(t):
            raise DataError(f"{t!r} is not a valid ticker symbol (letters, digits, '.', '-', '^', '=').")
        if t not in out:
            out.append(t)
    if not out:
        raise DataError("no ticker given; pass symbols like ['AAPL', 'MSFT'].")
    return out


def _date_str(value: str | pd.Timestamp, what: str) -> str:
    try:
        return pd.Timestamp(value).date().isoformat()
    except (ValueError, TypeError) as exc:
        raise DataError(f"{what}={value!r} is not a date; use the form 2015-01-31.") from exc


def cache_path(tickers: Sequence[str], start: str, end: str, cache_dir: Path) -> Path:
    """File of the cached request (readable name for short ticker lists, hashed for long ones)."""
    joined = "-".join(sorted(tickers))
    if len(joined) > 60:
        joined = hashlib.sha256(joined.encode()).hexdigest()[:16]
    return cache_dir / f"yahoo_{joined}_{start}_{end}.csv"


def _closes(raw: pd.DataFrame, tickers: list[str]) -> pd.DataFrame:
    """Extract the close prices, one column per ticker, from what ``yfinance.download`` returned."""
    cols = raw.columns
    if isinstance(cols, pd.MultiIndex):
        for level in range(cols.nlevels):
            if "Close" in cols.get_level_values(level):
                closes = raw.xs("Close", axis=1, level=level)
                break
        else:
            raise DataError(f"yfinance returned no 'Close' prices (columns {list(cols)[:6]}...).")
    elif "Close" in cols:
        if len(tickers) != 1:
            raise DataError("yfinance returned a single 'Close' column for several tickers.")
        closes = raw[["Close"]].rename(columns={"Close": tickers[0]})
    else:
        raise DataError(f"yfinance returned no 'Close' prices (columns {list(cols)[:6]}).")
    closes = closes.copy()
    closes.columns = [str(c).upper() for c in closes.columns]
    if closes.index.tz is not None:
        closes.index = closes.index.tz_localize(None)
    return closes.reindex(columns=tickers)


def download_prices(
    tickers: str | Sequence[str],
    start: str | pd.Timestamp,
    end: str | pd.Timestamp,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    missing: str = "raise",
) -> pd.DataFrame:
    """Daily adjusted closes from Yahoo Finance, cached on disk.

    Parameters
    ----------
    tickers : str or sequence of str
        Symbols, as a list or one string separated by commas or spaces.
    start, end : str or Timestamp
        Date range passed to ``yfinance.download`` (``end`` exclusive, as in yfinance).
    cache_dir : path-like, optional
        Cache directory; default :func:`default_cache_dir`.
    refresh : bool
        Download again even if the request is cached.
    missing : {"raise", "ffill", "drop"}
        Missing-value policy applied to the result (the cache keeps the raw download).

    Returns
    -------
    DataFrame of shape (T, n)
        Prices, float64, DatetimeIndex named ``"date"``, one column per ticker in the order given.

    Warns
    -----
    UserWarning
        The cache file of the request is damaged (empty, binary, garbled): downloaded again, replaced.

    Raises
    ------
    DataUnavailableError
        The request is not cached (or its cache file is damaged) and the download failed (offline?). The
        message names the cache file and the embedded dataset that works offline.
    DataError
        Unknown tickers (no data returned for them), invalid prices.
    """
    symbols = _normalise_tickers(tickers)
    start_s, end_s = _date_str(start, "start"), _date_str(end, "end")
    if start_s >= end_s:
        raise DataError(f"start {start_s} must be before end {end_s}.")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache_path(symbols, start_s, end_s, folder)
    damage = None
    if path.is_file() and not refresh:
        cached, damage = _read_cache(path, symbols)
        if cached is not None:
            logger.info("prices from cache %s", path)
            return validate_prices(cached, missing=missing, source=str(path))
        warnings.warn(
            f"the price cache file {path} is damaged ({damage}); downloading the prices again to replace it "
            "(the file can be deleted safely).",
            stacklevel=2,
        )
    closes = _fetch(symbols, start_s, end_s, path, damage)
    atomic_write_text(path, _to_csv(closes))
    logger.info("downloaded %d tickers into %s", len(symbols), path)
    return validate_prices(closes, missing=missing, source=f"Yahoo Finance ({', '.join(symbols)})")


def _read_cache(path: Path, symbols: list[str]) -> tuple[pd.DataFrame | None, str | None]:
    """The cached closes ``(T, n)`` in the order of ``symbols`` and None, or None and what is damaged."""
    try:
        with warnings.catch_warnings():  # pandas warns when a damaged first column does not parse as dates
            warnings.simplefilter("ignore", UserWarning)
            raw = pd.read_csv(path, index_col=0, parse_dates=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # empty, binary (undecodable), garbled
        return None, " ".join(f"{type(exc).__name__}: {exc}".split())
    absent = [s for s in symbols if s not in raw.columns]
    if absent:
        return None, f"no column for {absent}"
    if not isinstance(raw.index, pd.DatetimeIndex):
        return None, "its first column does not hold dates"
    return raw[symbols], None


def _to_csv(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index_label="date")
    return buf.getvalue()


def _fetch(symbols: list[str], start: str, end: str, path: Path, damage: str | None = None) -> pd.DataFrame:
    cache_state = (
        f"The cache file {path} is damaged ({damage}) and was not replaced; it can be deleted safely."
        if damage is not None
        else f"The request is not cached (looked for {path}; set {CACHE_ENV} or pass cache_dir to use "
        "another cache)."
    )
    offline_hint = (
        f"{cache_state} Offline, use the embedded dataset instead: load_prices('sp500') or --prices sp500 "
        f"(embedded: {', '.join(sorted(EMBEDDED_DATASETS))})."
    )
    try:
        import yfinance
    except ImportError as exc:
        raise DataUnavailableError(
            f"yfinance is not installed (pip install yfinance). {offline_hint}"
        ) from exc
    try:
        raw = yfinance.download(
            symbols, start=start, end=end, auto_adjust=True, progress=False, threads=False, group_by="column"
        )
    except Exception as exc:  # yfinance raises many network error types; all mean "no data"
        raise DataUnavailableError(
            f"downloading {symbols} from Yahoo Finance failed ({exc}). {offline_hint}"
        ) from exc
    if raw is None or raw.shape[0] == 0:
        raise DataUnavailableError(
            f"Yahoo Finance returned no data for {symbols} from {start} to {end}: the machine may be "
            "offline, the "
            f"symbols unknown, or the range empty. {offline_hint}"
        )
    closes = _closes(raw, symbols)
    empty = [s for s in symbols if closes[s].isna().all()]
    if len(empty) == len(symbols):
        raise DataUnavailableError(
            f"Yahoo Finance returned no prices for any of {symbols} from {start} to {end}: the machine "
            "may be "
            f"offline or the symbols unknown. {offline_hint}"
        )
    if empty:
        raise DataError(
            f"unknown ticker(s) or no data in range: {empty} (Yahoo Finance returned no price for them from "
            f"{start} to {end}); check the symbols or drop them."
        )
    return closes


__all__ = ["CACHE_ENV", "cache_path", "default_cache_dir", "download_prices"]
