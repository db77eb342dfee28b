from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.data import validate_prices
from portfolio_layers.errors import DataError


def _prices(rows: int = 5) -> pd.DataFrame:
    idx = pd.date_range("2020-01-01", periods=rows, freq="B")
    return pd.DataFrame({"A": np.linspace(10, 14, rows), "B": np.linspace(20, 24, rows)}, index=idx)


def test_clean_prices_pass_unchanged():
    p = _prices()
    out = validate_prices(p)
    np.testing.assert_array_equal(out.to_numpy(), p.to_numpy())
    assert out.index.name == "date" and list(out.columns) == ["A", "B"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0.0, ["non-positive", "'B'", "2020-01-03"]),
        (-1.0, ["non-positive", "'B'"]),
        (np.inf, ["non-finite", "'B'"]),
    ],
)
def test_bad_price_names_column_and_date(value, words):
    p = _prices()
    p.iloc[2, 1] = value
    with pytest.raises(DataError) as info:
        validate_prices(p)
    for word in words:
        assert word in str(info.value)


def test_duplicated_dates():
    p = _prices()
    p.index = p.index[[0, 1, 1, 3, 4]]
    with pytest.raises(DataError, match="2020-01-02 appears more than once"):
        validate_prices(p)


def test_unsorted_dates():
    p = _prices().iloc[[0, 2, 1, 3, 4]]
    with pytest.raises(DataError, match="not sorted: 2020-01-02 comes after 2020-01-03"):
        validate_prices(p)


def test_empty_column():
    p = _prices()
    p["C"] = np.nan
    with pytest.raises(DataError, match="'C' is entirely empty"):
        validate_prices(p)


def test_missing_values_raise_by_default_and_name_the_date():
    p = _prices()
    p.iloc[3, 0] = np.nan
    with pytest.raises(DataError, match=r"'A' has 1 missing price\(s\), the first on 2020-01-06.*ffill"):
        validate_prices(p)


def test_missing_values_ffill_and_drop_are_explicit():
    p = _prices()
    p.iloc[3, 0] = np.nan
    filled = validate_prices(p, missing="ffill")
    assert filled.iloc[3, 0] == p.iloc[2, 0] and len(filled) == 5
    dropped = validate_prices(p, missing="drop")
    assert len(dropped) == 4 and p.index[3] not in dropped.index


def test_ffill_cannot_fill_leading_gap():
    p = _prices()
    p.iloc[0, 1] = np.nan
    with pytest.raises(DataError, match="leading gaps"):
        validate_prices(p, missing="ffill")


def test_too_few_rows_and_bad_option():
    with pytest.raises(DataError, match="too few rows: 5 price row"):
        validate_prices(_prices(), min_rows=6)
    with pytest.raises(DataError, match="missing='zero' is not an option"):
        validate_prices(_prices(), missing="zero")


def test_non_numeric_column_and_non_date_index():
    p = _prices()
    p["B"] = p["B"].astype(object)
    p.iloc[1, 1] = "n/a"
    with pytest.raises(DataError, match="'B' holds non-numeric"):
        validate_prices(p)
    q = _prices()
    q.index = ["a", "b", "c", "d", "e"]
    with pytest.raises(DataError, match="must hold dates"):
        validate_prices(q)


def test_numeric_index_or_nanosecond_dates_are_not_dates():
    p = _prices().reset_index(drop=True)
    with pytest.raises(DataError, match=r"holds numbers \(0, 1, 2, \.\.\.\), not dates"):
        validate_prices(p)
    p.index = pd.to_datetime(p.index)  # row numbers already turned into 1970-01-01 plus nanoseconds
    with pytest.raises(DataError, match="less than a second apart: numbers read as timestamps"):
        validate_prices(p)
