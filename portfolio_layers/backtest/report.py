"""Self-contained HTML report of a backtest: plots embedded as base64 PNG, no external files, no scripts.

Sections: metrics table, Sharpe-difference tests vs the benchmark, cumulative wealth, drawdowns, weights over
time (one plot per strategy), per-strategy diagnostics (for example training curves) and the resolved config.

The report is assembled from small pure functions: ``*_figure`` functions return a matplotlib
:class:`~matplotlib.figure.Figure` and ``*_html`` functions an HTML fragment, each reading the result only.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.dates import AutoDateLocator, DateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest.result import BacktestResult
from portfolio_layers.data.frequency import describe_frequency

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; white-space: nowrap; }
.wide { overflow-x: auto; font-size: 90%; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
summary { cursor: pointer; color: #245; }
.note { color: #666; font-size: 90%; }
"""

#: Tables longer than this are folded into a ``<details>`` element (every row is still in the HTML).
FOLD_ROWS = 30
#: Lines with at most this many points are drawn with markers.
MARKER_POINTS = 40
_X_COLUMNS = ("epoch", "step", "iteration")
_PLAIN = FuncFormatter(lambda v, _pos: f"{v:g}")
_SHARPE_TESTS = {
    "z": "z, p_value: Jobson-Korkie test with Memmel's correction, two-sided; assumes iid normal returns.",
    "z_lw": "z_lw, p_value_lw: Ledoit &amp; Wolf (2008) test of the same difference: the statistic "
    "studentized with a HAC standard error, the p-value from the studentized circular block bootstrap; "
    "valid for heavy-tailed and autocorrelated returns.",
}
_BEST_EPOCH = (
    "best_epoch: the epoch (counted from 0) whose parameters were kept, the one with the lowest validation "
    "loss. <b>-1</b> means that no epoch beat the validation loss of the parameters the fit started from "
    "(the initialisation, or for a re-fit the previous fit's model), so those were kept unchanged; <b>-2</b> "
    "means that equal weight (the model with the gate of its prior at 0) beat both and was kept"
)


# ----------------------------------------------------------------------------------------------- text helpers
def format_date(value: object) -> str:
    """``YYYY-MM-DD`` for a date at midnight, ``YYYY-MM-DD HH:MM`` otherwise, ``str(value)`` if no date."""
    if isinstance(value, pd.Timestamp | np.datetime64):
        stamp = pd.Timestamp(value)
        return stamp.strftime("%Y-%m-%d" if stamp == stamp.normalize() else "%Y-%m-%d %H:%M")
    return str(value)


def _is_dates(column: pd.Series) -> bool:
    return len(column) > 0 and (
        pd.api.types.is_datetime64_any_dtype(column) or bool(column.map(type).eq(pd.Timestamp).all())
    )


def _format_number(value: float) -> str:
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}"


def table_html(frame: pd.DataFrame) -> str:
    """Every row of ``frame`` as an HTML table; dates as ``YYYY-MM-DD``, a plain row-number index dropped."""
    frame = frame.copy()
    for col in frame.columns:
        if _is_dates(frame[col]):
            frame[col] = [format_date(pd.Timestamp(v)) if pd.notna(v) else "n/a" for v in frame[col]]
    if isinstance(frame.index, pd.DatetimeIndex):
        frame.index = [format_date(v) for v in frame.index]
    plain_index = isinstance(frame.index, pd.RangeIndex)
    return frame.to_html(
        float_format=_format_number, na_rep="n/a", border=0, index=not plain_index, max_rows=None
    )


def returns_text(periods: int | float) -> str:
    """``"net daily returns"``, ``"net weekly returns"``...; ``"net returns"`` for an unnamed frequency."""
    words = describe_frequency(periods)
    return "net returns" if words.endswith("per year") else f"net {words} returns"


