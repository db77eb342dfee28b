"""One task of a study: build its strategy, run the backtest, write its run folder.

:func:`run_task` is what an executor runs in a worker process (a local pool's or a Ray worker's). It never
raises for a failure of the run itself: the error comes back in the :class:`TaskOutcome`, so that one failed
task does not stop the others. A run folder is written by
:func:`~portfolio_layers.backtest.output.save_result` (a fresh sibling folder renamed into place), so a
folder under ``runs/`` always holds one complete run.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.backtest.engine import prepare_prices, run_backtest
from portfolio_layers.backtest.output import MANIFEST, save_result
from portfolio_layers.backtest.result import BacktestResult
from portfolio_layers.data.loaders import load_prices
from portfolio_layers.errors import ConfigError, PortfolioLayersError
from portfolio_layers.registry import build_strategy
from portfolio_layers.study.spec import Task


@dataclass(frozen=True)
class TaskOutcome:
    """What a task reports back.

    Attributes
    ----------
    run_id : str
    seconds : float
        Wall time of the task (loading data, running, writing).
    error : str or None
        One paragraph naming the error (None on success).
    traceback : str
        The full traceback of a failure ("" on success).
    result : BacktestResult or None
        The run, when the task returns it for the caller to write (Ray: the driver writes, so that the
        workers need no shared file system); None once written.
    """

    run_id: str
    seconds: float
    error: str | None = None
    traceback: str = ""
    result: BacktestResult | None = None

    @property
    def ok(self) -> bool:
        """Whether the task succeeded."""
        return self.error is None


def describe_error(exc: BaseException) -> str:
    """One paragraph: the error's type, message and notes, whitespace collapsed."""
    text = " ".join((str(exc), *getattr(exc, "__notes__", ())))
    return f"{type(exc).__name__}: {' '.join(text.split())}".rstrip(": ")


def compute(task: Task) -> BacktestResult:
    """Run the backtest of ``task`` with one torch thread (results do not depend on the thread count)."""
    torch.set_num_threads(1)
    config = task.config
    prices = load_prices(config.prices, missing=config.missing)
    _, periods = prepare_prices(prices, config)
    strategy = build_strategy(task.strategy, config, periods)
    return run_backtest(prices, [strategy], config)


def run_task(task: Task, runs_dir: str | os.PathLike[str] | None) -> TaskOutcome:
    """Run ``task`` and write ``runs_dir/<run id>/``, or return the result when ``runs_dir`` is None.

    Parameters
    ----------
    task : Task
    runs_dir : path-like or None
        Folder of the run folders; None returns the result in the outcome instead (see :func:`write_outcome`).

    Returns
    -------
    TaskOutcome
        Never raises for a failure of the task (``KeyboardInterrupt`` and other non-``Exception`` errors
        excepted): the outcome then carries the error.
    """
    tic = time.perf_counter()
    try:
        result = compute(task)
        if runs_dir is None:
            return TaskOutcome(task.run_id, time.perf_counter() - tic, result=result)
        save_result(result, Path(runs_dir) / task.run_id)
    except Exception as exc:
        return TaskOutcome(
            task.run_id, time.perf_counter() - tic, describe_error(exc), traceback.format_exc()
        )
    return TaskOutcome(task.run_id, time.perf_counter() - tic)


def write_outcome(outcome: TaskOutcome, runs_dir: str | os.PathLike[str]) -> TaskOutcome:
    """Write the result an outcome carries into ``runs_dir/<run id>/``; the outcome without it.

    A failed write becomes a failed outcome.
    """
    if outcome.result is None:
        return outcome
    tic = time.perf_counter()
    try:
        save_result(outcome.result, Path(runs_dir) / outcome.run_id)
    except Exception as exc:
        return replace(outcome, result=None, error=describe_error(exc), traceback=traceback.format_exc())
    return replace(outcome, result=None, seconds=outcome.seconds + time.perf_counter() - tic)


def is_finished(task: Task, runs_dir: str | os.PathLike[str]) -> bool:
    """Whether ``runs_dir/<run id>/`` holds a complete run of ``task`` (a study started again skips it).

    Raises
    ------
    ConfigError
        The folder holds a complete run of another configuration (its ``config.toml`` differs from the
        task's): the study refuses to mix them.
    """
    folder = Path(runs_dir) / task.run_id
    if not (folder / MANIFEST).is_file():
        return False
    try:
        written = BacktestConfig.from_toml(folder / "config.toml")
    except PortfolioLayersError:
        written = None
    if written != task.config:
        raise ConfigError(
            f"{folder} holds a run of another configuration than this study's (its config.toml differs: "
            "the config, the grid or the package changed since it was written); use another --out, or delete "
            "that folder to run it again."
        )
    return True


def remove_staging(task: Task, runs_dir: str | os.PathLike[str]) -> None:
    """Delete the partial sibling folders a killed writer of ``task``'s run left (``.<run id>.tmp-*``)."""
    for path in Path(runs_dir).glob(f".{task.run_id}.tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "TaskOutcome",
    "compute",
    "describe_error",
    "is_finished",
    "remove_staging",
    "run_task",
    "write_outcome",
]
