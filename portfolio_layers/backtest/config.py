"""Backtest configuration: a frozen dataclass read from TOML, with CLI overrides; unknown keys are an error.

Example ``backtests/configs/default.toml``::

    prices = "sp500"
    start = "2010-01-01"
    trade_start = "2013-01-01"
    strategies = ["equal_weight", "inverse_volatility", "min_variance", "mean_variance"]
    lookback = 252
    rebalance = 21
    cost_bps = 10.0
    max_weight = 0.25

    [params.mean_variance]
    risk_aversion = 5.0

``start``, ``end``, ``trade_start``, ``max_weight`` and ``periods_per_year`` describe the data of ``prices``
(:data:`DATA_KEYS`): :meth:`BacktestConfig.with_prices` resets them when another source is chosen, so the
dates and the cap of the embedded dataset are never applied to a user's CSV. ``features = "factors.csv"``
adds exogenous features (a path read from the current folder); another price source keeps them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portfolio_layers.errors import ConfigError

WINDOWS = ("rolling", "expanding")
MISSING = ("raise", "ffill", "drop")
DEFAULT_STRATEGIES = ("equal_weight", "inverse_volatility", "min_variance", "mean_variance")
#: Keys that belong to the data of ``prices`` (see :meth:`BacktestConfig.with_prices`).
DATA_KEYS = ("start", "end", "trade_start", "max_weight", "periods_per_year")
#: Largest accepted ``seed`` (numpy's legacy and torch's seeds take 32-bit unsigned integers).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class BacktestConfig:
    """Everything that defines a walk-forward backtest run.

    Attributes
    ----------
    prices : str
        Embedded dataset name (``"sp500"``) or CSV path.
    features : str or None
        Path of a CSV file of exogenous market-level features (first column dates, one column per feature;
        see :mod:`portfolio_layers.data.exogenous`), given to every strategy beside the prices; None for
        none. A relative path is read from the current folder, like ``prices`` (not from the config file's
        folder): run from the project root.
    start, end : str or None
        Keep price rows with ``start <= date <= end`` (row 0 is the first kept row).
    trade_start : str or None
        First date on which a trade may happen (the first rebalance is the first row on or after it, and no
        earlier than row ``lookback``); the rows before only serve as history (lookback and training data).
        None: the first rebalance is row ``lookback``.
    strategies : tuple of str
        Registry names (see :func:`portfolio_layers.registry.available_strategies`).
    lookback : int
        ``L``: at a rebalance row t a strategy sees price rows ``t-L .. t``.
    rebalance : int
        ``k``: rebalance rows are ``L, L+k, L+2k, ...``.
    retrain_every : int
        Rows between two ``fit`` calls of a learning strategy (first fit at the first rebalance).
    train_window : int
        Price rows in the rolling training window ending at the rebalance row (``window="rolling"``).
    window : {"rolling", "expanding"}
        Rolling window of ``train_window`` rows, or every row from the first up to the rebalance row.
    cost_bps : float
        Proportional cost in basis points of turnover.
    max_weight : float or None
        Per-asset cap passed to the strategies that accept ``max_weight`` (unless set in their params).
    benchmark : str or None
        Strategy the others are compared with (Sharpe-difference tests); None (``""`` in TOML) for no tests.
        The command line requires it to be among ``strategies`` (see :meth:`check_benchmark`).
    seed : int
        Passed to the strategies that accept ``seed``, in ``[0, 2**32 - 1]``.
    missing : {"raise", "ffill", "drop"}
        Missing-price policy.
    periods_per_year : float or None
        Return periods per year used to annualise metrics (252 daily, 52 weekly, 12 monthly); None infers it
        from the dates of the prices kept (see :mod:`portfolio_layers.data.frequency`), which fails with a
        clear error on an irregular index.
    params : dict
        Per-strategy keyword arguments, ``{strategy_name: {param: value}}`` (TOML tables ``[params.NAME]``).
    """

    prices: str = "sp500"
    features: str | None = None
    start: str | None = None
    end: str | None = None
    trade_start: str | None = None
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    lookback: int = 252
    rebalance: int = 21
    retrain_every: int = 252
    train_window: int = 756
    window: str = "rolling"
    cost_bps: float = 10.0
    max_weight: float | None = None
    benchmark: str | None = "equal_weight"
    seed: int = 0
    missing: str = "raise"
    periods_per_year: float | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("lookback", "rebalance", "retrain_every", "train_window", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"config key {name!r} must be an integer, got {value!r}.")
        for name, low in (("lookback", 2), ("rebalance", 1), ("retrain_every", 1), ("train_window", 2)):
            if getattr(self, name) < low:
                raise ConfigError(f"config key {name!r} must be >= {low}, got {getattr(self, name)}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(
                f"config key 'seed' must be in [0, {MAX_SEED}] (numpy and torch take 32-bit seeds), "
                f"got {self.seed}."
            )
        if isinstance(self.cost_bps, bool) or not isinstance(self.cost_bps, int | float):
            raise ConfigError(f"config key 'cost_bps' must be a number, got {self.cost_bps!r}.")
        if not math.isfinite(self.cost_bps) or self.cost_bps < 0:
            raise ConfigError(f"config key 'cost_bps' must be a finite number >= 0, got {self.cost_bps}.")
        set_(self, "cost_bps", float(self.cost_bps))
        if self.max_weight is not None:
            if isinstance(self.max_weight, bool) or not isinstance(self.max_weight, int | float):
                raise ConfigError(f"config key 'max_weight' must be a number, got {self.max_weight!r}.")
            if not 0 < self.max_weight <= 1:
                raise ConfigError(f"config key 'max_weight' must be in (0, 1], got {self.max_weight}.")
            set_(self, "max_weight", float(self.max_weight))
        if self.periods_per_year is not None:
            value = self.periods_per_year
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(
                    "config key 'periods_per_year' must be a positive number (252 daily, 52 weekly, 12 "
                    f"monthly), or absent to infer it from the dates; got {value!r}."
                )
        if self.window not in WINDOWS:
            raise ConfigError(f"config key 'window' must be one of {WINDOWS}, got {self.window!r}.")
        if self.missing not in MISSING:
            raise ConfigError(f"config key 'missing' must be one of {MISSING}, got {self.missing!r}.")
        if not isinstance(self.prices, str) or not self.prices:
            raise ConfigError(f"config key 'prices' must be a dataset name or CSV path, got {self.prices!r}.")
        if isinstance(self.features, os.PathLike):
            set_(self, "features", os.fspath(self.features))
        if self.features is not None and (not isinstance(self.features, str) or not self.features):
            raise ConfigError(
                f"config key 'features' must be the path of a CSV file of features, got {self.features!r}; "
                "leave it out for none."
            )
        for name in ("start", "end", "trade_start"):
            value = getattr(self, name)
            if isinstance(value, _dt.date):
                set_(self, name, value.isoformat())
            elif value is not None and not isinstance(value, str):
                raise ConfigError(f"config key {name!r} must be a date like '2015-01-31', got {value!r}.")
        strategies = self.strategies
        if isinstance(strategies, str):
            strategies = tuple(s.strip() for s in strategies.split(",") if s.strip())
        strategies = tuple(strategies)
        if not strategies or not all(isinstance(s, str) and s for s in strategies):
            raise ConfigError(
                f"config key 'strategies' must be a non-empty list of names, got {self.strategies!r}."
            )
        if len(set(strategies)) != len(strategies):
            raise ConfigError(f"config key 'strategies' lists a strategy twice: {list(strategies)}.")
        set_(self, "strategies", strategies)
        if self.benchmark == "":
            set_(self, "benchmark", None)
        elif self.benchmark is not None and not isinstance(self.benchmark, str):
            raise ConfigError(
                f"config key 'benchmark' must be the name of one of the strategies {list(strategies)}, or "
                f'"" for no Sharpe-difference tests; got {self.benchmark!r}.'
            )
        if not isinstance(self.params, Mapping) or not all(
            isinstance(v, Mapping) for v in self.params.values()
        ):
            raise ConfigError("config key 'params' must be tables [params.<strategy>] of keyword arguments.")
        unknown = sorted(set(self.params) - set(strategies))
        if unknown:
            raise ConfigError(
                f"[params.{unknown[0]}] is given but {unknown[0]!r} is not in strategies {list(strategies)}; "
                "add it to strategies or remove the table."
            )
        set_(self, "params", {k: dict(v) for k, v in self.params.items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> BacktestConfig:
        """Build from a mapping (a parsed TOML file); unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown}; valid keys are {sorted(known)} "
                "(per-strategy options go in tables [params.<strategy>])."
            )
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> BacktestConfig:
        """Read a TOML file (see the module docstring); unknown keys raise :class:`ConfigError`."""
        path = Path(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found; see backtests/configs/ for examples.") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
                f"{exc.start}); TOML files must be UTF-8: save it with that encoding."
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}.") from exc
        return cls.from_dict(data, source=str(path))

    def override(self, **changes: Any) -> BacktestConfig:
        """Copy with the given fields replaced; ``None`` values mean "not given" and are skipped."""
        changes = {k: v for k, v in changes.items() if v is not None}
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys are {sorted(known)}.")
        return dataclasses.replace(self, **changes)

    def with_prices(self, prices: str) -> BacktestConfig:
        """Copy that reads ``prices``; when that is another source, the :data:`DATA_KEYS` are reset to None.

        The dates, cap and frequency of a config describe its own data (those of the default run describe the
        embedded ``sp500`` dataset): another source starts where it starts (trading from row ``lookback``),
        has no cap and has its frequency inferred, unless these keys are set again afterwards.
        """
        if prices == self.prices:
            return self
        return dataclasses.replace(self, prices=prices, **dict.fromkeys(DATA_KEYS))

    def check_benchmark(self) -> None:
        """Raise :class:`ConfigError` unless ``benchmark`` is None or one of ``strategies``."""
        if self.benchmark is not None and self.benchmark not in self.strategies:
            raise ConfigError(
                f"benchmark {self.benchmark!r} is not among the strategies run {list(self.strategies)}; "
                "choose one of them (--benchmark NAME, or benchmark in the config), or give an empty "
                'benchmark ("") for no Sharpe-difference tests.'
            )

    def with_strategies(self, names: Iterable[str]) -> BacktestConfig:
        """Copy that runs ``names``, keeping only their ``[params.NAME]`` tables (``self`` if unchanged)."""
        names = tuple(names)
        if names == self.strategies:
            return self
        params = {k: v for k, v in self.params.items() if k in names}
        return dataclasses.replace(self, strategies=names, params=params)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (``None`` fields omitted), inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_toml(self) -> str:
        """TOML text that :meth:`from_toml` reads back to an equal config."""
        lines: list[str] = []
        data = self.to_dict()
        params = data.pop("params", {})
        for key, value in data.items():
            lines.append(f"{key} = {_toml_value(value, key)}")
        for name, table in params.items():
            lines.append("")
            lines.append(f"[params.{_toml_key(name)}]")
            for key, value in table.items():
                lines.append(f"{_toml_key(key)} = {_toml_value(value, f'params.{name}.{key}')}")
        return "\n".join(lines) + "\n"


