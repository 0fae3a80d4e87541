"""No import cycles in the package: every import, lazy ones inside functions included, points one way. And the
layers (docs/architecture.md) import only downwards: reports read result files and never import the harness.

Imports under `if TYPE_CHECKING:` are left out of the cycle check (they never run), not out of the layer check
(a layer that names another's types depends on it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "peftplan"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str], *, typing: bool = False) -> set[str]:
    """The package's modules that `name` imports; with `typing`, those under `if TYPE_CHECKING:` too."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not typing:
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])
            for field in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, field, None)
                if isinstance(block, list):
                    visit([b for b in block if isinstance(b, ast.stmt)])

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return components


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_the_package_has_no_import_cycles() -> None:
    paths = _modules()
    graph = {name: _imports(path, name, set(paths)) for name, path in paths.items()}
    assert len(graph) > 100  # the whole package was read
    assert _cycles(graph) == []


def _within(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


# (layer, the layers above it that it must not import)
LAYERS = [
    ("peftplan.reports", ["peftplan.harness"]),
    ("peftplan.replay", ["peftplan.methods", "peftplan.planner", "peftplan.harness"]),
    ("peftplan.methods", ["peftplan.planner", "peftplan.harness", "peftplan.commands"]),
]


@pytest.mark.parametrize(("layer", "above"), LAYERS, ids=[layer for layer, _ in LAYERS])
def test_a_layer_imports_nothing_above_it(layer: str, above: list[str]) -> None:
    paths = _modules()
    mine = {name: path for name, path in paths.items() if _within(name, layer)}
    assert mine  # the layer exists
    wrong = sorted(f"{name} imports {target}" for name, path in mine.items()
                   for target in _imports(path, name, set(paths), typing=True)
                   if any(_within(target, upper) for upper in above))
    assert wrong == []


def test_the_layer_check_sees_a_lazy_and_a_typing_import(tmp_path: Path) -> None:
    module = tmp_path / "advice.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from peftplan.harness import results\n"
                      "def f():\n    from ..harness.stats import separated\n")
    found = _imports(module, "peftplan.reports.advice", {"peftplan.harness", "peftplan.harness.results",
                                                         "peftplan.harness.stats"}, typing=True)
    assert found == {"peftplan.harness", "peftplan.harness.results", "peftplan.harness.stats"}
    assert _imports(module, "peftplan.reports.advice", {"peftplan.harness.results"}) == set()


def test_the_checker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
