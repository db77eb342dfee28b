"""What a study runs: seeds, grid points and the tasks they expand to.

A study takes one :class:`~portfolio_layers.backtest.config.BacktestConfig`, a list of seeds and an optional
grid of parameter values for some of its strategies. It runs one task per (strategy, grid point, seed):

- a strategy without a grid has one point, its ``[params.NAME]`` table of the config;
- a strategy with a grid has one point per combination of its grid values (the cartesian product of that
  strategy's lists only: the grid of ``e2e`` does not multiply the runs of ``pto`` or of the classical
  strategies), each replacing those keys of its table;
- the benchmark runs once per seed, so that every run is compared with the benchmark on the same dates.

A grid file lists the values per strategy; a nested table replaces keys of a mapping parameter::

    [grid.e2e]
    d_model = [8, 16]

    [grid.e2e.train]
    lr = [1e-3, 3e-3]

Run ids are readable and deterministic: ``e2e-seed3`` for the config's own point, ``e2e-1a2b3c-seed3`` for a
grid point, the six hex digits hashing the point's values (the same values give the same id whatever the
order of the file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.errors import ConfigError
from portfolio_layers.registry import build_strategy

#: Largest number of seeds a ``--seeds`` range may expand to (a typo guard, not a resource limit).
MAX_SEEDS = 10_000


def parse_seeds(text: str) -> tuple[int, ...]:
    """Seeds from ``"0-4"``, ``"0,2,5"`` or a mix (``"0-2,7"``), in the given order.

    Parameters
    ----------
    text : str
        Comma-separated non-negative integers or inclusive ranges ``a-b`` with ``a <= b``.

    Returns
    -------
    tuple of int
        The seeds, each once.

    Raises
    ------
    ConfigError
        Empty text, an item that is not an integer or a range, a descending range, or a seed given twice.
    """
    hint = "use a range like 0-4 or a list like 0,2,5"
    seeds: list[int] = []
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ConfigError(f"--seeds is empty; {hint}.")
    for item in items:
        low, sep, high = item.partition("-")
        try:
            first, last = (int(low), int(high)) if sep else (int(item), int(item))
        except ValueError:
            raise ConfigError(f"--seeds item {item!r} is not a seed or a range of seeds; {hint}.") from None
        if first < 0 or last < first:
            raise ConfigError(f"--seeds range {item!r} must go up from a seed >= 0; {hint}.")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ConfigError(f"--seeds {text!r} gives more than {MAX_SEEDS} seeds; {hint}.")
        seeds.extend(range(first, last + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds {text!r} gives seed(s) {repeated} twice; {hint}.")
    return tuple(seeds)


@dataclass(frozen=True)
class GridPoint:
    """One combination of grid values of a strategy.

    Attributes
    ----------
    strategy : str
        Registry name.
    values : dict
        The grid values of this point, nested like ``[params.NAME]`` (``{"train": {"lr": 0.001}}``); empty
        for the config's own point.
    """

    strategy: str
    values: dict[str, Any]

    @property
    def id(self) -> str:
        """Six hex digits of a hash of ``values`` (``""`` for the config's own point)."""
        if not self.values:
            return ""
        text = json.dumps(self.values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:6]

    def label(self) -> str:
        """``"d_model=8, train.lr=0.001"``, or ``"config"`` for the config's own point."""
        return ", ".join(f"{k}={v!r}" for k, v in _flatten(self.values)) or "config"


@dataclass(frozen=True)
class Task:
    """One run of a study: one strategy at one grid point with one seed.

    Attributes
    ----------
    run_id : str
        Folder name under ``runs/`` (see the module docstring).
    point : GridPoint
    seed : int
    config : BacktestConfig
        The run's config: the study's, with this seed, this strategy alone and the point's values merged
        into its ``[params.NAME]`` table.
    """

    run_id: str
    point: GridPoint
    seed: int
    config: BacktestConfig

    @property
    def strategy(self) -> str:
        """Registry name of the strategy."""
        return self.point.strategy


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key in sorted(values):
        value = values[key]
        if isinstance(value, Mapping):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _nest(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in pairs:
        *parents, leaf = dotted.split(".")
        table = out
        for key in parents:
            table = table.setdefault(key, {})
        table[leaf] = value
    return out


def _merge(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``values`` replacing its keys; a nested mapping replaces keys of the mapping it meets."""
    out = dict(base)
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_grid(path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Read a grid file into the value combinations of each strategy.

    Parameters
    ----------
    path : path-like
        TOML file with tables ``[grid.NAME]`` (see the module docstring): every leaf is a non-empty list of
        values, a nested table holds the values of keys of a mapping parameter.

    Returns
    -------
    dict of str to list of dict
        Per strategy, the combinations (cartesian product) in file order, each nested like its values.

    Raises
    ------
    ConfigError
        The file is missing or not TOML, has keys besides ``grid``, or a leaf is not a non-empty list.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"grid file {path} not found.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"grid file {path} is not valid TOML: {exc}.") from None
    example = "write tables like [grid.e2e] with lists of values, e.g. d_model = [8, 16]"
    if set(data) != {"grid"} or not isinstance(data["grid"], dict) or not data["grid"]:
        raise ConfigError(f"grid file {path} must hold [grid.<strategy>] tables and nothing else; {example}.")
    grid: dict[str, list[dict[str, Any]]] = {}
    for name, table in data["grid"].items():
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"{path}: grid.{name} must be a table of lists; {example}.")
        leaves = _flatten(table)
        for key, values in leaves:
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"{path}: grid.{name}.{key} = {values!r} must be a non-empty list of values; {example}."
                )
        keys = [key for key, _ in leaves]
        grid[name] = [
            _nest(list(zip(keys, combo, strict=True))) for combo in itertools.product(*(v for _, v in leaves))
        ]
    return grid


def plan_tasks(
    config: BacktestConfig,
    seeds: Sequence[int],
    grid: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[Task]:
    """Expand a study into its tasks, strategy by strategy, then grid point, then seed.

    Every task's strategy is built once here, so that an unknown strategy or parameter is reported before
    anything runs (building a strategy does not train it).

    Parameters
    ----------
    config : BacktestConfig
        The study's config (its ``seed`` is replaced by each of ``seeds``).
    seeds : sequence of int
    grid : mapping, optional
        Per strategy, its value combinations (:func:`read_grid`).

    Returns
    -------
    list of Task

    Raises
    ------
    ConfigError
        A grid strategy that is not among ``config.strategies`` or is the benchmark, an unknown parameter, or
        two combinations that are the same.
    """
    grid = dict(grid or {})
    unknown = sorted(set(grid) - set(config.strategies))
    if unknown:
        raise ConfigError(
            f"the grid names {unknown}, which the config does not run (strategies "
            f"{list(config.strategies)}); add them to the config's strategies or remove their "
            "[grid.<strategy>] tables."
        )
    if config.benchmark in grid:
        raise ConfigError(
            f"the benchmark {config.benchmark!r} has a grid; every run is compared with one benchmark run "
            "per seed, so give the benchmark fixed parameters in the config."
        )
    if not seeds:
        raise ConfigError("a study needs at least one seed.")
    tasks = []
    for name in config.strategies:
        points = [GridPoint(name, dict(values)) for values in grid.get(name, [{}])]
        ids = [p.id for p in points]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"the grid of {name!r} lists the same combination of values twice.")
        for point in points:
            single = config.with_strategies([name])
            params = _merge(single.params.get(name, {}), point.values)
            for seed in seeds:
                task_config = dataclasses.replace(single, seed=seed, params={name: params} if params else {})
                run_id = "-".join(part for part in (name, point.id, f"seed{seed}") if part)
                tasks.append(Task(run_id, point, seed, task_config))
            try:
                build_strategy(name, task_config)
            except ConfigError as exc:
                where = f"grid point {point.label()} of {name!r}" if point.values else f"strategy {name!r}"
                exc.add_note(f"(while checking {where}.)")
                raise
    return tasks


__all__ = ["MAX_SEEDS", "GridPoint", "Task", "parse_seeds", "plan_tasks", "read_grid"]