def header_html(result: BacktestResult) -> str:
    """Opening paragraph: data, period, frequency, rebalancing, costs and re-trainings."""
    cfg, r, periods = result.config, result.returns, result.periods_per_year
    return (
        f"<p>Prices <code>{html.escape(cfg.prices)}</code>: {len(r)} {returns_text(periods)} "
        f"from {format_date(r.index[0])} to {format_date(r.index[-1])} ({periods:g} periods per year), "
        f"{len(result.turnover)} rebalances every {cfg.rebalance} rows, lookback {cfg.lookback} rows, costs "
        f"{cfg.cost_bps:g} bps of turnover, {len(result.fit_dates)} re-training date(s) for learning "
        f"strategies ({cfg.window} window).</p>"
    )


def sharpe_tests_html(tests: pd.DataFrame) -> str:
    """The Sharpe-difference table and one line defining each test whose columns it holds.

    The items of ``lw_settings`` (``"circular blocks of 5, 4999 resamples, seed 0; ..."``) that every row
    shares move to a line under the table; the column keeps the rest (such as each pair's HAC bandwidth).
    """
    notes = [text for col, text in _SHARPE_TESTS.items() if col in tests.columns]
    if "lw_settings" in tests.columns and len(tests):
        items = [re.split(r"[;,]\s*", str(v)) for v in tests["lw_settings"]]
        common = [item for item in items[0] if all(item in row for row in items)]
        rest = [", ".join(item for item in row if item not in common) for row in items]
        tests = tests.drop(columns="lw_settings")
        if any(rest):
            tests["lw_settings"] = rest
        if common:
            notes.append(f"Ledoit-Wolf settings: {html.escape(', '.join(common))}.")
    return table_html(tests) + "".join(f"<p class='note'>{n}</p>" for n in notes)


def constant_columns(frame: pd.DataFrame) -> dict[str, object]:
    """Numeric or boolean columns holding one value in every row (not worth a panel), with that value."""
    out = {}
    for col in frame.select_dtypes(include=[np.number, "bool"]).columns:
        values = frame[col].dropna().unique()
        if len(frame) > 1 and len(values) <= 1:
            out[str(col)] = values[0] if len(values) else "n/a"
    return out


def diagnostics_html(name: str, key: str, frame: pd.DataFrame) -> str:
    """Heading, notes, the full table (folded when long) and the panels of one diagnostics frame."""
    parts = [f"<h3>{html.escape(name)}: {html.escape(key)}</h3>"]
    if "best_epoch" in frame.columns:
        initial, equal = (int((frame["best_epoch"] == k).sum()) for k in (-1, -2))
        counts = f"{initial} of {len(frame)} rows here have -1, {equal} have -2"
        parts.append(f"<p class='note'>{_BEST_EPOCH} ({counts}).</p>")
    table = table_html(frame)
    if len(frame) > FOLD_ROWS:
        table = (
            f"<details><summary>Table: all {len(frame)} rows (also saved as CSV in the run's "
            f"<code>diagnostics/</code> folder)</summary>{table}</details>"
        )
    parts.append(f"<div class='wide'>{table}</div>")
    constant = constant_columns(frame)
    if constant:
        listed = ", ".join(f"{html.escape(k)} = {html.escape(format_date(v))}" for k, v in constant.items())
        parts.append(f"<p class='note'>The same in every row (not plotted): {listed}.</p>")
    fig = diagnostics_figure(f"{name}: {key}", frame)
    if fig is not None:
        parts.append(png_html(fig))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- figures
