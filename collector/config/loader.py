"""Reading the settings: defaults < TOML file < environment, one reader for every section.

`Config`'s fields say what there is to read: a dataclass field is a section (`[name]`), a tuple
of dataclasses a list of tables (`[[name]]`, TOML only), any other field a top-level setting.
Every field of each is read from its source, converted to its annotated type, normalised by its
`convert` and checked against its `rule` (`collector.config.settings`); then each section's and
table's `validate()` runs. Every problem is collected and `load_config` raises one `ConfigError`
listing them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from collector.config.coerce import coerce, read_secret_file
from collector.config.sections import Config
from collector.config.settings import Rule
from collector.exceptions import ConfigError

ENV_PREFIX = "COLLECTOR_"
_HINTS = typing.get_type_hints(Config)
_SECTIONS: dict[str, type[Any]] = {
    name: tp for name, tp in _HINTS.items() if isinstance(tp, type) and dataclasses.is_dataclass(tp)
}
_TABLES: dict[str, type[Any]] = {
    name: typing.get_args(tp)[0] for name, tp in _HINTS.items() if typing.get_origin(tp) is tuple
}
_TOP_LEVEL = tuple(name for name in _HINTS if name not in _SECTIONS and name not in _TABLES)
# The sections whose validate() runs first, in the order their messages have always come.
_VALIDATE_FIRST = ("binance", "writer", "rest", "database", "bybit", "okx", "http", "feed")
# A value that could not be read; its problem is already reported.
_REPORTED: Any = object()
Read = Callable[[str], tuple[Any, str]]  # a key -> its raw value (or MISSING) and its origin


def _read(
    cls: type[Any],
    read: Read,
    label: str | None,
    problems: list[str],
    rules: list[str],
    names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The values of `cls`'s fields (`names`, default all) that `read` sets, each converted to
    its type; its problem otherwise (the default then stays). Every field's value, set or
    default, is checked against its rule, which appends to `rules` naming it `<label> <key>`.
    Credentials come last, after the settings that name them."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if names is None or f.name in names]
    values: dict[str, Any] = {}
    for f in sorted(fields, key=lambda f: bool(f.metadata.get("credential"))):
        raw, where = read(f.name)
        if raw is dataclasses.MISSING and f.default is dataclasses.MISSING:
            raw = None  # required: its type's problem says what it must be
        if raw is not dataclasses.MISSING and raw is not _REPORTED:
            before = len(problems)
            value = coerce(raw, hints[f.name], where, problems)
            convert = f.metadata.get("convert")
            if convert is not None and value is not None:
                value = convert(value, problems)
            if len(problems) == before:
                values[f.name] = value
        rule: Rule | None = f.metadata.get("rule")
        value = values.get(f.name, f.default)
        problem = rule.problem(value) if rule and value is not dataclasses.MISSING else None
        if problem:
            rules.append(f"{label} {f.name}: {problem}" if label else f"{f.name}: {problem}")
    return values


def _env_name(section: str | None, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}" if section else ENV_PREFIX + key.upper()


def _settings(
    toml: Mapping[str, Any], section: str | None, environ: Mapping[str, str], problems: list[str]
) -> Read:
    """A `Read` of a section (or the top level): the environment variable wins over its `_FILE`
    variant, which wins over the TOML file."""

    def read(key: str) -> tuple[Any, str]:
        env = _env_name(section, key)
        raw, where = toml.get(key, dataclasses.MISSING), f"[{section}] {key}" if section else key
        if env + "_FILE" in environ:
            where = f"{env}_FILE"
            raw = read_secret_file(environ[where], where, problems)
            raw = dataclasses.MISSING if raw is None else raw
        return (environ[env], env) if env in environ else (raw, where)

    return read


def _unknown(
    table: Mapping[str, Any], known: set[str], where: str, problems: list[str], retired: Any = ()
) -> None:
    """Report each key of `table` that is no setting (nor a `retired` one, accepted and ignored)."""
    problems.extend(
        f"{where} {key}: unknown setting (known: {', '.join(sorted(known))})"
        for key in table
        if key not in known and key not in retired
    )


def _section(
    name: str,
    data: Mapping[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
    rules: list[str],
) -> Any:
    """Section `name` from its TOML table and the environment."""
    cls, table = _SECTIONS[name], data.get(name, {})
    if not isinstance(table, dict):
        problems.append(f"[{name}]: expected a table")
        table = {}
    known = {f.name for f in dataclasses.fields(cls)}
    _unknown(table, known, f"[{name}]", problems, getattr(cls, "RETIRED", ()))
    read = _settings(table, name, environ, problems)
    return cls(**_read(cls, read, f"[{name}]", problems, rules))


def _credential(
    table: Mapping[str, Any], what: str, where: str, environ: Mapping[str, str], problems: list[str]
) -> tuple[Any, str]:
    """A table's secret `what`, from the variable `<what>_env` names or the file `<what>_file`
    names; never from the TOML itself."""
    env_key, file_key = f"{what}_env", f"{what}_file"
    if what in table:
        problems.append(
            f"{where} {what}: do not put credentials in the config file; "
            f"use {env_key} (an environment variable name) or {file_key} (a file path)"
        )
    elif env_key in table:
        var = table[env_key]
        value = environ.get(var, "").strip() if isinstance(var, str) else ""
        if value:
            return value, f"{where} {env_key}"
        problems.append(f"{where} {env_key}: environment variable {var!r} is not set")
    elif file_key in table:
        path = str(table[file_key])
        content = read_secret_file(path, f"{where} {file_key}", problems)
        if content:
            return content, f"{where} {file_key}"
        if content is not None:
            problems.append(f"{where} {file_key}: file {path!r} is empty")
    else:
        problems.append(f"{where}: set {env_key} or {file_key}")
    return _REPORTED, where


def _named_tables(raw: Any, what: str, problems: list[str]) -> Iterator[tuple[dict[str, Any], str]]:
    """Each `[[what]]` table with its name (`#<position>` when it has none: that problem, like a
    name used twice, is reported)."""
    if not isinstance(raw, list):
        problems.append(f"{what}: expected [[{what}]] tables")
        return
    names: set[str] = set()
    for i, table in enumerate(raw, 1):
        if not isinstance(table, dict):
            problems.append(f"[[{what}]] #{i}: expected a table")
            continue
        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"[[{what}]] #{i} name: required, a non-empty string")
            name = f"#{i}"
        elif name in names:
            problems.append(f"[[{what}]] #{i} name: {name!r} is used twice")
        names.add(name)
        yield table, name


def _table(
    table: Mapping[str, Any],
    where: str,
    credentials: list[str],
    environ: Mapping[str, str],
    problems: list[str],
) -> Read:
    """A `Read` of one `[[...]]` table: its keys, and its credentials by `_credential`."""

    def read(key: str) -> tuple[Any, str]:
        if key in credentials:
            return _credential(table, key, where, environ, problems)
        return table.get(key, dataclasses.MISSING), f"{where} {key}"

    return read


def _tables(
    what: str, raw: Any, environ: Mapping[str, str], problems: list[str]
) -> tuple[Any, ...]:
    """The `[[what]]` tables, each checked by its `validate()` once its settings read without a
    problem; a table with a problem in a required setting is left out (its problem is
    reported)."""
    cls, out = _TABLES[what], []
    fields = dataclasses.fields(cls)
    credentials = [f.name for f in fields if f.metadata.get("credential")]
    known = {f.name for f in fields} | {
        f"{c}_{via}" for c in credentials for via in ("env", "file")
    }
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    for table, name in _named_tables(raw, what, problems):
        where = f"[[{what}]] {name!r}"
        _unknown(table, known, where, problems)
        read = _table({**table, "name": name}, where, credentials, environ, problems)
        before = len(problems)
        values = _read(cls, read, where, problems, problems)
        if values.keys() >= required:
            out.append(item := cls(**values))
            if len(problems) == before:  # its rules that span settings need every setting read
                problems.extend(f"{where} {k}: {p}" for k, p in getattr(item, "validate", tuple)())
    return tuple(out)


# COLLECTOR_* variables that are not settings but are read by the collector, its tests or its
# deployment scripts.
_OTHER_VARIABLES = frozenset(
    {
        "COLLECTOR_CONFIG",  # the TOML file
        "COLLECTOR_MIGRATIONS_DIR",  # collector.db.migrate
        "COLLECTOR_TEST_DSN",  # the test suite's database
        "COLLECTOR_DB_PASSWORD",  # deploy/postgres/init: the collector role's password
    }
)
# Kubernetes injects these for every Service whose name starts with "collector" (unless the pod
# sets enableServiceLinks: false, as deploy/k8s does): COLLECTOR_METRICS_SERVICE_HOST,
# COLLECTOR_METRICS_PORT_9108_TCP_ADDR and so on. They are not misspelled settings.
_SERVICE_LINK = re.compile(
    r"COLLECTOR(?:_[A-Z0-9_]+)?_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)"
)


def _setting_variables() -> set[str]:
    names = {_env_name(None, key) for key in _TOP_LEVEL}
    for section, cls in _SECTIONS.items():
        keys = [f.name for f in dataclasses.fields(cls)] + list(getattr(cls, "RETIRED", ()))
        names.update(_env_name(section, key) for key in keys)
    return names | {n + "_FILE" for n in names}


def _check_environment(
    environ: Mapping[str, str], data: Mapping[str, Any], problems: list[str]
) -> None:
    """Report every COLLECTOR_* variable that is neither a setting nor a known other variable
    (a misspelled setting would otherwise be silently ignored). Values are never shown."""
    settings = _setting_variables()
    known = settings | _OTHER_VARIABLES
    for what in _TABLES:  # variables that tables name for their credentials
        tables = data.get(what)
        for table in tables if isinstance(tables, list) else ():
            if isinstance(table, dict):
                known.update(
                    v for k, v in table.items() if k.endswith("_env") and isinstance(v, str)
                )
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or _SERVICE_LINK.fullmatch(name):
            continue
        close = difflib.get_close_matches(name, sorted(settings), n=1, cutoff=0.8)
        hint = (
            f"did you mean {close[0]}?"
            if close
            else "settings are COLLECTOR_<SECTION>_<KEY>, or that with _FILE"
        )
        problems.append(f"{name}: unknown environment variable ({hint})")


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"cannot read config file {str(path)!r}: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {str(path)!r} is not valid TOML: {exc}"]) from None


def load_config(environ: Mapping[str, str], toml_path: Path | None = None) -> Config:
    """Build the configuration from defaults, the TOML file (if any) and `environ`.

    Raises `ConfigError` listing every problem found; nothing starts with a bad config.
    `toml_path` defaults to `$COLLECTOR_CONFIG` when that is set. Problems come in this order:
    unknown keys and unreadable values (and each table's, with its `validate()`), then values
    outside their rules, then the sections' `validate()`.
    """
    problems: list[str] = []
    if toml_path is None and environ.get("COLLECTOR_CONFIG"):
        toml_path = Path(environ["COLLECTOR_CONFIG"])
    data = _toml(toml_path) if toml_path is not None else {}
    known = {*_SECTIONS, *_TOP_LEVEL, *_TABLES}
    problems += [
        f"{k}: unknown section (known: {', '.join(sorted(known))})" for k in data if k not in known
    ]
    _check_environment(environ, data, problems)
    rules: list[str] = []  # reported after every unreadable value
    sections = {name: _section(name, data, environ, problems, rules) for name in _SECTIONS}
    read = _settings(data, None, environ, problems)
    top = _read(Config, read, None, problems, rules, names=_TOP_LEVEL)
    tables: dict[str, Any] = {
        name: _tables(name, data.get(name, []), environ, problems) for name in _TABLES
    }
    config = Config(**sections, **top, **tables)
    problems += rules
    order = [*_VALIDATE_FIRST, *(name for name in _SECTIONS if name not in _VALIDATE_FIRST)]
    for name in order:
        for keys, problem in getattr(getattr(config, name), "validate", tuple)():
            problems.append(f"[{name}] {keys}: {problem}" if keys else f"[{name}]: {problem}")
    if problems:
        raise ConfigError(problems)
    return config


def load_from_process(toml_path: Path | None) -> Config:
    """`load_config` against this process's environment."""
    return load_config(os.environ, toml_path)
