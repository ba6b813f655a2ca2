"""Reading the settings: defaults < TOML file < environment, one mechanism for every section.

Each field of a section (and of each `[[accounts]]` table) is read, converted to its annotated
type and checked against its rule (`collector.config.settings`); every problem is collected and
`load_config` raises one `ConfigError` listing them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from collector.config.coerce import coerce, read_secret_file
from collector.config.sections import AccountConfig, Config, load_private_key
from collector.config.sections_out import AlertConfig
from collector.config.settings import KeyType, Rule
from collector.exceptions import ConfigError

ENV_PREFIX = "COLLECTOR_"
# `[database]`, `[binance]`, ...: the fields of Config that are dataclasses.
_SECTIONS: dict[str, type[Any]] = {
    name: tp
    for name, tp in typing.get_type_hints(Config).items()
    if isinstance(tp, type) and dataclasses.is_dataclass(tp)
}
# Lists of tables, each read by its own function (`_accounts`, `_alerts`).
_LISTS_OF_TABLES = frozenset({"accounts", "alerts"})
# Settings outside any section.
_TOP_LEVEL = tuple(
    f.name
    for f in dataclasses.fields(Config)
    if f.name not in _SECTIONS and f.name not in _LISTS_OF_TABLES
)
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


def _raw_setting(
    toml: Mapping[str, Any],
    section: str | None,
    environ: Mapping[str, str],
    problems: list[str],
    key: str,
) -> tuple[Any, str]:
    """The raw value of one setting and where it came from: the environment variable wins over
    its `_FILE` variant, which wins over the TOML file. MISSING when none sets it."""
    env_name = _env_name(section, key)
    raw: Any = dataclasses.MISSING
    where = f"[{section}] {key}" if section else key
    if key in toml:
        raw = toml[key]
    if env_name + "_FILE" in environ:
        where = f"{env_name}_FILE"
        content = read_secret_file(environ[env_name + "_FILE"], where, problems)
        raw = dataclasses.MISSING if content is None else content
    if env_name in environ:
        raw, where = environ[env_name], env_name
    return raw, where


def _section(
    name: str,
    data: Mapping[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
    rules: list[str],
) -> Any:
    """Section `name` from its TOML table and the environment."""
    cls = _SECTIONS[name]
    table = data.get(name, {})
    if not isinstance(table, dict):
        problems.append(f"[{name}]: expected a table")
        table = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known and key not in getattr(cls, "RETIRED", ()):
            problems.append(f"[{name}] {key}: unknown setting (known: {', '.join(sorted(known))})")
    read = functools.partial(_raw_setting, table, name, environ, problems)
    return cls(**_read(cls, read, f"[{name}]", problems, rules))


def _from_table(table: Mapping[str, Any], where: str) -> Read:
    """A `Read` of a `[[...]]` table (TOML only): a key's value, or MISSING."""
    return lambda key: (table.get(key, dataclasses.MISSING), f"{where} {key}")


def _credential(
    table: Mapping[str, Any], what: str, where: str, environ: Mapping[str, str], problems: list[str]
) -> tuple[Any, str]:
    """An account's secret `what`, from the variable `<what>_env` names or the file
    `<what>_file` names; never from the TOML itself."""
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


_CREDENTIALS = tuple(
    f.name for f in dataclasses.fields(AccountConfig) if f.metadata.get("credential")
)
_REQUIRED = {f.name for f in dataclasses.fields(AccountConfig) if f.default is dataclasses.MISSING}
_ACCOUNT_KEYS = frozenset(
    {f.name for f in dataclasses.fields(AccountConfig)}
    | {f"{c}_{via}" for c in _CREDENTIALS for via in ("env", "file")}
)


def _account(
    table: Mapping[str, Any], name: str, environ: Mapping[str, str], problems: list[str]
) -> AccountConfig | None:
    """One `[[accounts]]` table; None when a required setting has a problem (reported)."""
    where = f"[[accounts]] {name!r}"
    problems.extend(f"{where} {key}: unknown setting" for key in table if key not in _ACCOUNT_KEYS)

    from_table = _from_table({**table, "name": name}, where)

    def read(key: str) -> tuple[Any, str]:
        if key in _CREDENTIALS:
            return _credential(table, key, where, environ, problems)
        return from_table(key)

    values = _read(AccountConfig, read, where, problems, problems)
    return AccountConfig(**values) if values.keys() >= _REQUIRED else None


def _named_tables(
    raw: Any, what: str, problems: list[str]
) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """Each `[[what]]` table with its 1-based position and its name (None when it has none: that
    problem, like a name used twice, is reported)."""
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
            name = None
        elif name in names:
            problems.append(f"[[{what}]] #{i} name: {name!r} is used twice")
        names.add(name or f"#{i}")
        yield i, table, name


