"""The composition root: every name builds, parameters come from the real constructors, settings flow."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from portfolio_layers import registry
from portfolio_layers.backtest import BacktestConfig, Strategy
from portfolio_layers.backtest.strategies import EqualWeight, MeanVariance
from portfolio_layers.errors import ConfigError
from portfolio_layers.models.strategy import E2EPortfolio
from portfolio_layers.registry import (
    STRATEGIES,
    Entry,
    available_strategies,
    build_strategies,
    make_strategy,
    shared_settings,
    strategy_kwargs,
    strategy_parameters,
)

LEARNED = {
    "e2e": ("deq", "sharpe"),
    "e2e_mlp": ("mlp", "sharpe"),
    "e2e_lstm": ("lstm", "sharpe"),
    "pto": ("deq", "mse"),
}


def _keyword_only(constructor) -> set[str]:
    return {p.name for p in inspect.signature(constructor).parameters.values() if p.kind == p.KEYWORD_ONLY}


@pytest.mark.parametrize("name", available_strategies())
def test_every_name_builds_a_strategy_of_that_name(name):
    strategy = make_strategy(name)
    assert isinstance(strategy, Strategy) and strategy.name == name
    assert isinstance(strategy, STRATEGIES[name].constructor)


def test_learned_names_fix_encoder_and_loss():
    assert set(LEARNED) <= set(available_strategies())
    for name, (encoder, loss) in LEARNED.items():
        assert dict(STRATEGIES[name].fixed) == {"encoder": encoder, "loss": loss}
        strategy = make_strategy(name, d_model=4)
        assert strategy.encoder == encoder and strategy.d_model == 4


class Recorder:
    """A constructor that keeps its keyword arguments."""

    def __init__(self, *, name: str = "?", flavour: str = "plain", size: int = 1) -> None:
        self.name, self.flavour, self.size = name, flavour, size

    def fit(self, prices):
        pass

    def weights(self, prices, current):
        return current


def test_an_entry_passes_its_name_and_fixed_keywords(monkeypatch):
    monkeypatch.setattr(registry, "STRATEGIES", {**STRATEGIES, "spicy": Entry(Recorder, {"flavour": "hot"})})
    assert strategy_parameters("spicy") == ("size",)
    built = make_strategy("spicy", size=3)
    assert (built.name, built.flavour, built.size) == ("spicy", "hot", 3)
    with pytest.raises(ConfigError, match=r"\['flavour'\] \(flavour fixed by the strategy name\)"):
        make_strategy("spicy", flavour="mild")


def test_parameters_come_from_the_constructor_signature():
    assert strategy_parameters("equal_weight") == ("max_weight",)
    assert set(strategy_parameters("mean_variance")) == _keyword_only(MeanVariance)
    assert set(strategy_parameters("e2e")) == _keyword_only(E2EPortfolio) - {"name", "encoder", "loss"}
    assert Entry(EqualWeight).parameters() == ("max_weight",) and not Entry(EqualWeight).takes_name()


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; available: ") as info:
        make_strategy("nope")
    assert all(name in str(info.value) for name in available_strategies())
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        strategy_parameters("nope")


def test_unknown_parameter_names_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"'min_variance' has no parameter\(s\) \['gamma'\]") as info:
        make_strategy("min_variance", gamma=1.0)
    assert "['max_weight', 'solver']" in str(info.value)
    with pytest.raises(ConfigError, match=r"\['encoder'\] \(encoder fixed by the strategy name\)"):
        make_strategy("e2e", encoder="mlp")
    with pytest.raises(ConfigError, match=r"\['name'\] \(name fixed by the strategy name\)"):
        make_strategy("pto", name="other")


def test_the_params_filter_keeps_the_tables_of_the_strategies_run():
    config = BacktestConfig(
        strategies=("equal_weight", "mean_variance", "min_variance"),
        params={"mean_variance": {"risk_aversion": 2.0}, "min_variance": {"solver": "qp"}},
    )
    assert config.with_strategies(config.strategies) is config
    kept = config.with_strategies(["mean_variance", "equal_weight"])
    assert kept.strategies == ("mean_variance", "equal_weight")
    assert kept.params == {"mean_variance": {"risk_aversion": 2.0}}
    assert config.with_strategies(iter(["equal_weight"])).params == {}


def test_shared_settings_flow_from_the_config_unless_the_table_sets_them():
    assert set(shared_settings(BacktestConfig())) <= {f.name for f in dataclasses.fields(BacktestConfig)}
    config = BacktestConfig(
        strategies=("equal_weight", "mean_variance", "e2e"),
        max_weight=0.3,
        seed=7,
        cost_bps=20.0,
        rebalance=5,
        params={"mean_variance": {"max_weight": 0.5}, "e2e": {"seed": 1, "d_model": 4}},
    )
    assert strategy_kwargs("equal_weight", config) == {"max_weight": 0.3}  # no seed: it takes none
    assert strategy_kwargs("mean_variance", config) == {"max_weight": 0.5}
    assert strategy_kwargs("e2e", config) == {
        "seed": 1,
        "d_model": 4,
        "max_weight": 0.3,
        "cost_bps": 20.0,
        "rebalance": 5,
    }
    equal, mean_var, e2e = build_strategies(config)
    assert [s.name for s in (equal, mean_var, e2e)] == list(config.strategies)
    assert equal.max_weight == 0.3 and mean_var.max_weight == 0.5
    assert (e2e.max_weight, e2e.rebalance, e2e.d_model) == (0.3, 5, 4)
    # A setting that is None (no cap) is not passed: the constructor's default applies.
    uncapped = dataclasses.replace(config, max_weight=None)
    assert "max_weight" not in strategy_kwargs("equal_weight", uncapped)
