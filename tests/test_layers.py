"""The import layering: setup.cfg's import-linter contracts, no cycles, lazy imports only
for optional dependencies (see ``tests/layering.py``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from layering import (
    OPTIONAL_DEPENDENCIES,
    _local_imports,
    build_installed_tree,
    function_local_imports,
    run_contracts,
)

pytest.importorskip("importlinter", reason="import-linter is in the dev extra")

#: Prints the module graph of the ``teachgym`` found first on sys.path (run in the tree).
GRAPH = (
    "import grimp, json\n"
    "g = grimp.build_graph('teachgym', cache_dir=None)\n"
    "print(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}))\n"
)


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(graph.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_cycles_finds_a_cycle() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": []}) == []


@pytest.mark.slow
def test_the_import_contracts_are_kept(tmp_path: Path) -> None:
    done = run_contracts(build_installed_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.slow
def test_a_broken_layer_breaks_the_contracts(tmp_path: Path) -> None:
    tree = build_installed_tree(tmp_path)
    tasks_base = tree / "teachgym" / "envs" / "tasks" / "base.py"
    tasks_base.write_text(
        tasks_base.read_text() + "\nfrom teachgym.agents.policies import common  # noqa\n"
    )
    skills = tree / "teachgym" / "envs" / "skills.py"
    skills.write_text(skills.read_text() + "\ndef _f():\n    import ray  # noqa\n")
    done = run_contracts(tree)
    assert done.returncode != 0
    for broken in ("Layers", "import no ray", "Tasks import no agents"):
        assert f"{broken}" in done.stdout and "BROKEN" in done.stdout, done.stdout


@pytest.mark.slow
def test_no_module_imports_itself_through_a_cycle(tmp_path: Path) -> None:
    tree = build_installed_tree(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", GRAPH], cwd=tree, capture_output=True, text=True, check=True
    )
    graph = json.loads(out.stdout)
    assert "teachgym.envs.base" in graph and "teachgym.text_formats" in graph  # the whole tree
    assert cycles(graph) == []


def test_function_local_imports_are_of_optional_dependencies_only() -> None:
    found = function_local_imports()
    assert found, "the scan finds the optional imports there are"
    others = [f"{path}:{line}: {module}" for path, line, module in found]
    others = [
        o for o, (_, _, m) in zip(others, found, strict=True) if m not in OPTIONAL_DEPENDENCIES
    ]
    assert others == [], "import these at module level (or add an optional dependency):\n" + (
        "\n".join(others)
    )


def test_the_scan_sees_imports_in_functions_methods_and_lambdas() -> None:
    code = (
        "import os\n"
        "def f():\n    import torch\n"
        "class C:\n    def m(self):\n        from .x import y\n"
        "g = lambda: __import__('z')\n"
        "async def h():\n    def inner():\n        from ray import tune\n"
    )
    found = _local_imports(ast.parse(code), "m.py")
    assert [(line, module) for _, line, module in found] == [
        (3, "torch"),
        (6, "teachgym"),
        (10, "ray"),
    ]
