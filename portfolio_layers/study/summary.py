"""The numbers of a study: one row per run, then mean +- std over seeds per strategy and grid point.

Everything is read back from the run folders (``metrics.json``, ``returns.csv`` and the diagnostics of learned
strategies), so a summary is the same whether the runs were made now, earlier (a resumed study) or elsewhere.

Per run (:func:`collect_runs`): the metrics of :data:`~portfolio_layers.backtest.metrics.METRIC_NAMES`; the
Sharpe difference to the benchmark run of the same seed (same dates) with the Jobson-Korkie/Memmel p-value
(``p_value``) and the Ledoit-Wolf circular block bootstrap p-value (``p_value_lw``), as ``backtest`` reports
them; and for a learned strategy its validation score ``val_loss``: per fit, the lowest validation loss of its
epochs (the loss of the state kept, or an upper bound of it when no epoch beat the initial parameters),
averaged over the fits. Lower is better; it is the training loss (negative Sharpe ratio for ``e2e``, MSE for
``pto``), so compare it within a strategy only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest.metrics import METRIC_NAMES
from portfolio_layers.backtest.output import safe_name
from portfolio_layers.backtest.sharpe_tests import sharpe_difference_test
from portfolio_layers.data.frequency import resolve_periods_per_year
from portfolio_layers.study.spec import Task

#: Per-run values averaged over seeds, besides the metrics.
EXTRA_COLUMNS = ("sharpe_difference", "val_loss")
#: The p-values whose range over seeds is reported.
P_COLUMNS = ("p_value", "p_value_lw")


def _returns(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "returns.csv", index_col=0, parse_dates=True)


def validation_score(folder: Path, strategy: str) -> float:
    """Mean over fits of the lowest validation loss of each fit (NaN without training diagnostics)."""
    path = folder / "diagnostics" / safe_name(strategy) / "training.csv"
    if not path.is_file():
        return math.nan
    curves = pd.read_csv(path)
    if curves.empty or "val_loss" not in curves:
        return math.nan
    per_fit = curves.groupby("fit_date")["val_loss"].min()
    return float(per_fit.mean()) if per_fit.notna().any() else math.nan


def collect_runs(
    tasks: Sequence[Task], runs_dir: str | os.PathLike[str], benchmark: str | None
) -> pd.DataFrame:
    """One row per finished run of ``tasks`` (a missing or failed run has no row).

    Parameters
    ----------
    tasks : sequence of Task
    runs_dir : path-like
        Folder of the run folders.
    benchmark : str or None
        Strategy each run is compared with (its run of the same seed); None: no comparison (NaN).

    Returns
    -------
    DataFrame
        Columns ``run_id``, ``strategy``, ``point``, ``params``, ``seed``, the metrics, ``sharpe_difference``,
        ``p_value``, ``p_value_lw``, ``val_loss``; in the order of ``tasks``.
    """
    runs = Path(runs_dir)
    finished = [t for t in tasks if (runs / t.run_id / "metrics.json").is_file()]
    bench_returns = {}
    for task in finished:
        if task.strategy == benchmark:
            bench_returns[task.seed] = _returns(runs / task.run_id)[benchmark]
    rows = []
    for task in finished:
        folder = runs / task.run_id
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))[task.strategy]
        row = {
            "run_id": task.run_id,
            "strategy": task.strategy,
            "point": task.point.id,
            "params": task.point.label(),
            "seed": task.seed,
            **{m: math.nan if metrics.get(m) is None else metrics[m] for m in METRIC_NAMES},
            "sharpe_difference": math.nan,
            "p_value": math.nan,
            "p_value_lw": math.nan,
            "val_loss": validation_score(folder, task.strategy),
        }
        if task.strategy == benchmark:
            row["sharpe_difference"] = 0.0
        elif task.seed in bench_returns:
            mine = _returns(folder)[task.strategy]
            theirs = bench_returns[task.seed]
            periods = resolve_periods_per_year(mine.index, task.config.periods_per_year)
            jk = sharpe_difference_test(mine, theirs, periods)
            lw = sharpe_difference_test(mine, theirs, periods, method="ledoit_wolf_bootstrap")
            row.update(sharpe_difference=jk.difference, p_value=jk.p_value, p_value_lw=lw.p_value)
        rows.append(row)
    columns = [
        "run_id",
        "strategy",
        "point",
        "params",
        "seed",
        *METRIC_NAMES,
        "sharpe_difference",
        *P_COLUMNS,
    ]
    return pd.DataFrame(rows, columns=[*columns, "val_loss"])


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1; 0 for one seed) over seeds per strategy and grid point, and p-value ranges.

    Parameters
    ----------
    runs : DataFrame
        :func:`collect_runs`.

    Returns
    -------
    DataFrame
        One row per (strategy, point) in run order: ``strategy``, ``point``, ``params``, ``seeds`` (the
        number of finished runs), ``<value>_mean`` and ``<value>_std`` for each metric, ``sharpe_difference``
        and ``val_loss``, and ``<p>_min``, ``<p>_max`` for ``p_value`` and ``p_value_lw``.
    """
    rows = []
    for (strategy, point), group in runs.groupby(["strategy", "point"], sort=False):
        row = {"strategy": strategy, "point": point, "params": group["params"].iloc[0], "seeds": len(group)}
        for column in (*METRIC_NAMES, *EXTRA_COLUMNS):
            values = group[column].astype(float)
            row[f"{column}_mean"] = values.mean()
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else 0.0
        for column in P_COLUMNS:
            row[f"{column}_min"], row[f"{column}_max"] = group[column].min(), group[column].max()
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(mean: float, std: float) -> str:
    """``"0.812 ± 0.031"``, the mean alone when the std rounds to 0, ``"n/a"`` for NaN."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f}" if not std >= 5e-4 else f"{mean:.3f} ± {std:.3f}"


def p_range(low: float, high: float) -> str:
    """``"0.12-0.40"``, one value when they agree, empty for NaN (the benchmark itself)."""
    if not np.isfinite(low):
        return ""
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def _table(header: Sequence[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    out.extend("| " + " | ".join(cells) + " |" for cells in lines)
    return "\n".join(out)


def summary_markdown(
    summary: pd.DataFrame, *, title: str, benchmark: str | None, failed: Sequence[str]
) -> str:
    """The text of ``summary.md``: the table over seeds, the grid search table, and the failed runs."""
    values = (*METRIC_NAMES, "sharpe_difference")
    bench = benchmark or "benchmark"
    header = ["strategy", "point", "seeds", *METRIC_NAMES, f"Sharpe - {bench}", "JK p", "LW p"]
    lines = [
        [
            r.strategy,
            r.params,
            str(r.seeds),
            *(mean_std(getattr(r, f"{v}_mean"), getattr(r, f"{v}_std")) for v in values),
            p_range(r.p_value_min, r.p_value_max),
            p_range(r.p_value_lw_min, r.p_value_lw_max),
        ]
        for r in summary.itertuples()
    ]
    parts = [
        f"# {title}",
        "",
        "Mean ± std over seeds; p-values: range over seeds.",
        "",
        _table(header, lines),
    ]
    grid = summary[summary["point"] != ""] if len(summary) else summary
    if len(grid):
        parts += [
            "",
            "## Grid search",
            "",
            "Validation loss: the training loss on each fit's validation split (lower is better); "
            "development Sharpe: the net Sharpe ratio of the backtest on this config's period. Choose "
            "defaults on a development period, never on a test period.",
            "",
        ]
        for strategy, group in grid.groupby("strategy", sort=False):
            ranked = group.sort_values("val_loss_mean", kind="stable")
            rows = [
                [
                    r.point,
                    r.params,
                    str(r.seeds),
                    mean_std(r.val_loss_mean, r.val_loss_std),
                    mean_std(r.sharpe_mean, r.sharpe_std),
                ]
                for r in ranked.itertuples()
            ]
            parts += [
                f"### {strategy}",
                "",
                _table(["point", "values", "seeds", "validation loss", "development Sharpe"], rows),
                "",
            ]
    if failed:
        parts += ["", "## Missing runs (failed; see errors/<run id>.txt)", "", *(f"- {r}" for r in failed)]
    return "\n".join(parts).rstrip() + "\n"


def write_summary(
    runs: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    title: str,
    benchmark: str | None,
    failed: Sequence[str] = (),
) -> tuple[pd.DataFrame, str]:
    """Write ``runs.csv``, ``summary.csv`` and ``summary.md`` into ``out_dir`` atomically.

    Returns
    -------
    summary : DataFrame
        :func:`summarize` of ``runs``.
    text : str
        The text of ``summary.md``.
    """
    out = Path(out_dir)
    summary = summarize(runs)
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False, float_format="%.10g"))
    text = summary_markdown(summary, title=title, benchmark=benchmark, failed=failed)
    atomic_write_text(out / "summary.md", text)
    return summary, text


__all__ = [
    "collect_runs",
    "mean_std",
    "p_range",
    "summarize",
    "summary_markdown",
    "validation_score",
    "write_summary",
]
