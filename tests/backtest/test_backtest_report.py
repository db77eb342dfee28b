"""The HTML report: tables, wording, and the figures it embeds (inspected as matplotlib objects)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from portfolio_layers.backtest import BacktestConfig, run_backtest
from portfolio_layers.backtest.report import (
    diagnostics_figure,
    diagnostics_html,
    lines_figure,
    render_report,
    sharpe_tests_html,
    table_html,
)
from portfolio_layers.registry import build_strategy

FIT_DATES = pd.to_datetime(["2020-01-06", "2020-07-06", "2021-01-04", "2021-07-05", "2022-01-03"])


def _training(epochs: int = 9) -> pd.DataFrame:
    """Curves as ``E2EPortfolio.diagnostics()["training"]`` gives them: one row per (fit date, epoch)."""
    rows = [
        {
            "fit_date": date,
            "epoch": e,
            "train_loss": 1.0 / (e + 1) + i,
            "val_loss": 0.5 + 0.01 * e,
            "qp_failed": 0,
        }
        for i, date in enumerate(FIT_DATES)
        for e in range(epochs)
    ]
    return pd.DataFrame(rows)


def _fits() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "fit_date": FIT_DATES,
            "best_epoch": [-1, 2, -1, 0, 1],
            "epochs": [3, 5, 3, 3, 4],
            "stopped_early": [True, False, True, True, False],
            "seconds": [1.5, 2.0, 1.1, 0.9, 1.2],
            "n_val": [46] * 5,
        }
    )


class _Learner:
    """A strategy with training diagnostics (equal weights)."""

    name = "learner"

    def fit(self, prices):
        pass

    def weights(self, prices, current):
        return np.full(prices.shape[1], 1.0 / prices.shape[1])

    def diagnostics(self):
        return {"training": _training(), "fits": _fits()}


def _result(freq: str):
    index = pd.date_range("2015-01-02", periods=160, freq=freq)
    rng = np.random.default_rng(0)
    prices = pd.DataFrame(
        100 * np.exp(np.cumsum(rng.normal(0.002, 0.02, (160, 4)), axis=0)), index=index, columns=list("ABCD")
    )
    cfg = BacktestConfig(lookback=20, rebalance=4, strategies=("equal_weight", "min_variance"))
    strategies = [build_strategy("equal_weight", cfg), build_strategy("min_variance", cfg), _Learner()]
    return run_backtest(prices, strategies, cfg)


@pytest.fixture(scope="module")
def weekly():
    return _result("W-FRI")


def _visible_ticks(ax, axis: str) -> list[tuple[float, str]]:
    """(position, label) of the labelled major ticks inside the view limits (after a draw)."""
    getter = ax.get_yticklabels if axis == "y" else ax.get_xticklabels
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = []
    for label in getter():
        pos = label.get_position()[1 if axis == "y" else 0]
        if label.get_text() and lo <= pos <= hi:
            ticks.append((pos, label.get_text()))
    return ticks


def test_wording_follows_the_frequency_of_the_result(weekly):
    assert weekly.periods_per_year == 52
    text = render_report(weekly)
    assert "net weekly returns" in text and "A = 52 periods per year" in text
    prose = re.sub(r"<img[^>]*>|<pre>.*?</pre>", "", text, flags=re.S)  # no plot data, no config
    assert "daily" not in prose and "252" not in prose


def test_daily_wording():
    text = render_report(_result("B"))
    assert "net daily returns" in text and "A = 252 periods per year" in text


def test_tables_show_dates_without_time(weekly):
    text = render_report(weekly)
    assert "00:00:00" not in text
    assert "<td>2021-01-04</td>" in text  # a fit date in the diagnostics tables
    frame = pd.DataFrame({"x": [1.0, 2.0]}, index=pd.to_datetime(["2020-01-02", "2020-01-03"]))
    assert "<th>2020-01-03</th>" in table_html(frame) and "00:00:00" not in table_html(frame)


def test_long_training_table_shows_every_row():
    frame = _training(epochs=9)
    assert len(frame) == 45
    fragment = diagnostics_html("learner", "training", frame)
    table = table_html(frame)
    assert table in fragment
    assert table.count("<tr") == len(frame) + 1  # header + every row
    assert "all 45 rows" in fragment


def test_best_epoch_minus_one_is_explained():
    fragment = diagnostics_html("learner", "fits", _fits())
    assert re.search(r"<b>-1</b> means that no epoch beat the validation loss of the parameters", fragment)
    assert "(2 of 5 rows here have -1, 0 have -2)" in fragment
    assert "<b>-2</b> means that equal weight" in fragment
    fig = diagnostics_figure("learner: fits", _fits())
    assert any("-1: initial kept, -2: equal weight" in ax.get_title() for ax in fig.axes)


def test_per_fit_panels_draw_every_fit_with_markers():
    fig = diagnostics_figure("learner: fits", _fits())
    fig.draw_without_rendering()
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert {ax.get_title() for ax in panels} == {
        "best_epoch (-1: initial kept, -2: equal weight)",
        "epochs",
        "stopped_early",
        "seconds",
    }
    for ax in panels:
        data = [line for line in ax.lines if len(line.get_xdata()) > 2]  # not the dotted -1 guide
        assert len(data) == 1 and len(data[0].get_xdata()) == 5 and data[0].get_marker() == "o"
        labels = [text for _, text in _visible_ticks(ax, "x")]
        assert labels == [d.strftime("%Y-%m-%d") for d in FIT_DATES]


def test_constant_columns_are_listed_not_plotted():
    fragment = diagnostics_html("learner", "fits", _fits())
    assert "The same in every row (not plotted): n_val = 46." in fragment
    titles = [ax.get_title() for ax in diagnostics_figure("t", _fits()).axes]
    assert "n_val" not in titles


def test_epoch_axes_have_integer_ticks_and_one_line_per_fit():
    fig = diagnostics_figure("learner: training", _training(epochs=3))
    fig.draw_without_rendering()
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert [ax.get_title() for ax in panels] == ["train_loss", "val_loss"]
    for ax in panels:
        positions = [pos for pos, _ in _visible_ticks(ax, "x")]
        assert positions == [0.0, 1.0, 2.0]
        assert len(ax.lines) == len(FIT_DATES) and all(line.get_marker() == "o" for line in ax.lines)
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_labels == [d.strftime("%Y-%m-%d") for d in FIT_DATES]


@pytest.mark.parametrize(("lo", "hi"), [(0.92, 1.35), (0.8, 2.4), (0.5, 40.0)])
def test_log_wealth_axis_labels_several_ticks(lo, hi):
    index = pd.date_range("2020-01-01", periods=50, freq="D")
    wealth = pd.DataFrame({"a": np.geomspace(lo, hi, 50), "b": np.linspace(1.0, hi, 50)}, index=index)
    fig = lines_figure(wealth, "Wealth", "wealth", logy=True)
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    ticks = _visible_ticks(ax, "y")
    assert len(ticks) >= 3, ticks
    assert all(re.fullmatch(r"[0-9.]+", text) for _, text in ticks)  # plain numbers, no 10^k


def test_sharpe_table_defines_each_test():
    tests = pd.DataFrame(
        {
            "sharpe": [0.8],
            "sharpe_difference": [-0.1],
            "z": [-0.9],
            "p_value": [0.37],
            "z_lw": [-0.8],
            "p_value_lw": [0.41],
            "lw_settings": ["circular blocks of 5, 4999 resamples, seed 0"],
        },
        index=["min_variance"],
    )
    fragment = sharpe_tests_html(tests)
    assert "<th>z_lw</th>" in fragment and "<th>p_value_lw</th>" in fragment
    assert "Jobson-Korkie" in fragment and "Ledoit &amp; Wolf (2008)" in fragment
    assert "Ledoit-Wolf settings: circular blocks of 5, 4999 resamples, seed 0." in fragment
    assert "<th>lw_settings</th>" not in fragment  # nothing left that differs between rows
    two = pd.concat([tests, tests.rename(index={"min_variance": "e2e"})])
    two["lw_settings"] = [f"blocks of 5, seed 0; QS kernel, bandwidth {b}" for b in ("4.98", "1.74")]
    fragment = sharpe_tests_html(two)
    assert "Ledoit-Wolf settings: blocks of 5, seed 0, QS kernel." in fragment
    assert "<th>lw_settings</th>" in fragment and "<td>bandwidth 1.74</td>" in fragment
    jk_only = sharpe_tests_html(tests[["sharpe", "sharpe_difference", "z", "p_value"]])
    assert "Jobson-Korkie" in jk_only and "Ledoit" not in jk_only


def test_report_shows_the_ledoit_wolf_columns(weekly):
    text = render_report(weekly)
    assert "<th>z_lw</th>" in text and "Ledoit &amp; Wolf (2008)" in text
