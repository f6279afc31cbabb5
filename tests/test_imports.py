"""The import graph of ``src/``: no cycles, and the library never imports the benchmarks.

Imports under ``if TYPE_CHECKING:`` are not executed and are left out; imports inside
functions count (they run when the function does).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("trvae", "trvae_benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The project modules that ``tree`` imports at run time (``from a import b``: ``a.b`` when
    that is a module, else ``a``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        targets = _imports(ast.parse(path.read_text()), modules)
        # importing a.b.c runs a/__init__ and a/b/__init__ as well
        graph[name] = {m for t in targets for m in _with_parents(t) if m in modules} - {name}
    return graph


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a package's ``__init__`` importing its own submodules
    is not a cycle: Python runs it first), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def edges(node: str) -> set[str]:
        return {t for t in graph[node] if not node.startswith(t + ".")}

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges(node)):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, find_cycle(import_graph())


def test_library_never_imports_the_benchmarks():
    offenders = {
        name: sorted(t for t in targets if t.startswith("trvae_benchmarks"))
        for name, targets in import_graph().items()
        if name.split(".")[0] == "trvae"
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_cycle_finder_finds_a_cycle():
    graph = {"trvae.a": {"trvae.b"}, "trvae.b": {"trvae.c"}, "trvae.c": {"trvae.a"}}
    assert find_cycle(graph) == ["trvae.a", "trvae.b", "trvae.c", "trvae.a"]
    assert find_cycle({"trvae.a": {"trvae.b"}, "trvae.b": set()}) is None


def test_parser_sees_function_level_imports_and_skips_type_checking():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import trvae_benchmarks.kang\n"
        "def f():\n    from trvae_benchmarks import cli\n"
    )
    assert _imports(tree, {"trvae_benchmarks.cli"}) == {"trvae_benchmarks.cli"}
