"""The package's shape: layers that import downwards only, no import cycle, main() only in psfh.cli.

Every ``import`` of a psfh module is read from the source (also those inside functions), so a
lazy import cannot hide a cycle. The layers, lowest first, are :data:`LAYERS`; the top-level
modules that are not packages (``psfh.predict``, ...) only forward ``python -m psfh.NAME`` to
psfh.cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "psfh"
# Lowest first: a module may import its own layer and the layers before it, never a later one.
LAYERS = ("core", "io", "measure", "model", "training", "render", "batch", "serve", "cli")
COMMAND_ALIASES = ("benchmark", "cine", "convert", "data", "evaluate", "export", "predict")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def psfh_imports(path: Path, modules: set[str]) -> set[str]:
    """The psfh modules ``path`` imports, anywhere in the file (``from psfh.x import y`` counts
    as psfh.x.y when that is a module, else as psfh.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("psfh"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("psfh") and not node.level:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: psfh_imports(path, set(paths)) - {name} for name, path in paths.items()}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_sits_in_a_layer_or_forwards_a_command():
    for module in import_graph():
        assert layer(module) or module == "psfh" or module.removeprefix("psfh.") in COMMAND_ALIASES, module


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if layer(module) and layer(target) and LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                upward.append(f"{module} -> {target}")
    assert upward == []


@pytest.mark.parametrize("alias", COMMAND_ALIASES)
def test_command_aliases_only_forward_to_the_cli(alias):
    imports = import_graph()[f"psfh.{alias}"]
    assert imports and all(layer(target) == "cli" for target in imports)


def test_main_lives_in_the_cli_only():
    with_main = []
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        defines_main = any(isinstance(node, ast.FunctionDef) and node.name == "main"
                           for node in ast.parse(path.read_text()).body)
        if defines_main and layer(module) != "cli":
            with_main.append(module)
    assert with_main == []
