"""Seeds, grid files and the tasks a study expands to (no run)."""

from __future__ import annotations

import pytest
from study_helpers import SMALL

from portfolio_layers.errors import ConfigError
from portfolio_layers.study.spec import GridPoint, parse_seeds, plan_tasks, read_grid


def test_parse_seeds_ranges_and_lists():
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("0,2,5") == (0, 2, 5)
    assert parse_seeds(" 3 , 0-1 ") == (3, 0, 1)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("a", "not a seed"),
        ("4-2", "go up"),
        ("-1", "not a seed"),
        ("0-2,1", "twice"),
        ("1.5", "not a seed"),
    ],
)
def test_parse_seeds_refuses(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_seeds(text)


def test_read_grid_expands_each_strategy_on_its_own(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        "[grid.e2e]\nd_model = [4, 8]\n\n[grid.e2e.train]\nlr = [0.001, 0.003]\n\n"
        "[grid.pto]\nn_factors = [2]\n"
    )
    grid = read_grid(path)
    assert grid["pto"] == [{"n_factors": 2}]
    assert grid["e2e"] == [
        {"d_model": 4, "train": {"lr": 0.001}},
        {"d_model": 4, "train": {"lr": 0.003}},
        {"d_model": 8, "train": {"lr": 0.001}},
        {"d_model": 8, "train": {"lr": 0.003}},
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("d_model = [4]\n", "grid.<strategy>"),
        ("[grid.e2e]\nd_model = 4\n", "non-empty list"),
        ("[grid.e2e]\nd_model = []\n", "non-empty list"),
        ("[grid.e2e\n", "not valid TOML"),
    ],
)
def test_read_grid_refuses(tmp_path, text, words):
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        read_grid(path)


def test_tasks_run_ids_and_configs():
    grid = {"e2e": [{"d_model": 8}, {"d_model": 4, "train": {"lr": 0.001}}]}
    tasks = plan_tasks(SMALL, [0, 3], grid)
    ids = [t.run_id for t in tasks]
    point = GridPoint("e2e", {"d_model": 8}).id
    assert ids[:2] == ["equal_weight-seed0", "equal_weight-seed3"]
    assert f"e2e-{point}-seed3" in ids and len(ids) == 6 and len(set(ids)) == 6
    task = next(t for t in tasks if t.run_id == f"e2e-{point}-seed3")
    assert task.config.seed == 3 and task.config.strategies == ("e2e",)
    # the point's values replace keys of the config's table, nested tables key by key
    assert task.config.params["e2e"] == {"d_model": 8, "window": 20, "cov_window": 60}
    nested = tasks[-1].config.params["e2e"]
    assert nested["train"] == {"lr": 0.001} and nested["window"] == 20
    # the id hashes the values, not their order in the file
    assert GridPoint("e2e", {"b": 1, "a": 2}).id == GridPoint("e2e", {"a": 2, "b": 1}).id
    assert plan_tasks(SMALL, [0, 3], grid) == tasks


@pytest.mark.parametrize(
    ("grid", "words"),
    [
        ({"pto": [{"d_model": 4}]}, "does not run"),
        ({"equal_weight": [{"max_weight": 0.5}]}, "benchmark"),
        ({"e2e": [{"no_such_parameter": 1}]}, "no parameter"),
        ({"e2e": [{"d_model": 4}, {"d_model": 4}]}, "twice"),
    ],
)
def test_plan_refuses_bad_grids(grid, words):
    with pytest.raises(ConfigError, match=words):
        plan_tasks(SMALL, [0], grid)
