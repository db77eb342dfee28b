"""Where the tasks of a study run: a local process pool, or a Ray cluster.

An executor maps a picklable function over tasks and yields ``(task, value)`` pairs as they finish, in any
order; ``value`` is the function's return value, or the exception that ended the task outside the function
(a worker process that died). It waits until every task is done.

Both run one task per process at a time, each task with one torch thread, so a result does not depend on
the executor or the number of workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from portfolio_layers.errors import ConfigError

if TYPE_CHECKING:  # the CLI imports this module to build its parser: no torch import here
    from portfolio_layers.study.spec import Task

#: Executor names of ``--executor``.
EXECUTORS = ("local", "ray")

#: Seconds to wait for a TCP connection to a Ray address before calling it unreachable.
CONNECT_TIMEOUT = 5.0

#: Longest single wait for a Ray task to finish before the loop looks again (and sees Ctrl-C).
WAIT_SECONDS = 1.0

RAY_INSTALL = 'Ray is not installed; install it with pip install -e ".[ray]" (or pip install "ray>=2.9").'


class Executor(Protocol):
    """What the study runner needs of an executor."""

    #: Whether the function should return results for the caller to write (workers on other machines).
    returns_results: bool

    def map_unordered(self, fn: Callable[[Task], Any], tasks: Sequence[Task]) -> Iterator[tuple[Task, Any]]:
        """Run ``fn`` on every task; yield ``(task, value or exception)`` as each finishes."""


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers!r}.")
    return workers


@dataclass(frozen=True)
class LocalExecutor:
    """A pool of ``workers`` processes on this machine (spawned, so that no torch state is inherited).

    Attributes
    ----------
    workers : int, optional
        Processes; default the number of cores (:func:`os.cpu_count`).
    """

    workers: int | None = None
    returns_results = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", _check_workers(self.workers))

    def map_unordered(self, fn: Callable[[Task], Any], tasks: Sequence[Task]) -> Iterator[tuple[Task, Any]]:
        """Run ``fn`` on every task in the pool; yield ``(task, value or exception)`` as each finishes."""
        if not tasks:
            return
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=context) as pool:
            futures = {pool.submit(fn, task): task for task in tasks}
            try:
                for future in cf.as_completed(futures):
                    try:
                        yield futures[future], future.result()
                    except Exception as exc:  # a worker that died (BrokenProcessPool)
                        yield futures[future], exc
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


def import_ray() -> Any:
    """The ``ray`` module, or :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_INSTALL) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`ConfigError` unless a TCP connection to the ``HOST:PORT`` of ``address`` opens.

    ``ray.init`` retries an unreachable address for minutes; this answers in ``timeout`` seconds. ``"auto"``
    (the cluster this machine belongs to) is left to Ray, which answers at once.
    """
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigError(
            f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or ray://HOST:10001 for Ray "
            "Client), nor 'auto'."
        )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}). Start one with "
            "'ray start --head' on the head machine (it prints the address to use), or check the host, the "
            "port (6379 by default) and the firewall; without --address a local Ray instance is started."
        ) from None


def _ray_call(fn: Callable[[Task], Any], task: Task) -> Any:
    return fn(task)


@dataclass(frozen=True)
class RayExecutor:
    """Tasks submitted to Ray, one CPU each.

    Attributes
    ----------
    address : str, optional
        A running cluster (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``); None starts a local Ray
        instance with ``workers`` CPUs, shut down at the end.
    workers : int, optional
        CPUs of a local instance (default the number of cores); a cluster uses all of its CPUs.

    Notes
    -----
    The function returns its results to this process (``returns_results``), which writes them: the workers
    need no shared file system, only the package and the data. When this process is already connected to
    Ray (``ray.is_initialized()``), that connection is used and left open.
    """

    address: str | None = None
    workers: int | None = None
    returns_results = True

    def __post_init__(self) -> None:
        if self.workers is not None:
            _check_workers(self.workers)

    def _connect(self, ray: Any) -> bool:
        """Connect (or start a local instance); whether this call did, so should disconnect."""
        if ray.is_initialized():
            return False
        quiet = {"logging_level": logging.WARNING, "include_dashboard": False}
        if self.address is None:
            ray.init(num_cpus=_check_workers(self.workers), **quiet)
            return True
        check_reachable(self.address)
        try:
            ray.init(address=self.address, logging_level=logging.WARNING)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster at {self.address}: {' '.join(str(exc).split())[:300]} "
                "(is the cluster started, with 'ray start --head', and the same Ray version here?)"
            ) from None
        return True

    def map_unordered(self, fn: Callable[[Task], Any], tasks: Sequence[Task]) -> Iterator[tuple[Task, Any]]:
        """Submit every task; yield ``(task, value or exception)`` as each finishes."""
        if not tasks:
            return
        ray = import_ray()
        started = self._connect(ray)
        try:
            remote = ray.remote(num_cpus=1)(_ray_call)
            fn_ref = ray.put(fn)
            pending = {remote.remote(fn_ref, task): task for task in tasks}
            try:
                while pending:
                    # a bounded wait, so that Ctrl-C is seen between waits (a blocked wait ignores it)
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
                    for ref in done:
                        task = pending.pop(ref)
                        try:
                            yield task, ray.get(ref)
                        except ray.exceptions.RayError as exc:  # a worker or node that died
                            yield task, exc
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
        finally:
            if started:
                ray.shutdown()


def make_executor(name: str, *, address: str | None = None, workers: int | None = None) -> Executor:
    """The executor ``name`` (``"local"`` or ``"ray"``).

    Raises
    ------
    ConfigError
        Unknown name, ``address`` with the local executor, bad ``workers``, Ray not installed, or an
        ``address`` that does not answer (checked now, before any work).
    """
    if name == "local":
        if address is not None:
            raise ConfigError("--address is for --executor ray; the local executor runs on this machine.")
        return LocalExecutor(workers)
    if name == "ray":
        import_ray()
        if address is not None:
            if workers is not None:
                raise ConfigError(
                    "--workers sets the CPUs of a local Ray instance; a cluster (--address) uses the CPUs "
                    "its nodes were started with (ray start --num-cpus K)."
                )
            check_reachable(address)
        return RayExecutor(address, workers)
    raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}.")


__all__ = [
    "CONNECT_TIMEOUT",
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "check_reachable",
    "import_ray",
    "make_executor",
]
