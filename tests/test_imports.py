"""The package's import graph has no cycle, counting every import (function-local ones included).

Imports flow one way: data and models at the bottom, the walk above them, then the policy adapter,
pretraining and the envs, then SB3, export and the benchmark, the command line on top. A cycle hidden
by a function-local import still ties two floors together, so every ``import`` / ``from ... import``
anywhere in a module counts here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dyncnn_gym

PACKAGE = Path(dyncnn_gym.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module ``from ... import`` names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (anywhere in its source), over ``dyncnn_gym.*``."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                # "from pkg import name": name may be a submodule of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # "a.b.c" where c is an attribute of module a.b
                    target = target.rpartition(".")[0]
                if target and target != module and target.split(".")[0] == "dyncnn_gym":
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first repeated last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "dyncnn_gym.walk" in graph["dyncnn_gym.envs.core"]  # "from ..walk import Walk"
    assert "dyncnn_gym.models.base" in graph["dyncnn_gym.walk"]  # "from .models.base import ..."
    assert "dyncnn_gym.envs.probes" in graph["dyncnn_gym.routed"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_policy_adapter_sits_low():
    """``policies`` is used by every face, so it imports none of them."""
    deps = import_graph()["dyncnn_gym.policies"]
    assert not {d for d in deps if d.startswith(("dyncnn_gym.benchmark", "dyncnn_gym.envs", "dyncnn_gym.callbacks"))}
