"""Self-contained HTML report of a backtest: plots embedded as base64 PNG, no external files.

Sections: metrics table, Sharpe-difference tests vs the benchmark, cumulative wealth, drawdowns, weights over
time (one plot per strategy), per-strategy diagnostics (for example training curves) and the resolved config.
Plot code only reads the result.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest.result import BacktestResult

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
.note { color: #666; font-size: 90%; }
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _lines(frame: pd.DataFrame, title: str, ylabel: str, *, logy: bool = False) -> str:
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    numeric = frame.select_dtypes(include=[np.number])
    for col in numeric.columns:
        ax.plot(numeric.index, numeric[col].to_numpy(), label=str(col), linewidth=1.2)
    if logy and (numeric.to_numpy() > 0).all():
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if numeric.shape[1] <= 12:
        ax.legend(fontsize=8, loc="best")
    return _png(fig)


_X_COLUMNS = ("epoch", "step", "iteration")


def _diagnostic_plot(title: str, frame: pd.DataFrame) -> str:
    """One panel per numeric column (at most 9); x is an ``epoch``/``step``/``iteration`` column if present,
    else the index; rows are split into one line per value of the first non-numeric column with 2 to 30
    distinct values (for example one training curve per fit date)."""
    x_col = next((c for c in _X_COLUMNS if c in frame.columns), None)
    numeric = [c for c in frame.select_dtypes(include=[np.number, "bool"]).columns if c != x_col][:9]
    group_col = next(
        (c for c in frame.columns if c not in numeric and c != x_col and 2 <= frame[c].nunique() <= 30), None
    )
    groups = list(frame.groupby(group_col, sort=False)) if group_col is not None else [(None, frame)]
    cols = min(3, len(numeric))
    rows = -(-len(numeric) // cols)
    fig = Figure(figsize=(10, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, col in zip(axes, numeric, strict=False):
        for key, part in groups:
            x = part[x_col].to_numpy() if x_col is not None else part.index
            ax.plot(x, part[col].to_numpy(dtype=float), linewidth=1, label=None if key is None else str(key))
        ax.set_title(str(col), fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[len(numeric) :]:
        ax.set_visible(False)
    if group_col is not None and len(groups) <= 10:
        axes[0].legend(fontsize=6, title=str(group_col), title_fontsize=6)
    fig.suptitle(title)
    return _png(fig)


def _weights_plot(name: str, weights: pd.DataFrame) -> str:
    fig = Figure(figsize=(10, 4))
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
    return _png(fig)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.4f}", na_rep="n/a", border=0)


def render_report(result: BacktestResult) -> str:
    """HTML text of the report."""
    cfg = result.config
    r = result.returns
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>portfolio_layers backtest</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Walk-forward backtest</h1>",
        f"<p>Prices <code>{html.escape(cfg.prices)}</code>, {len(r)} daily returns from "
        f"{r.index[0].date()} to "
        f"{r.index[-1].date()}, {len(result.turnover)} rebalances every {cfg.rebalance} rows, lookback "
        f"{cfg.lookback} rows, costs {cfg.cost_bps:g} bps of turnover, {len(result.fit_dates)} re-training "
        f"date(s) for learning strategies ({cfg.window} window).</p>",
        "<h2>Metrics</h2>",
        _table(result.metrics),
        "<p class='note'>Net daily returns, 252 periods per year, rf = 0. turnover = mean sum |w - "
        "h<sup>-</sup>| "
        "over the rebalances after the first.</p>",
    ]
    if cfg.benchmark in r.columns and r.shape[1] > 1:
        parts += [
            f"<h2>Sharpe ratio vs {html.escape(cfg.benchmark)}</h2>",
            _table(result.sharpe_tests()),
            "<p class='note'>Jobson-Korkie test with Memmel's correction, two-sided p-value.</p>",
        ]
    parts += [
        "<h2>Cumulative wealth</h2>",
        _lines(result.wealth(), "Wealth (net of costs, log scale)", "wealth", logy=True),
        "<h2>Drawdowns</h2>",
        _lines(-result.drawdowns(), "Drawdown from running peak", "drawdown"),
        "<h2>Weights over time</h2>",
    ]
    parts += [_weights_plot(name, w) for name, w in result.weights.items()]
    if result.diagnostics:
        parts.append("<h2>Strategy diagnostics</h2>")
        for name, diags in result.diagnostics.items():
            for key, frame in diags.items():
                parts.append(f"<h3>{html.escape(name)}: {html.escape(key)}</h3>")
                if len(frame) <= 30:
                    parts.append(_table(frame))
                if len(frame) > 1 and frame.select_dtypes(include=[np.number, "bool"]).shape[1]:
                    parts.append(_diagnostic_plot(f"{name}: {key}", frame))
                elif len(frame) > 30:
                    parts.append("<p class='note'>(no numeric data to plot)</p>")
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


__all__ = ["render_report", "write_report"]