def default_config() -> BacktestConfig:
    """The default run (``backtests/configs/default.toml``, used when that file is not found).

    The embedded S&P 500 dataset from 2010-01-01, trading from 2013-01-02 to 2022-12-28 (ten years; the
    three years before are history for the lookback and for training learning strategies), the four
    classical strategies and the learned ``e2e`` and ``pto``, lookback 252, monthly (21-row) rebalance,
    10 bps costs, a 25% cap per asset, and risk aversion 5 for mean-variance. The dates and the cap describe
    the embedded data: :meth:`BacktestConfig.with_prices` drops them for another source.
    """
    return BacktestConfig(
        prices="sp500",
        start="2010-01-01",
        trade_start="2013-01-01",
        strategies=(*DEFAULT_STRATEGIES, "e2e", "pto"),
        lookback=252,
        rebalance=21,
        cost_bps=10.0,
        max_weight=0.25,
        benchmark="equal_weight",
        params={"mean_variance": {"risk_aversion": 5.0}},
    )


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):  # a nested table, e.g. [params.e2e.train], written inline
        items = (f"{_toml_key(k)} = {_toml_value(v, f'{where}.{k}')}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ConfigError(f"cannot write {where} = {value!r} to TOML (type {type(value).__name__}).")


__all__ = ["DATA_KEYS", "DEFAULT_STRATEGIES", "MAX_SEED", "BacktestConfig", "default_config"]
