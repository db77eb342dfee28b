"""Run a study: plan its tasks, skip the finished ones, run the rest on an executor, summarise.

Layout of a study folder ``DIR``::

    DIR/runs/<run id>/     one complete run each (the files of ``portfolio-layers backtest --out``)
    DIR/errors/<run id>.txt  the traceback of a failed task (removed once it succeeds)
    DIR/runs.csv           one row per finished run (metrics, Sharpe difference, p-values, validation loss)
    DIR/summary.csv        mean and std over seeds per strategy and grid point
    DIR/summary.md         the same as tables, with the grid search ranked by validation loss
    DIR/report.html        distributions across seeds

Starting a study again skips every run whose folder is complete (and refuses a folder written with another
configuration), so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from portfolio_layers.atomic import atomic_write_text
from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.study.executors import Executor
from portfolio_layers.study.report import write_study_report
from portfolio_layers.study.spec import Task, plan_tasks
from portfolio_layers.study.summary import collect_runs, write_summary
from portfolio_layers.study.task import (
    TaskOutcome,
    describe_error,
    is_finished,
    remove_staging,
    run_task,
    write_outcome,
)


@dataclass(frozen=True)
class StudyOutcome:
    """What :func:`run_study` did.

    Attributes
    ----------
    tasks : list of Task
        Every task of the study.
    skipped : list of str
        Run ids already finished before this call.
    outcomes : list of TaskOutcome
        The tasks run now, in the order they finished.
    summary : DataFrame
        :func:`~portfolio_layers.study.summary.summarize` of every finished run.
    out : Path
        The study folder.
    """

    tasks: list[Task]
    skipped: list[str]
    outcomes: list[TaskOutcome]
    summary: pd.DataFrame
    out: Path

    @property
    def failed(self) -> list[TaskOutcome]:
        """The outcomes of the failed tasks."""
        return [o for o in self.outcomes if not o.ok]


class _Progress:
    """One bar over the tasks, with finished/failed counts and the slowest task so far (stderr)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, desc="study", unit="task", file=sys.stderr, disable=not enabled)
        self.done = self.failed = 0
        self.slowest: tuple[float, str] = (-math.inf, "")

    def update(self, outcome: TaskOutcome) -> None:
        self.done += outcome.ok
        self.failed += not outcome.ok
        if math.isfinite(outcome.seconds) and outcome.seconds > self.slowest[0]:
            self.slowest = (outcome.seconds, outcome.run_id)
        slowest = f", slowest {self.slowest[1]} {self.slowest[0]:.1f}s" if self.slowest[1] else ""
        self.bar.set_postfix_str(f"finished {self.done}, failed {self.failed}{slowest}", refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _record(outcome: TaskOutcome, errors_dir: Path) -> None:
    path = errors_dir / f"{outcome.run_id}.txt"
    if outcome.ok:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, f"{outcome.error}\n\n{outcome.traceback}")


def study_title(config: BacktestConfig, seeds: Sequence[int]) -> str:
    """``"Study: sp500 2010-01-01 to end, trading from 2013-01-01, seeds 0-4"``."""
    period = f"{config.start or 'start'} to {config.end or 'end'}"
    trading = f", trading from {config.trade_start}" if config.trade_start else ""
    contiguous = len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    listed = f"{seeds[0]}-{seeds[-1]}" if contiguous else ",".join(map(str, seeds))
    return f"Study: {config.prices} {period}{trading}, seeds {listed}"


def run_study(
    config: BacktestConfig,
    seeds: Sequence[int],
    executor: Executor,
    out: str | os.PathLike[str],
    *,
    grid: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    progress: bool = True,
) -> StudyOutcome:
    """Run every unfinished task of a study on ``executor``, then write its summary and report.

    Parameters
    ----------
    config : BacktestConfig
        The study's config: its strategies, period and protocol (its ``seed`` is replaced by each seed).
    seeds : sequence of int
    executor : Executor
        :class:`~portfolio_layers.study.executors.LocalExecutor` or
        :class:`~portfolio_layers.study.executors.RayExecutor`.
    out : path-like
        The study folder (see the module docstring); created if needed.
    grid : mapping, optional
        Per strategy, its value combinations (:func:`~portfolio_layers.study.spec.read_grid`).
    progress : bool
        Show the progress bar on stderr.

    Returns
    -------
    StudyOutcome
        A failed task does not raise: it is in ``StudyOutcome.failed``, its traceback in
        ``errors/<run id>.txt``.

    Raises
    ------
    ConfigError
        A bad config or grid, a benchmark that is not run, or a run folder of another configuration; all
        checked before any task runs.
    """
    config.check_benchmark()
    tasks = plan_tasks(config, seeds, grid)
    out = Path(out)
    runs_dir, errors_dir = out / "runs", out / "errors"
    runs_dir.mkdir(parents=True, exist_ok=True)
    finished = {t.run_id for t in tasks if is_finished(t, runs_dir)}
    skipped = [t.run_id for t in tasks if t.run_id in finished]
    todo = [t for t in tasks if t.run_id not in finished]
    for task in todo:
        remove_staging(task, runs_dir)
    fn = functools.partial(run_task, runs_dir=None if executor.returns_results else runs_dir)
    outcomes = []
    bar = _Progress(len(todo), progress)
    try:
        for task, value in executor.map_unordered(fn, todo):
            if isinstance(value, TaskOutcome):
                outcome = write_outcome(value, runs_dir)
            else:  # the task ended outside run_task: its worker died
                outcome = TaskOutcome(task.run_id, math.nan, describe_error(value), repr(value))
            _record(outcome, errors_dir)
            outcomes.append(outcome)
            bar.update(outcome)
    finally:
        bar.close()
    runs = collect_runs(tasks, runs_dir, config.benchmark)
    missing = [t.run_id for t in tasks if t.run_id not in set(runs["run_id"])]
    title = study_title(config, seeds)
    summary, text = write_summary(runs, out, title=title, benchmark=config.benchmark, failed=missing)
    write_study_report(runs, text, out / "report.html", title=title)
    return StudyOutcome(tasks, skipped, outcomes, summary, out)


__all__ = ["StudyOutcome", "run_study", "study_title"]
