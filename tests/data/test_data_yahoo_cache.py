"""The yfinance loader against a fake ``yfinance.download`` (no network)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yfinance

from portfolio_layers.data import download_prices
from portfolio_layers.data.yahoo import CACHE_ENV, default_cache_dir
from portfolio_layers.errors import DataError, DataUnavailableError


class FakeDownload:
    """Mimics yfinance >= 0.2.5: MultiIndex columns (Price, Ticker); unknown tickers come back all-NaN."""

    def __init__(self, known=("AAPL", "MSFT"), fail: Exception | None = None):
        self.known, self.fail, self.calls = set(known), fail, []

    def __call__(self, tickers, start=None, end=None, **kwargs):
        self.calls.append((tuple(tickers), start, end, kwargs))
        if self.fail is not None:
            raise self.fail
        idx = pd.date_range(start, end, freq="B", inclusive="left")
        cols, data = [], []
        for field in ("Close", "High", "Low", "Open", "Volume"):
            for j, t in enumerate(tickers):
                cols.append((field, t))
                values = 100.0 + j + np.arange(len(idx), dtype=float)
                data.append(values if t in self.known else np.full(len(idx), np.nan))
        frame = pd.DataFrame(np.column_stack(data), index=idx, columns=pd.MultiIndex.from_tuples(cols))
        frame.columns.names = ["Price", "Ticker"]
        return frame


def test_second_call_is_served_from_cache(tmp_path, monkeypatch):
    fake = FakeDownload()
    monkeypatch.setattr(yfinance, "download", fake)
    first = download_prices(["aapl", "MSFT"], "2021-01-04", "2021-02-01", cache_dir=tmp_path)
    assert list(first.columns) == ["AAPL", "MSFT"] and len(first) == 20
    assert first.iloc[0].tolist() == [100.0, 101.0]
    assert fake.calls[0][3]["auto_adjust"] is True

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(yfinance, "download", no_network)
    second = download_prices("AAPL, MSFT", "2021-01-04", "2021-02-01", cache_dir=tmp_path)
    pd.testing.assert_frame_equal(first, second, check_freq=False)
    assert len(list(tmp_path.glob("*.csv"))) == 1


def test_refresh_downloads_again(tmp_path, monkeypatch):
    fake = FakeDownload()
    monkeypatch.setattr(yfinance, "download", fake)
    download_prices(["AAPL"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)
    download_prices(["AAPL"], "2021-01-04", "2021-01-15", cache_dir=tmp_path, refresh=True)
    assert len(fake.calls) == 2


def test_offline_error_names_cache_and_embedded_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(yfinance, "download", FakeDownload(fail=ConnectionError("no route to host")))
    with pytest.raises(DataUnavailableError) as info:
        download_prices(["AAPL"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "sp500" in msg and "no route to host" in msg
    assert not list(tmp_path.glob("*.csv"))


def test_unknown_ticker_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(yfinance, "download", FakeDownload(known=("AAPL",)))
    with pytest.raises(DataError, match=r"unknown ticker\(s\).*\['NOPE'\]"):
        download_prices(["AAPL", "NOPE"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)
    with pytest.raises(DataUnavailableError, match="offline or the symbols unknown"):
        download_prices(["NOPE"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="not a valid ticker"):
        download_prices(["AA PL;"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)
    with pytest.raises(DataError, match="must be before end"):
        download_prices(["AAPL"], "2021-02-01", "2021-01-15", cache_dir=tmp_path)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    monkeypatch.setattr(yfinance, "download", FakeDownload())
    download_prices(["MSFT"], "2021-01-04", "2021-01-15")
    assert len(list((tmp_path / "envcache").glob("*.csv"))) == 1


@pytest.mark.parametrize(
    "damage",
    [b"", bytes(range(256)) * 4, b"not,a,price\nfile,at,all\n", b"date,AAPL,MSFT\n0,1,2\n1,2,3\n"],
    ids=["empty", "binary", "other-csv", "no-dates"],
)
def test_damaged_cache_file_is_downloaded_again_with_a_warning(tmp_path, monkeypatch, damage):
    fake = FakeDownload()
    monkeypatch.setattr(yfinance, "download", fake)
    first = download_prices(["AAPL", "MSFT"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.csv")
    path.write_bytes(damage)
    with pytest.warns(UserWarning, match=rf"cache file {path} is damaged.*can be deleted"):
        again = download_prices(["AAPL", "MSFT"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)
    pd.testing.assert_frame_equal(first, again, check_freq=False)
    assert len(fake.calls) == 2
    download_prices(["AAPL", "MSFT"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)  # replaced: no warning
    assert len(fake.calls) == 2


def test_damaged_cache_file_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(yfinance, "download", FakeDownload(fail=ConnectionError("no route to host")))
    (tmp_path / "yahoo_AAPL_2021-01-04_2021-01-15.csv").write_bytes(b"")
    with pytest.warns(UserWarning, match="damaged"), pytest.raises(DataUnavailableError) as info:
        download_prices(["AAPL"], "2021-01-04", "2021-01-15", cache_dir=tmp_path)
    msg = str(info.value)
    assert "yahoo_AAPL_2021-01-04_2021-01-15.csv is damaged" in msg and "deleted" in msg and "sp500" in msg