def png_html(fig: Figure) -> str:
    """``<img>`` tag holding ``fig`` as an embedded PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _log_ticks(ax, lo: float, hi: float) -> None:
    """Labelled ticks on a log axis: 1-2-5 per decade over a wide range, even steps over a narrow one."""
    if hi / lo >= 10:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.yaxis.set_minor_formatter(NullFormatter())


def lines_figure(frame: pd.DataFrame, title: str, ylabel: str, *, logy: bool = False) -> Figure:
    """One line per column of a date-indexed frame; log y axis (with labelled ticks) when all values are > 0.

    Parameters
    ----------
    frame : DataFrame of shape (N, S)
        Date-indexed series, one column per strategy (for example wealth).
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    numeric = frame.select_dtypes(include=[np.number])
    for col in numeric.columns:
        ax.plot(numeric.index, numeric[col].to_numpy(), label=str(col), linewidth=1.2)
    values = numeric.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if logy and values.size and (values > 0).all():
        ax.set_yscale("log")
        _log_ticks(ax, float(values.min()), float(values.max()))
        ax.axhline(1.0, color="k", linewidth=0.5)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if numeric.shape[1] <= 12:
        ax.legend(fontsize=8, loc="best")
    return fig


def _plot_x(frame: pd.DataFrame) -> tuple[str | None, str | None]:
    """(x column, group column) of a diagnostics frame (see :func:`diagnostics_figure`)."""
    x_col = next((c for c in _X_COLUMNS if c in frame.columns), None)
    numeric = set(frame.select_dtypes(include=[np.number, "bool"]).columns)
    key = next(
        (c for c in frame.columns if c not in numeric and c != x_col and 2 <= frame[c].nunique() <= 30), None
    )
    if x_col is None and key is not None and frame[key].is_unique:
        return key, None  # one row per key (for example per fit): a summary across keys
    return x_col, key


