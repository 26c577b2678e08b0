"""The shape of ``src/modelpull``: no import cycles between its modules, no module too long.

Imports are read with :mod:`ast`, never executed: module-level imports and imports inside
functions both count (a cycle that only closes when a function runs is still a cycle);
imports under ``if TYPE_CHECKING:`` do not, as they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src"
PACKAGE = SRC / "modelpull"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its ``__init__``)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements anywhere under ``node``, leaving out ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports_of(other)
            continue
        yield from _imports_of(child)


def _imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _imports(node)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        for alias in node.names:
            # ``from a import b`` imports the submodule a.b when there is one, else a.
            submodule = f"{source}.{alias.name}"
            found.add(submodule if submodule in known else source)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for each group of modules that import each other.

    Tarjan's strongly connected components; a cycle is then found inside each one.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``group`` (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle in {sorted(group)}")  # a component always has one


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in src/modelpull:\n" + "\n".join(
        " -> ".join(cycle) for cycle in found
    )


def line_counts() -> dict[str, int]:
    """Lines of each module, by its path under ``src`` (``modelpull/engine.py``)."""
    return {
        path.relative_to(SRC).as_posix(): len(path.read_text().splitlines())
        for path in modules().values()
    }


def test_no_module_over_500_lines() -> None:
    too_long = {name: lines for name, lines in line_counts().items() if lines > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


# -- the checks check what they claim ----------------------------------------------------


def _graph_of(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    paths = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in tmp_path.rglob("*.py")
    }
    return {name: imported(name, path, set(paths)) for name, path in paths.items()}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # module level, both ways
        ({"p/__init__.py": "", "p/a.py": "import p.b", "p/b.py": "from p import a"}, True),
        # inside a function still counts
        (
            {
                "p/__init__.py": "",
                "p/a.py": "from p.b import f",
                "p/b.py": "def f():\n    from . import a\n",
            },
            True,
        ),
        # under TYPE_CHECKING it does not; its else branch does
        (
            {
                "p/__init__.py": "",
                "p/a.py": "from p.b import f",
                "p/b.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from p import a\n",
            },
            False,
        ),
        (
            {
                "p/__init__.py": "",
                "p/a.py": "from p.b import f",
                "p/b.py": "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n"
                "    from .a import g\n",
            },
            True,
        ),
        # relative imports from a subpackage
        (
            {
                "p/__init__.py": "",
                "p/s/__init__.py": "from .x import y",
                "p/s/x.py": "from ..t import z",
                "p/t.py": "from p.s import x",
            },
            True,
        ),
        ({"p/__init__.py": "", "p/a.py": "import p.b", "p/b.py": "import os"}, False),
    ],
)
def test_cycles_are_found_as_specified(
    tmp_path: Path, files: dict[str, str], expected: bool
) -> None:
    found = cycles(_graph_of(tmp_path, files))
    assert bool(found) is expected, found
    for cycle in found:
        assert cycle[0] == cycle[-1] and len(cycle) > 2
