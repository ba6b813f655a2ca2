"""A raw value (TOML, or an environment string) converted to a setting's annotated type."""

from __future__ import annotations

import contextlib
import types
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any

from collector.config.settings import Secret


def read_secret_file(path: str, where: str, problems: list[str]) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(f"{where}: cannot read file {path!r}: {exc.strerror or exc}")
        return None


def coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Convert a TOML value or an environment string to `tp`; append a problem on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return coerce(value, inner[0], where, problems)
    if tp is Secret:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string")
            return None
        return Secret(value) if value else None
    if origin is tuple:
        items = value
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            problems.append(f"{where}: expected a list of strings")
            return None
        if issubclass(args[0], StrEnum):
            choices = [m.value for m in args[0]]
            bad = [i for i in items if i not in choices]
            problems.extend(f"{where}: {i!r} is not one of {', '.join(choices)}" for i in bad)
            return None if bad else tuple(args[0](i) for i in items)
        return tuple(items)
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        choices = [m.value for m in tp]
        if isinstance(value, str) and value in choices:
            return tp(value)
        problems.append(f"{where}: must be one of {', '.join(choices)}")
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
        problems.append(f"{where}: expected true or false, got {value!r}")
        return None
    if tp is int:
        # Only whole numbers: 2.7 (TOML) or "2.7" (environment) is an error, never truncated.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip())
        problems.append(f"{where}: expected an integer, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value.strip())
        problems.append(f"{where}: expected a number, got {value!r}")
        return None
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
            return None
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in this module, not in the config