def diagnostics_figure(title: str, frame: pd.DataFrame) -> Figure | None:
    """Small multiples of a diagnostics frame: one panel per numeric column that varies (at most 9).

    The x axis is an ``epoch``/``step``/``iteration`` column (integer ticks) if present; else, when a
    non-numeric column has one row per value (for example ``fit_date`` in a per-fit summary), that column;
    else the row number. Rows are split into one line per value of the first other non-numeric column with 2
    to 30 distinct values (for example one training curve per fit date). Short lines get markers.

    Parameters
    ----------
    title : str
    frame : DataFrame of shape (R, C)

    Returns
    -------
    Figure or None
        None when no numeric column varies (nothing to plot).
    """
    x_col, group_col = _plot_x(frame)
    constant = constant_columns(frame)
    numeric = [
        c
        for c in frame.select_dtypes(include=[np.number, "bool"]).columns
        if c != x_col and str(c) not in constant
    ][:9]
    if len(frame) < 2 or not numeric:
        return None
    groups = list(frame.groupby(group_col, sort=False)) if group_col is not None else [(None, frame)]
    longest = max(len(part) for _, part in groups)
    marker = "o" if longest <= MARKER_POINTS else None
    if len(groups) <= 10:
        colors = [colormaps["tab10"](i) for i in range(len(groups))]
    else:  # earliest dark, latest yellow
        colors = list(colormaps["viridis"](np.linspace(0, 0.9, len(groups))))
    x_dates = x_col is not None and _is_dates(frame[x_col])
    cols = min(3, len(numeric))
    rows = -(-len(numeric) // cols)
    fig = Figure(figsize=(11 if group_col is not None else 10, 2.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, col in zip(axes, numeric, strict=False):
        for (key, part), color in zip(groups, colors, strict=True):
            if x_col is None:
                x = np.arange(len(part))
            else:
                x = pd.to_datetime(part[x_col]).to_numpy() if x_dates else part[x_col].to_numpy()
            label = None if key is None else format_date(key)
            ax.plot(
                x, part[col].to_numpy(dtype=float), linewidth=1, marker=marker, ms=3, color=color, label=label
            )
        name = str(col)
        if col == "best_epoch" and (frame[col] < 0).any():
            name += " (-1: initial kept, -2: equal weight)"
            ax.axhline(-1, color="gray", linewidth=0.8, linestyle=":")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if pd.api.types.is_bool_dtype(frame[col]):
            ax.set_yticks([0, 1], ["no", "yes"])
            ax.set_ylim(-0.2, 1.2)
        elif pd.api.types.is_integer_dtype(frame[col]):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if x_dates:
            dates = pd.to_datetime(frame[x_col]).drop_duplicates()
            if len(dates) <= 12:
                ax.set_xticks(dates.to_numpy())
            else:
                ax.xaxis.set_major_locator(AutoDateLocator(maxticks=8))
            ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
            ax.tick_params(axis="x", labelrotation=30)
        elif x_col is None or pd.api.types.is_integer_dtype(frame[x_col]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(str(x_col) if x_col is not None else "row", fontsize=8)
    for ax in axes[len(numeric) :]:
        ax.set_visible(False)
    if group_col is not None and len(groups) <= 20:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="outside right upper", fontsize=7, title=str(group_col), title_fontsize=7
        )
    fig.suptitle(title)
    return fig


def weights_figure(name: str, weights: pd.DataFrame) -> Figure:
    """Target weights by rebalance date, stacked when long-only.

    Parameters
    ----------
    name : str
    weights : DataFrame of shape (K, n)
        Target weights by rebalance date.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    values = weights.to_numpy()
    ax.set_prop_cycle(color=[colormaps["tab20"](i % 20) for i in range(weights.shape[1])])
    if (values >= -1e-12).all():
        ax.stackplot(
            weights.index, np.clip(values, 0, None).T, labels=[str(c) for c in weights.columns], step="post"
        )
        ax.set_ylim(0, 1)
    else:
        for col in weights.columns:
            ax.step(weights.index, weights[col].to_numpy(), where="post", label=str(col), linewidth=1)
        ax.axhline(0, color="k", linewidth=0.5)
    ax.set_title(f"Target weights of {name} (held until the next rebalance)")
    ax.set_ylabel("weight")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


# ----------------------------------------------------------------------------------------------------- report
def render_report(result: BacktestResult) -> str:
    """HTML text of the report."""
    cfg = result.config
    periods = result.periods_per_year
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>portfolio_layers backtest</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Walk-forward backtest</h1>",
        header_html(result),
        "<h2>Metrics</h2>",
        table_html(result.metrics),
        f"<p class='note'>{returns_text(periods).capitalize()}, annualised with A = {periods:g} periods per "
        "year, rf = 0. turnover = mean sum |w - h<sup>-</sup>| over the rebalances after the first.</p>",
    ]
    if cfg.benchmark in result.returns.columns and result.returns.shape[1] > 1:
        parts += [
            f"<h2>Sharpe ratio vs {html.escape(cfg.benchmark)}</h2>",
            sharpe_tests_html(result.sharpe_tests()),
        ]
    parts += [
        "<h2>Cumulative wealth</h2>",
        png_html(lines_figure(result.wealth(), "Wealth (net of costs, log scale)", "wealth", logy=True)),
        "<h2>Drawdowns</h2>",
        png_html(lines_figure(-result.drawdowns(), "Drawdown from running peak", "drawdown")),
        "<h2>Weights over time</h2>",
    ]
    parts += [png_html(weights_figure(name, w)) for name, w in result.weights.items()]
    if result.diagnostics:
        parts.append("<h2>Strategy diagnostics</h2>")
        for name, diags in result.diagnostics.items():
            parts += [diagnostics_html(name, key, frame) for key, frame in diags.items()]
    seconds = ", ".join(f"{html.escape(k)} {v:.1f}s" for k, v in result.seconds.items())
    parts += [
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(cfg.to_toml())}</pre>",
        f"<p class='note'>Wall time per strategy: {seconds}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(result: BacktestResult, path: str | os.PathLike[str]) -> None:
    """Write the report to ``path`` atomically."""
    atomic_write_text(path, render_report(result))


__all__ = [
    "diagnostics_figure",
    "diagnostics_html",
    "lines_figure",
    "render_report",
    "table_html",
    "weights_figure",
    "write_report",
]
