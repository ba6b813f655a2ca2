"""Errors the collector raises on purpose.

CollectorError
├── ConfigError (+ ValueError)      bad configuration: exit at start with every problem listed
├── MalformedPayload (+ ValueError) bad frame or row: dead-lettered, never fatal
└── MigrationError                  a migration file failed: names the file
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base class of every error the collector raises on purpose."""


class ConfigError(CollectorError, ValueError):
    """The configuration is invalid; `problems` lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}"


class MalformedPayload(CollectorError, ValueError):
    """A payload does not have the documented shape; `field` names the first bad field."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(reason, field)

    def __str__(self) -> str:
        return f"{self.reason} (field {self.field!r})" if self.field else self.reason


class MigrationError(CollectorError):
    """A migration could not be applied; `name` is the file."""

    def __init__(self, name: str, cause: BaseException) -> None:
        self.name = name
        self.cause = cause
        super().__init__(name, cause)

    def __str__(self) -> str:
        return f"migration {self.name} failed: {self.cause}"