def _accounts(
    raw: Any, environ: Mapping[str, str], problems: list[str]
) -> tuple[AccountConfig, ...]:
    """The `[[accounts]]` tables; an account with a problem in a required setting is left out
    (its problem is reported)."""
    accounts = [
        account
        for i, table, name in _named_tables(raw, "accounts", problems)
        if (account := _account(table, name or f"#{i}", environ, problems)) is not None
    ]
    # Every RSA/Ed25519 private key is loaded now, so a bad key stops the start, not the first
    # signed request.
    for account in accounts:
        if account.key_type != KeyType.HMAC:
            try:
                load_private_key(account.key_type, account.api_secret, account.name)
            except ConfigError as exc:
                problems.extend(exc.problems)
    return tuple(accounts)


_ALERT_KEYS = frozenset(f.name for f in dataclasses.fields(AlertConfig))


def _alerts(raw: Any, problems: list[str]) -> tuple[AlertConfig, ...]:
    """The `[[alerts]]` tables (TOML only); a rule with a problem is left out (reported)."""
    rules: list[AlertConfig] = []
    for _, table, name in _named_tables(raw, "alerts", problems):
        if name is None:
            continue
        where = f"[[alerts]] {name!r}"
        problems.extend(f"{where} {k}: unknown setting" for k in table if k not in _ALERT_KEYS)
        before = len(problems)
        values = _read(AlertConfig, _from_table(table, where), where, problems, problems)
        if len(problems) > before:
            continue
        rule = AlertConfig(**values)
        problems.extend(f"{where} {keys}: {problem}" for keys, problem in rule.validate())
        rules.append(rule)
    return tuple(rules)


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
        names.update(_env_name(section, f.name) for f in dataclasses.fields(cls))
        names.update(_env_name(section, key) for key in getattr(cls, "RETIRED", ()))
    return names | {n + "_FILE" for n in names}


def _check_environment(environ: Mapping[str, str], accounts: Any, problems: list[str]) -> None:
    """Report every COLLECTOR_* variable that is neither a setting nor a known other variable
    (a misspelled setting would otherwise be silently ignored). Values are never shown."""
    settings = _setting_variables()
    known = settings | _OTHER_VARIABLES
    if isinstance(accounts, list):  # variables that accounts name for their credentials
        for table in accounts:
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


def load_config(environ: Mapping[str, str], toml_path: Path | None = None) -> Config:
    """Build the configuration from defaults, the TOML file (if any) and `environ`.

    Raises `ConfigError` listing every problem found; nothing starts with a bad config.
    `toml_path` defaults to `$COLLECTOR_CONFIG` when that is set. Problems come in this order:
    unknown keys and unreadable values, then values outside their rules, then rules that span
    settings.
    """
    problems: list[str] = []
    if toml_path is None and environ.get("COLLECTOR_CONFIG"):
        toml_path = Path(environ["COLLECTOR_CONFIG"])
    data: dict[str, Any] = {}
    if toml_path is not None:
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"cannot read config file {str(toml_path)!r}: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                [f"config file {str(toml_path)!r} is not valid TOML: {exc}"]
            ) from None
    known_top = {*_SECTIONS, *_TOP_LEVEL, *_LISTS_OF_TABLES}
    for key in data:
        if key not in known_top:
            problems.append(f"{key}: unknown section (known: {', '.join(sorted(known_top))})")
    _check_environment(environ, data.get("accounts"), problems)
    rules: list[str] = []  # reported after every unreadable value
    sections = {name: _section(name, data, environ, problems, rules) for name in _SECTIONS}
    read = functools.partial(_raw_setting, data, None, environ, problems)
    top = _read(Config, read, None, problems, rules, names=_TOP_LEVEL)
    accounts = _accounts(data.get("accounts", []), environ, problems)
    alerts = _alerts(data.get("alerts", []), problems)
    config = Config(**sections, **top, accounts=accounts, alerts=alerts)
    problems += rules
    # The rules that span settings, in the order their messages have always come.
    for name in ("binance", "writer", "rest", "database", "bybit", "okx", "http", "feed", "nats"):
        for keys, problem in getattr(config, name).validate():
            problems.append(f"[{name}] {keys}: {problem}" if keys else f"[{name}]: {problem}")
    if problems:
        raise ConfigError(problems)
    return config


def load_from_process(toml_path: Path | None) -> Config:
    """`load_config` against this process's environment."""
    return load_config(os.environ, toml_path)
