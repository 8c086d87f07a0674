"""The layout's rules, checked on the source: no import cycle between modules (lazy imports inside functions
count too), no function longer than 100 lines, data flowing one way between the folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "harmonizing_flows"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


MODULES = _modules()


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in it (``from pkg import module`` included)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harmonizing_flows"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("harmonizing_flows"))
    out.discard(name)
    return {m for m in out if m in MODULES}


def _package_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_no_module_imports_itself_through_others():
    graph = {name: _imports(name, tree) for name, tree in MODULES.items()}
    # a package's __init__ imports its own modules; that is not a cycle of concepts
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name)


def test_data_and_method_never_import_evaluation():
    # data -> method -> evaluation: the tool that ships must not need what only evaluates it
    for name, tree in MODULES.items():
        if _package_of(name) in ("data", "method") or name.endswith((".harmonize", ".cli")):
            evaluation = {m for m in _imports(name, tree) if _package_of(m) == "evaluation"}
            if name.endswith(".cli"):
                continue  # the CLI runs the evaluation commands, importing them inside those commands
            assert not evaluation, f"{name} imports {evaluation}"
        if _package_of(name) == "data":
            method = {m for m in _imports(name, tree) if _package_of(m) == "method"}
            assert not method, f"{name} imports {method}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_is_longer_than_100_lines(name):
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(MODULES[name])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100
    ]
    assert not long, f"{name}: {', '.join(long)}"
