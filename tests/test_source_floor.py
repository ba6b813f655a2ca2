"""The sources floor imports downward only: nothing from the supervisor, the CLI or the sink."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "collector"
# issue 13: the database-error classifiers still come from the writer until the unified ones in
# collector.retry land; the integrator deletes these entries with those two import lines.
PENDING = {
    ("rest/pollers.py", "collector.sink.writer", "is_transient"),
    ("rest/store.py", "collector.sink.writer", "is_data_error"),
}
ABOVE = ("collector.supervisor", "collector.cli", "collector.sink")


def imports(path: Path) -> set[tuple[str, str]]:
    """(module, name) for every import in `path`, type-only ones included."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found |= {(node.module, alias.name) for alias in node.names}
    return found


def test_sources_and_rest_import_nothing_from_the_floors_above() -> None:
    """No module of `collector/sources` or `collector/rest` imports the supervisor, the CLI or
    the sink: sources put into the `model.Sink` protocol."""
    upward = sorted(
        (str(path.relative_to(PACKAGE)), module, name)
        for floor in ("sources", "rest")
        for path in sorted((PACKAGE / floor).glob("*.py"))
        for module, name in imports(path)
        if module in ABOVE or module.startswith(tuple(f"{m}." for m in ABOVE))
    )
    assert set(upward) == PENDING
