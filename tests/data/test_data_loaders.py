from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.data import load_prices
from portfolio_layers.errors import DataError


def test_embedded_sp500_works_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = load_prices("sp500")
    assert isinstance(p.index, pd.DatetimeIndex)
    assert p.shape == (8313, 20)
    assert {"AAPL", "MSFT", "XOM"} <= set(p.columns)
    assert p.index[0] == pd.Timestamp("1990-01-02") and p.index[-1] == pd.Timestamp("2022-12-28")
    assert np.isfinite(p.to_numpy()).all() and (p.to_numpy() > 0).all()


def test_embedded_index_and_date_slicing():
    idx = load_prices("sp500_index", start="2020-01-01", end="2020-12-31")
    assert list(idx.columns) == ["SP500"]
    assert idx.index[0] >= pd.Timestamp("2020-01-01") and idx.index[-1] <= pd.Timestamp("2020-12-31")
    assert 250 <= len(idx) <= 254


def test_csv_roundtrip(tmp_path):
    p = load_prices("sp500", start="2022-01-01").iloc[:, :3]
    path = tmp_path / "prices.csv"
    p.to_csv(path)
    q = load_prices(str(path))
    pd.testing.assert_frame_equal(p, q, check_freq=False, check_index_type=False)


def test_csv_with_problem_names_file_column_and_date(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("date,X,Y\n2020-01-01,1.0,2.0\n2020-01-02,-1.0,2.0\n")
    with pytest.raises(DataError, match=r"bad\.csv: column 'X' has a non-positive price.*2020-01-02"):
        load_prices(path)


def test_unknown_source_and_empty_range():
    with pytest.raises(DataError, match="neither an embedded dataset"):
        load_prices("no_such_dataset")
    with pytest.raises(DataError, match="no rows between"):
        load_prices("sp500", start="2030-01-01")
    with pytest.raises(DataError, match="too few rows"):
        load_prices("sp500", start="2022-12-01", min_rows=100)


def test_csv_duplicate_column_names_are_named(tmp_path):
    # pandas would silently rename the copies to A.1 and B.1
    path = tmp_path / "dup.csv"
    path.write_text("date,A,B,A,C,B\n2020-01-01,1,2,3,4,5\n2020-01-02,1,2,3,4,5\n")
    with pytest.raises(DataError, match=r"dup\.csv: column name\(s\) \['A', 'B'\] appear more than once"):
        load_prices(path)


@pytest.mark.parametrize("first", [0, 1])
def test_csv_first_column_of_row_numbers_is_not_read_as_1970(tmp_path, first):
    prices = load_prices("sp500", start="2022-01-01").iloc[:5, :2]
    path = tmp_path / "numbered.csv"
    prices.reset_index(drop=True).set_axis(range(first, first + 5)).to_csv(path)
    expected = rf"numbered\.csv: .*holds numbers \({first}, .*dates such as 2020-01-31"
    with pytest.raises(DataError, match=expected):
        load_prices(path)
    prices.reset_index().to_csv(path)  # row numbers, then the dates: the common pandas to_csv mistake
    with pytest.raises(DataError, match="row numbers.*index_col"):
        load_prices(path)


def test_csv_not_utf8_names_file_and_encoding(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("date,Caf\xe9\n2020-01-02,1.0\n2020-01-03,2.0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: the file is not UTF-8 text \(byte 0xe9"):
        load_prices(path)
