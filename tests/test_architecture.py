"""The floor plan (docs/architecture.md), as the import graph shows it: no circles, and every
import runs down the floors, never up or sideways between sources and the sink.

Read from the source with `ast`, type-only imports included: a circle through a
`TYPE_CHECKING` import is still a circle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "collector"

# Top to bottom. A module may import from its own floor (its own package) and from the floors
# below it. The emulator stands beside the daemon (tests/emulator/test_seam.py pins that only
# `collector simulate` reaches it).
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry", ("collector.__main__", "collector.cli", "collector.sql", "collector.files")),
    (
        "lifecycle",
        (
            "collector.supervisor",
            "collector.runtime",
            "collector.components",
            "collector.readiness",
            "collector.health",
            "collector.signals",
        ),
    ),
    ("out", ("collector.out",)),
    ("sources", ("collector.sources", "collector.rest")),
    ("sink", ("collector.sink",)),
    ("database", ("collector.db",)),
    (
        "base",
        (
            "collector",
            "collector.config",
            "collector.model",
            "collector.venues",
            "collector.wire",
            "collector.retry",
            "collector.metrics",
            "collector.logs",
            "collector.exceptions",
        ),
    ),
)
# Sources and the sink sit side by side in the flow (sources -> `model.Sink` -> writer): neither
# imports the other; the supervisor hands the writer to the sources as a Sink.
SIDEWAYS = {("sources", "sink"), ("sink", "sources")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collector_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if PACKAGE / "emulator" not in path.parents
    }


def imported(path: Path, modules: set[str]) -> set[str]:
    """The collector modules `path` imports: `from collector.x import y` counts as
    collector.x.y when that is a module, else collector.x."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if child in modules:
                    found.add(child)
                elif node.module in modules:
                    found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = collector_modules()
    names = set(modules)
    return {name: imported(path, names) - {name} for name, path in modules.items()}


def floor_of(module: str) -> str:
    """The floor whose prefix is the longest match for `module`."""
    best, length = "", -1
    for floor, prefixes in FLOORS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = floor, len(prefix)
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_floor() -> None:
    assert [m for m in sorted(collector_modules()) if not floor_of(m)] == []


def test_the_import_graph_has_no_circles() -> None:
    assert cycles(graph()) == []


def against_the_flow(edges: dict[str, set[str]]) -> list[tuple[str, str, str]]:
    """(module, what it imports, floor -> floor) for every import up or sideways."""
    rank = {floor: n for n, (floor, _) in enumerate(FLOORS)}
    return sorted(
        (module, target, f"{floor_of(module)} -> {floor_of(target)}")
        for module, targets in edges.items()
        for target in targets
        if rank[floor_of(target)] < rank[floor_of(module)]
        or (floor_of(module), floor_of(target)) in SIDEWAYS
    )


def test_imports_run_down_the_floors() -> None:
    assert against_the_flow(graph()) == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_the_circle_finder_finds_circles(
    edges: dict[str, set[str]], expected: list[list[str]]
) -> None:
    """The check above cannot pass by finding nothing."""
    assert cycles(edges) == expected


def test_the_floor_check_sees_imports_against_the_flow() -> None:
    """The check above cannot pass by looking at nothing: a source importing the writer (the
    old binance_ws), the sink re-parsing with a source (the old spill) and the database
    package importing the supervisor are each reported; the flow's own direction is not."""
    edges = {
        "collector.sources.binance_ws": {"collector.sink.writer", "collector.model"},
        "collector.sink.spill": {"collector.sources.binance_parse"},
        "collector.db.rollup": {"collector.supervisor", "collector.retry"},
        "collector.supervisor": {"collector.sink.writer", "collector.sources.binance_ws"},
    }
    assert against_the_flow(edges) == [
        ("collector.db.rollup", "collector.supervisor", "database -> lifecycle"),
        ("collector.sink.spill", "collector.sources.binance_parse", "sink -> sources"),
        ("collector.sources.binance_ws", "collector.sink.writer", "sources -> sink"),
    ]
