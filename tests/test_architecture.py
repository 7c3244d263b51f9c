"""The package rules of docs/DEVELOPING.md, checked on the source: no import of the CLI from the library, no
import cycles, no module over 500 lines, hooks registered only in hooks.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "convlens"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """convlens modules imported by ``path`` (module level only: what runs at import time, outside
    ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()

    def visit(nodes, top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("convlens"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                if base.startswith("convlens"):
                    for alias in node.names:
                        full = f"{base}.{alias.name}"
                        found.add(full if full in MODULES else base)
            if not module_level_only or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
                visit(children, False)

    visit(tree.body, True)
    return {name for name in found if name in MODULES}


def test_library_never_imports_the_cli():
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("convlens.cli"):
            continue
        bad = sorted(i for i in _imports(path, module_level_only=False) if i.startswith("convlens.cli"))
        if bad:
            offenders.append(f"{name} imports {bad}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles():
    graph = {name: {i for i in _imports(path, module_level_only=True) if i != name}
             for name, path in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name in graph:
        graph[name] = {i for i in graph[name] if not (i.startswith(name + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            # importing a.b.c first imports its parents a.b and a
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (at most {MAX_LINES})"


def test_hooks_only_through_hooks_module():
    offenders = []
    for name, path in MODULES.items():
        if name == "convlens.hooks":
            continue
        text = path.read_text()
        for call in ("register_forward_hook(", "register_forward_pre_hook(", "register_full_backward_hook(",
                     "register_backward_hook("):
            if call in text:
                offenders.append(f"{name}: {call}")
    assert not offenders, "\n".join(offenders)
