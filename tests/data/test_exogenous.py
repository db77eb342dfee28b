"""Exogenous features: loading with clear errors, alignment from the past only, coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_layers.data import align_features, check_coverage, load_features
from portfolio_layers.errors import DataError


def _weekly(start="2021-01-01", periods=8) -> pd.DataFrame:
    index = pd.date_range(start, periods=periods, freq="W-FRI")
    return pd.DataFrame(
        {"mkt": np.arange(periods, dtype=float), "rate": 0.01 * np.arange(periods)}, index=index
    )


def _write(tmp_path, text: str, name: str = "features.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- loading ----------------------------------------------------------------------------------------------


def test_load_a_csv_file(tmp_path):
    path = _write(tmp_path, "date,mkt,smb\n2021-01-04,0.01,-0.002\n2021-01-05,-0.02,0.003\n")
    features = load_features(path)
    assert list(features.columns) == ["mkt", "smb"]
    assert features.index.name == "date" and isinstance(features.index, pd.DatetimeIndex)
    assert features.dtypes.eq("float64").all()
    np.testing.assert_allclose(features.to_numpy(), [[0.01, -0.002], [-0.02, 0.003]])
    pd.testing.assert_frame_equal(load_features(str(path)), features)


def test_load_a_frame_returns_a_checked_copy():
    frame = _weekly()
    frame.index = frame.index.strftime("%Y-%m-%d")  # dates as text are parsed
    features = load_features(frame)
    assert isinstance(features.index, pd.DatetimeIndex)
    assert not isinstance(frame.index, pd.DatetimeIndex)  # the input is not modified


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("date,mkt,mkt\n2021-01-04,1,2\n", r"\['mkt'\] appear more than once.*every feature needs its own"),
        ("date,mkt,label\n2021-01-04,1,up\n2021-01-05,2,down\n", r"column 'label' holds non-numeric.*'up'"),
        (
            "date,mkt\n2021-01-04,1\n2021-01-05,\n2021-01-06,3\n",
            r"'mkt' has 1 missing value.*2021-01-05.*ffill",
        ),
        ("date,mkt\n2021-01-04,1\n2021-01-05,inf\n", r"'mkt' has a non-finite value on 2021-01-05"),
        ("date,mkt\n2021-01-04,1\n2021-01-04,2\n2021-01-05,3\n", r"2021-01-04 appears more than once"),
        ("date,mkt\n2021-01-05,1\n2021-01-04,2\n", r"not sorted: 2021-01-04 comes after 2021-01-05"),
        ("date\n2021-01-04\n", r"no feature column"),
        ("date,mkt\n", r"no rows"),
        (",mkt\n0,1\n1,2\n", r"holds numbers .* not dates"),
    ],
    ids=[
        "duplicate-column",
        "non-numeric",
        "nan-hole",
        "inf",
        "duplicate-date",
        "unsorted",
        "no-column",
        "empty",
        "row-numbers",
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, match):
    path = _write(tmp_path, text, "bad.csv")
    with pytest.raises(DataError, match=match) as info:
        load_features(path)
    assert "bad.csv" in str(info.value)


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"feature file .*nope\.csv not found.*current folder"):
        load_features(tmp_path / "nope.csv")


def test_duplicate_columns_of_a_frame():
    frame = pd.DataFrame([[1.0, 2.0]], index=pd.to_datetime(["2021-01-04"]), columns=["a", "a"])
    with pytest.raises(DataError, match=r"\['a'\] appear more than once"):
        load_features(frame)


# -- alignment ---------------------------------------------------------------------------------------------


def test_weekly_features_on_daily_prices_are_carried_forward():
    weekly = _weekly("2021-01-08", 3)  # Fridays 01-08, 01-15, 01-22
    days = pd.bdate_range("2021-01-04", "2021-01-27")
    aligned = align_features(weekly, days)
    assert aligned.index.equals(days) and list(aligned.columns) == ["mkt", "rate"]
    # Before the first Friday: unavailable.
    assert aligned.loc[:"2021-01-07"].isna().all().all()
    # A Friday's row is known that day and held through the next Thursday.
    assert (aligned.loc["2021-01-08":"2021-01-14", "mkt"] == 0).all()
    assert (aligned.loc["2021-01-15":"2021-01-21", "mkt"] == 1).all()
    assert (aligned.loc["2021-01-22":, "mkt"] == 2).all()


def test_daily_features_on_weekly_prices_take_the_row_of_the_day_or_the_last_before():
    days = pd.bdate_range("2021-01-04", "2021-01-29")
    daily = pd.DataFrame({"x": np.arange(len(days), dtype=float)}, index=days)
    weeks = pd.DatetimeIndex(["2021-01-08", "2021-01-16", "2021-01-22"])  # a Saturday in the middle
    aligned = align_features(daily, weeks)
    expected = [daily.loc["2021-01-08", "x"], daily.loc["2021-01-15", "x"], daily.loc["2021-01-22", "x"]]
    np.testing.assert_array_equal(aligned["x"].to_numpy(), expected)


@settings(max_examples=60, deadline=None)
@given(
    n_features=st.integers(5, 30),
    n_prices=st.integers(3, 30),
    cut=st.integers(0, 29),
    seed=st.integers(0, 10_000),
)
def test_changing_later_feature_rows_never_changes_an_aligned_row(n_features, n_prices, cut, seed):
    """Perturb every feature row dated after price date t: rows <= t of the alignment stay the same."""
    rng = np.random.default_rng(seed)
    feature_days = pd.DatetimeIndex(
        np.sort(rng.choice(pd.date_range("2021-01-01", periods=60).to_numpy(), n_features, replace=False))
    )
    price_days = pd.DatetimeIndex(
        np.sort(rng.choice(pd.date_range("2020-12-25", periods=80).to_numpy(), n_prices, replace=False))
    )
    features = pd.DataFrame(rng.normal(size=(n_features, 2)), index=feature_days, columns=["a", "b"])
    t = price_days[min(cut, n_prices - 1)]
    perturbed = features.copy()
    later = perturbed.index > t
    perturbed.loc[later] = rng.normal(size=(int(later.sum()), 2)) + 100.0
    before = align_features(features, price_days).loc[:t]
    after = align_features(perturbed, price_days).loc[:t]
    pd.testing.assert_frame_equal(before, after)
    # And every aligned row is a feature row dated on or before its price date (or NaN).
    for day, row in align_features(features, price_days).iterrows():
        known = features.loc[:day]
        if known.empty:
            assert row.isna().all()
        else:
            np.testing.assert_array_equal(row.to_numpy(), known.iloc[-1].to_numpy())


def test_alignment_refuses_unsorted_or_incomparable_dates():
    features = _weekly()
    with pytest.raises(DataError, match="unique, increasing dates"):
        align_features(features.iloc[::-1], features.index)
    with pytest.raises(DataError, match="time zone"):
        align_features(features, features.index.tz_localize("UTC"))


# -- coverage ----------------------------------------------------------------------------------------------


def test_coverage_needs_a_row_on_or_before_the_first_decision():
    weekly = _weekly("2021-01-08", 6)
    check_coverage(weekly, pd.Timestamp("2021-01-08"), pd.Timestamp("2021-02-18"))
    with pytest.raises(DataError, match=r"first decision, on 2021-01-07, has no feature row.*trade_start"):
        check_coverage(weekly, pd.Timestamp("2021-01-07"), pd.Timestamp("2021-02-01"), "feature file f.csv")


def test_coverage_refuses_features_that_stop_before_the_last_decision():
    weekly = _weekly("2021-01-08", 6)  # last row 2021-02-12
    check_coverage(weekly, pd.Timestamp("2021-01-08"), pd.Timestamp("2021-02-19"))  # one week later: fine
    with pytest.raises(
        DataError, match=r"last decision, on 2021-02-22, would use the feature row of 2021-02-12"
    ):
        check_coverage(weekly, pd.Timestamp("2021-01-08"), pd.Timestamp("2021-02-22"))
