"""The module boundaries docs/architecture.md promises: no import cycle inside `integrations/`
or between it and `portal/`, and the domain never imports the project's plumbing (only
`portal` → `integrations`). Imports inside functions count too: a cycle hidden in a function
is still a cycle for whoever reads the code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_graph() -> dict[str, set[str]]:
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for package in ("integrations", "portal")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_there_is_no_import_cycle_in_integrations_or_portal() -> None:
    assert cycles(import_graph()) == []


def test_the_domain_does_not_import_the_project_plumbing() -> None:
    graph = import_graph()
    crossing = {
        (module, target)
        for module, targets in graph.items()
        if module.startswith("integrations")
        for target in targets
        if target.startswith("portal")
    }
    assert crossing == set()


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The oracle itself: a planted three-module cycle is reported."""
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]]


def test_the_graph_sees_relative_and_function_level_imports() -> None:
    graph = import_graph()
    assert "integrations.mirror" in graph["integrations.sync"]  # `from . import mirror`
    assert "integrations.profiles" in graph["integrations.tokens"]  # inside client_for()
