"""The seam between the collector and its Binance emulator: the runtime never imports the
emulator (the wheel and the image leave it out), and the `emulator` extra names every
distribution the emulator imports."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "collector"
EMULATOR = PACKAGE / "emulator"


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports are not used here)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_outside_the_emulator_imports_it_but_the_simulate_command() -> None:
    """Only `collector simulate` (cli.py, which says so when it is missing) reaches into
    collector.emulator; the daemon runs without it."""
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if EMULATOR not in path.parents
        and any(name.split(".")[:2] == ["collector", "emulator"] for name in imports(path))
    )
    assert importers == ["collector/cli.py"]


def test_the_emulator_extra_names_every_distribution_the_emulator_imports() -> None:
    """Third-party imports of collector/emulator/*.py, by distribution, are exactly the
    `emulator` extra of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = {Requirement(r).name for r in project["optional-dependencies"]["emulator"]}
    top_level = {
        name.split(".")[0] for path in EMULATOR.rglob("*.py") for name in imports(path)
    } - {"collector"}
    third_party = top_level - set(sys.stdlib_module_names)
    owners = packages_distributions()
    assert {dist for module in third_party for dist in owners[module]} == extra
    assert "dev" in project["optional-dependencies"]
    assert "collector[emulator]" in project["optional-dependencies"]["dev"]
