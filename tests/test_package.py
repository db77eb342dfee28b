from __future__ import annotations

import ast
from pathlib import Path

import pytest

import portfolio_layers
from portfolio_layers import errors


def test_version_is_exposed():
    assert portfolio_layers.__version__.count(".") == 2


@pytest.mark.parametrize(
    "cls",
    [errors.ShapeError, errors.DataError, errors.InfeasibleError, errors.ConfigError, errors.LookAheadError],
)
def test_bad_input_errors_are_value_errors(cls):
    assert issubclass(cls, ValueError)
    assert issubclass(cls, errors.PortfolioLayersError)


def test_solver_error_keeps_indices():
    err = errors.ConvergenceError("no", indices=[(0, 2)])
    assert err.indices == ((0, 2),)


# -- the module graph --------------------------------------------------------------------------------------
#
# Nodes are the modules of the package; a package is its ``__init__.py``. Every ``import``/``from``
# statement counts wherever it stands (module level, function bodies, ``if TYPE_CHECKING:`` blocks), because
# a lazy import that closes a circle is still a circle. A statement gives
#
# - an explicit edge to what it names: ``import a.b`` -> ``a.b``; ``from a.b import c`` -> ``a.b.c`` when
#   ``c`` is a module, else ``a.b`` (a name re-exported by the package ``__init__``);
# - implicit edges to the packages above each target, which Python initialises first (``a`` for ``a.b``,
#   and ``a.b`` for ``from a.b import c``), except the packages above the importer itself: those are always
#   initialised, or being initialised, before the importer runs, so such an edge cannot close a real
#   circle. An explicit ``from <own package> import name`` still counts.

PACKAGE_DIR = Path(portfolio_layers.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {
        _module_name(path): (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _import_graph(sources: dict[str, tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    modules = set(sources)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, tree) in sources.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = {*_ancestors(name), name}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
                parents: list[str] = []
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
                parents = [base]
            else:
                continue
            for target in targets:
                if target in modules:
                    graph[name].add(target)
                implicit = {*_ancestors(target), *parents} - own - {target}
                graph[name] |= implicit & modules
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of the directed graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_cycle_finder_on_small_graphs():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"a"}}) == ["a", "a"]


def test_import_graph_sees_lazy_and_package_imports():
    graph = _import_graph(_sources())
    # Lazy imports inside functions are edges (the CLI imports the registry in _backtest).
    assert "portfolio_layers.registry" in graph["portfolio_layers.cli"]
    # Importing a module initialises the packages above it, unless they are the importer's own.
    assert {"portfolio_layers.backtest", "portfolio_layers.models"} <= graph["portfolio_layers.registry"]
    assert "portfolio_layers.backtest" not in graph["portfolio_layers.backtest.engine"]
    assert "portfolio_layers.backtest.engine" in graph["portfolio_layers.backtest"]


def test_no_import_cycle():
    cycle = _find_cycle(_import_graph(_sources()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _identifier(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.alias):
        return node.name
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value  # setattr(f, "__signature__", ...)
    return None


def test_no_dynamic_import_and_no_forged_signature():
    banned = {"import_module", "__import__", "__signature__"}
    found = [
        f"{name}:{node.lineno} {_identifier(node)}"
        for name, (_, tree) in _sources().items()
        for node in ast.walk(tree)
        if _identifier(node) in banned
    ]
    assert not found, found
