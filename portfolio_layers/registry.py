"""The composition root: strategy names become strategy objects here, and only here.

Above :mod:`portfolio_layers.backtest` and :mod:`portfolio_layers.models`, this module imports the classical
strategies and :class:`~portfolio_layers.models.strategy.E2EPortfolio` directly and holds one
:class:`Entry` per name in :data:`STRATEGIES`. Adding a strategy means adding its entry there (and a test).

A name accepts the keyword-only parameters of its constructor's signature, less the ones its entry fixes and
``name`` (a constructor that takes ``name`` receives the registry name). :func:`build_strategies` builds the
strategies of a :class:`~portfolio_layers.backtest.config.BacktestConfig` from its ``[params.NAME]`` tables
plus the run's :func:`shared_settings` (cap, seed, costs, rebalance step, periods per year), and
:func:`~portfolio_layers.backtest.engine.run_backtest` runs the objects it is handed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from portfolio_layers.backtest.config import BacktestConfig
from portfolio_layers.backtest.strategies import (
    EqualWeight,
    InverseVolatility,
    MeanVariance,
    MinVariance,
    Strategy,
)
from portfolio_layers.errors import ConfigError
from portfolio_layers.models.e2edro import DROPortfolio
from portfolio_layers.models.strategy import E2EPortfolio


@dataclass(frozen=True)
class Entry:
    """How one registry name builds its strategy.

    Attributes
    ----------
    constructor : callable
        Class (or function) with keyword-only parameters that returns a strategy.
    fixed : mapping of str to object
        Keyword arguments fixed by the name (for example the encoder and the loss of a learned strategy);
        they are not parameters of the name.
    """

    constructor: Callable[..., Strategy]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def takes_name(self) -> bool:
        """Whether the constructor takes ``name`` (it then receives the registry name)."""
        return "name" in inspect.signature(self.constructor).parameters

    def parameters(self) -> tuple[str, ...]:
        """The keyword-only parameters of the constructor, less ``name`` and the fixed ones."""
        return tuple(
            p.name
            for p in inspect.signature(self.constructor).parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name != "name" and p.name not in self.fixed
        )


def _learned(encoder: str, loss: str) -> Entry:
    return Entry(E2EPortfolio, MappingProxyType({"encoder": encoder, "loss": loss}))


#: Every strategy name, classical first. ``e2e``: the DEQ encoder trained end to end on the negative Sharpe
#: ratio net of costs; ``e2e_mlp``/``e2e_lstm``: the same with the explicit baseline encoders; ``pto``: the
#: same network trained on the MSE of its forecasts, then the same QP (predict-then-optimize). The E2E-DRO
#: family (:class:`~portfolio_layers.models.e2edro.DROPortfolio`, needs features): ``pto_nominal``
#: (least-squares predictions into the nominal layer), ``e2e_nominal`` and ``e2e_dro`` (Hellinger robust
#: layer), trained end to end; ``e2e_nominal_deq`` and ``e2e_dro_deq`` add a DEQ encoder of the price history
#: to their linear prediction.
STRATEGIES: Mapping[str, Entry] = MappingProxyType(
    {
        "equal_weight": Entry(EqualWeight),
        "inverse_volatility": Entry(InverseVolatility),
        "min_variance": Entry(MinVariance),
        "mean_variance": Entry(MeanVariance),
        "e2e": _learned("deq", "sharpe"),
        "e2e_mlp": _learned("mlp", "sharpe"),
        "e2e_lstm": _learned("lstm", "sharpe"),
        "pto": _learned("deq", "mse"),
        "pto_nominal": Entry(DROPortfolio, MappingProxyType({"layer": "nominal", "end_to_end": False})),
        "e2e_nominal": Entry(DROPortfolio, MappingProxyType({"layer": "nominal", "end_to_end": True})),
        "e2e_dro": Entry(DROPortfolio, MappingProxyType({"layer": "hellinger", "end_to_end": True})),
        "e2e_nominal_deq": Entry(
            DROPortfolio, MappingProxyType({"layer": "nominal", "end_to_end": True, "encoder": "deq"})
        ),
        "e2e_dro_deq": Entry(
            DROPortfolio, MappingProxyType({"layer": "hellinger", "end_to_end": True, "encoder": "deq"})
        ),
    }
)


def available_strategies() -> tuple[str, ...]:
    """Registry names, classical first."""
    return tuple(STRATEGIES)


def _entry(name: str) -> Entry:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}.") from None


def strategy_parameters(name: str) -> tuple[str, ...]:
    """Keyword arguments accepted by the strategy ``name`` (from its constructor's signature)."""
    return _entry(name).parameters()


def make_strategy(name: str, /, **params: Any) -> Strategy:
    """Build a strategy from its registry name.

    Parameters
    ----------
    name : str
        One of :func:`available_strategies`.
    **params
        Keyword arguments of its constructor (for example ``max_weight=0.2``, ``risk_aversion=3.0``,
        ``solver="qp"``, ``epochs=4``); one outside :func:`strategy_parameters` raises :class:`ConfigError`.

    Returns
    -------
    Strategy
    """
    entry = _entry(name)
    accepted = entry.parameters()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        fixed = sorted(set(unknown) & {"name", *entry.fixed})
        note = f" ({', '.join(fixed)} fixed by the strategy name)" if fixed else ""
        raise ConfigError(
            f"strategy {name!r} has no parameter(s) {unknown}{note}; it accepts {sorted(accepted) or 'none'}."
        )
    named = {"name": name} if entry.takes_name() else {}
    return entry.constructor(**named, **entry.fixed, **params)


def shared_settings(config: BacktestConfig, periods_per_year: int | float | None = None) -> dict[str, Any]:
    """The settings of a run handed to every strategy that accepts them, unless its table sets them.

    A learning strategy thus trains with the cap, costs, rebalance step and frequency it is evaluated with.

    Parameters
    ----------
    config : BacktestConfig
        The run.
    periods_per_year : int or float, optional
        The run's resolved periods per year (:func:`~portfolio_layers.backtest.engine.prepare_prices` of its
        prices), for a strategy that annualises; default ``config.periods_per_year`` (None when the config
        leaves it to be inferred from the dates: then it is not passed).
    """
    return {
        "max_weight": config.max_weight,
        "seed": config.seed,
        "cost_bps": config.cost_bps,
        "rebalance": config.rebalance,
        "periods_per_year": config.periods_per_year if periods_per_year is None else periods_per_year,
    }


def strategy_kwargs(
    name: str, config: BacktestConfig, periods_per_year: int | float | None = None
) -> dict[str, Any]:
    """Keyword arguments of strategy ``name`` in the run ``config``.

    Its ``[params.NAME]`` table, plus each :func:`shared_settings` value that is not None, that the strategy
    accepts (a keyword-only parameter of its constructor) and that the table does not set: a constructor
    without such a parameter never receives it.
    """
    params = dict(config.params.get(name, {}))
    accepted = strategy_parameters(name)
    for key, value in shared_settings(config, periods_per_year).items():
        if value is not None and key in accepted:
            params.setdefault(key, value)
    return params


def build_strategy(
    name: str, config: BacktestConfig, periods_per_year: int | float | None = None
) -> Strategy:
    """Strategy ``name`` built with :func:`strategy_kwargs` of ``config`` (and ``periods_per_year``)."""
    return make_strategy(name, **strategy_kwargs(name, config, periods_per_year))


def build_strategies(config: BacktestConfig, periods_per_year: int | float | None = None) -> list[Strategy]:
    """The strategies of ``config.strategies``, in order, built with :func:`build_strategy`.

    Pass ``periods_per_year`` resolved from the run's prices (``prepare_prices(prices, config)[1]``, see
    :func:`~portfolio_layers.backtest.engine.prepare_prices`) so that a strategy that annualises (a learned
    one's training loss) uses the frequency of the data; without it, only an explicit
    ``config.periods_per_year`` is passed.
    """
    return [build_strategy(name, config, periods_per_year) for name in config.strategies]


__all__ = [
    "STRATEGIES",
    "Entry",
    "available_strategies",
    "build_strategies",
    "build_strategy",
    "make_strategy",
    "shared_settings",
    "strategy_kwargs",
    "strategy_parameters",
]
