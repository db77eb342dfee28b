"""Writing a :class:`~portfolio_layers.backtest.result.BacktestResult` to a results folder, atomically.

Files: ``metrics.json`` (``{strategy: {metric: value}}``, NaN as null), ``returns.csv`` (net daily returns,
one column per strategy), ``weights/<strategy>.csv`` (target weights by rebalance date), ``turnover.csv``,
``config.toml`` (the resolved config), ``diagnostics/<strategy>/<name>.csv`` when a strategy offers
diagnostics, ``sharpe_tests.csv`` (vs the benchmark, when it ran) and ``report.html``. Each file is written to
a temporary file first and moved in place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest.report import write_report
from portfolio_layers.backtest.result import BacktestResult


def safe_name(name: str) -> str:
    """File-system-safe version of a strategy or diagnostic name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"


def _csv(frame: pd.DataFrame, index_label: str = "date") -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index_label=index_label, float_format="%.10g")
    return buf.getvalue()


def metrics_json(result: BacktestResult) -> str:
    """``{strategy: {metric: value}}`` as JSON text (NaN and infinities become null)."""
    data = {
        name: {k: (float(v) if math.isfinite(v) else None) for k, v in row.items()}
        for name, row in result.metrics.to_dict(orient="index").items()
    }
    return json.dumps(data, indent=2) + "\n"


def save_result(result: BacktestResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write every output file of ``result`` into ``out_dir`` (created if needed).

    Returns
    -------
    Path
        The output folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", result.config.to_toml())
    atomic_write_text(out / "returns.csv", _csv(result.returns))
    atomic_write_text(out / "turnover.csv", _csv(result.turnover))
    for name, frame in result.weights.items():
        atomic_write_text(out / "weights" / f"{safe_name(name)}.csv", _csv(frame))
    for name, diags in result.diagnostics.items():
        for key, frame in diags.items():
            atomic_write_text(
                out / "diagnostics" / safe_name(name) / f"{safe_name(key)}.csv", _csv(frame, "index")
            )
    if result.config.benchmark in result.returns.columns and result.returns.shape[1] > 1:
        atomic_write_text(out / "sharpe_tests.csv", _csv(result.sharpe_tests(), "strategy"))
    write_report(result, out / "report.html")
    # Last, so that a folder with metrics.json holds a complete run.
    atomic_write_text(out / "metrics.json", metrics_json(result))
    return out


__all__ = ["metrics_json", "safe_name", "save_result"]
