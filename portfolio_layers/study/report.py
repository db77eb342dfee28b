"""The report page of a study (``report.html``): distributions across seeds, the summary, links to the runs.

One strip plot per value (net Sharpe ratio, Sharpe difference to the benchmark, maximum drawdown, turnover):
a column per strategy and grid point, a dot per seed, a bar at the mean. Plots are embedded as base64 PNG, so
the page is one file; each run id links to that run's own report. Plot code only reads the runs table.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from portfolio_layers.atomic import atomic_write_text

#: Values shown as distributions across seeds, with their axis labels.
PLOTTED = {
    "sharpe": "net Sharpe ratio",
    "sharpe_difference": "Sharpe ratio - benchmark's",
    "max_drawdown": "maximum drawdown",
    "turnover": "mean turnover per rebalance",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; }
.note { color: #666; font-size: 90%; }
"""


def _column_label(strategy: str, point: str) -> str:
    return f"{strategy}\n{point}" if point else strategy


def strip_plot(runs: pd.DataFrame, value: str, ylabel: str) -> Figure:
    """One column per (strategy, point) in run order, a dot per seed, a horizontal bar at the mean."""
    groups = list(runs.groupby(["strategy", "point"], sort=False))
    fig = Figure(figsize=(max(6.0, 1.1 * len(groups)), 3.6))
    ax = fig.subplots()
    jitter = np.random.default_rng(0)
    for i, (_, group) in enumerate(groups):
        y = group[value].astype(float).to_numpy()
        y = y[np.isfinite(y)]
        ax.scatter(i + jitter.uniform(-0.12, 0.12, len(y)), y, s=18, alpha=0.8, color="C0", zorder=3)
        if len(y):
            ax.hlines(y.mean(), i - 0.3, i + 0.3, color="C3", linewidth=2, zorder=2)
    ax.set_xticks(range(len(groups)), [_column_label(s, p) for (s, p), _ in groups], fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="distribution across seeds" src="data:image/png;base64,{data}">'


def _runs_table(runs: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("run", "params", "seed", *PLOTTED))
    body = []
    for r in runs.itertuples():
        link = f'<a href="runs/{html.escape(r.run_id)}/report.html">{html.escape(r.run_id)}</a>'
        cells = [link, html.escape(r.params), str(r.seed)]
        cells += ["n/a" if not np.isfinite(getattr(r, v)) else f"{getattr(r, v):.3f}" for v in PLOTTED]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_study_report(
    runs: pd.DataFrame, summary_md: str, path: str | os.PathLike[str], *, title: str
) -> None:
    """Write the report page atomically.

    Parameters
    ----------
    runs : DataFrame
        :func:`~portfolio_layers.study.summary.collect_runs`.
    summary_md : str
        The text of ``summary.md``, shown as is.
    path : path-like
        The HTML file.
    title : str
    """
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<p class='note'>Distributions across seeds: a dot per run, a bar at the mean.</p>",
    ]
    if len(runs):
        for value, label in PLOTTED.items():
            if runs[value].notna().any():
                parts += [f"<h2>{html.escape(label)}</h2>", _png(strip_plot(runs, value, label))]
        parts += ["<h2>Runs</h2>", _runs_table(runs)]
    else:
        parts.append("<p>No run finished.</p>")
    parts += ["<h2>Summary (summary.md)</h2>", f"<pre>{html.escape(summary_md)}</pre></body></html>"]
    atomic_write_text(path, "\n".join(parts) + "\n")


__all__ = ["PLOTTED", "strip_plot", "write_study_report"]
