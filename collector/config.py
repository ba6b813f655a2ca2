"""Configuration: defaults < TOML file < environment, validated once at start.

`load_config(environ, toml_path)` returns a frozen `Config` or raises one `ConfigError`
listing every problem. Environment variables are `COLLECTOR_<SECTION>_<KEY>` (for example
`COLLECTOR_DATABASE_DSN`, `COLLECTOR_BINANCE_FSTREAM_URL`); any key also accepts
`..._FILE` naming a file whose stripped content is the value (Docker/k8s secrets).
Accounts (`[[accounts]]`) come from the TOML file only; their credentials are read from the
environment variables or files that the TOML names, never from the TOML itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

from collector.exceptions import ConfigError

ENV_PREFIX = "COLLECTOR_"


class Secret:
    """A string that prints as `<SECRET>` in reprs, logs and exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; call only where it is sent to its destination."""
        return self._value

    def __repr__(self) -> str:
        return "<SECRET>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


# libpq's connection keywords (PostgreSQL 17); asyncpg reads the same names from a URI's query.
# A redacted DSN shows the values of these, except the secret ones; any other key's value is
# masked too (it may be a misspelt `password`, or a piece of a password with an unencoded `&`).
_DSN_KEYWORDS = frozenset((
    "host", "hostaddr", "port", "dbname", "database", "user", "password", "passfile",
    "require_auth", "channel_binding", "connect_timeout", "client_encoding", "options",
    "application_name", "fallback_application_name", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication", "gssencmode",
    "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword",
    "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname", "gsslib",
    "gssdelegation", "service", "target_session_attrs", "load_balance_hosts",
))  # fmt: skip
_MASK = "***"
UNPARSEABLE_DSN = "<unparseable dsn>"
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t\r\n\f\v]*=[ \t\r\n\f\v]*")


def _is_secret_key(name: str) -> bool:
    # password, sslpassword, passfile, and any future pass-something.
    return "pass" in name.lower()


def _redact_query(query: str) -> str:
    """Mask the values of a URI query's secret and unknown keys (`&`-separated)."""
    out: list[str] = []
    in_secret = False  # segments after a secret, up to the next known key, are its pieces
    for segment in query.split("&"):
        key, eq, _ = segment.partition("=")
        name = unquote_plus(key)
        if eq and _is_secret_key(name):
            out.append(f"{key}={_MASK}")
            in_secret = True
        elif eq and name in _DSN_KEYWORDS:
            out.append(segment)
            in_secret = False
        elif in_secret:
            continue
        elif eq:
            out.append(f"{key}={_MASK}")
        else:
            out.append(_MASK)
    return "&".join(out)


def _redact_uri(dsn: str) -> str:
    scheme, _, rest = dsn.partition("://")
    # A password may hold unencoded `@`, `/`, `?` or `:`; only the last `@` surely ends it. If
    # a `:` comes before that `@`, everything from the first `:` to it is masked (with an `@` in
    # the query this masks too much, never too little).
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        prefix = f"{scheme}://{user}:{_MASK}@"
    else:
        userinfo, at, hostpart = rest.partition("@")
        prefix = f"{scheme}://{userinfo}{at}"
    path, question, query = hostpart.partition("?")
    return f"{prefix}{path}{question}{_redact_query(query) if question else ''}"


def _keyword_value_end(dsn: str, pos: int) -> int | None:
    """Where the libpq keyword value starting at `pos` ends (None: an unterminated quote)."""
    if dsn.startswith("'", pos):
        i = pos + 1
        while i < len(dsn):
            if dsn[i] == "\\":
                i += 2
            elif dsn[i] == "'":
                return i + 1
            else:
                i += 1
        return None
    i = pos
    while i < len(dsn) and not dsn[i].isspace():
        i += 2 if dsn[i] == "\\" else 1
    return min(i, len(dsn))


def _redact_keywords(dsn: str) -> str:
    """Redact libpq's `key=value key='quoted value'` form."""
    out: list[str] = []
    in_secret = False
    pos = 0
    while True:
        while pos < len(dsn) and dsn[pos].isspace():
            pos += 1
        if pos >= len(dsn):
            return " ".join(out)
        match = _KEYWORD.match(dsn, pos)
        if match is None:
            if not in_secret:
                return UNPARSEABLE_DSN  # not a keyword DSN: nothing in it is known to be safe
            while pos < len(dsn) and not dsn[pos].isspace():  # a piece of an unquoted password
                pos += 1
            continue
        name = match.group(1)
        end = _keyword_value_end(dsn, match.end())
        if end is None:  # the rest of the string is one unterminated value
            if not in_secret:
                out.append(f"{name}={_MASK}")
            return " ".join(out)
        if _is_secret_key(name):
            out.append(f"{name}={_MASK}")
            in_secret = True
        elif name in _DSN_KEYWORDS:
            out.append(f"{name}={dsn[match.end() : end]}")
            in_secret = False
        elif not in_secret:
            out.append(f"{name}={_MASK}")
        pos = end


def redact_dsn(dsn: str) -> str:
    """Return `dsn` safe for logs: every password (and anything that may be one) is `***`.

    Handles URIs (a password in the userinfo, even with unencoded `@`, `/` or `:`; `password`,
    `sslpassword` and `passfile` query parameters) and libpq's keyword form. The values of
    unknown keys are masked too. A string that is neither yields `<unparseable dsn>`, never
    itself. Never raises.
    """
    try:
        if _URI_SCHEME.match(dsn):
            return _redact_uri(dsn)
        return _redact_keywords(dsn)
    except Exception:  # a redactor that fails must not echo its input
        return UNPARSEABLE_DSN


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where rows go. With no `dsn`, an embedded PostgreSQL runs in `embedded_dir`."""

    dsn: Secret | None = None
    embedded_dir: str = ".collector/pgdata"
    pool_min_size: int = 1
    pool_max_size: int = 4
    connect_timeout_s: float = 10.0
    migrate_on_start: bool = True
    # The dashboards' per-minute/hour/day rollups are brought up to date this often.
    rollup_interval_s: float = 30.0
    # `collector_database_up` follows a `SELECT 1` through the pool this often, each bounded by
    # `ping_timeout_s` (besides the writer's own commits and failures).
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 3.0


@dataclass(frozen=True, slots=True)
class BinanceConfig:
    """Binance endpoints and which liquidation streams to follow."""

    fstream_url: str = "wss://fstream.binance.com"
    dstream_url: str = "wss://dstream.binance.com"
    fapi_url: str = "https://fapi.binance.com"
    dapi_url: str = "https://dapi.binance.com"
    papi_url: str = "https://papi.binance.com"
    sapi_url: str = "https://api.binance.com"
    # `!forceOrder@arr` on the USD-M /market route: since the 2026 merge it carries COIN-M too.
    all_market: bool = True
    # Also `!forceOrder@arr` on the COIN-M host (overlaps the above; deduplicated).
    coin_m_all_market: bool = False
    # Extra per-symbol `<symbol>@forceOrder` streams.
    usdm_symbols: tuple[str, ...] = ()
    coinm_symbols: tuple[str, ...] = ()
    max_streams_per_connection_usdm: int = 1024
    max_streams_per_connection_coinm: int = 200
    # Make-before-break rotation ahead of Binance's 24 h cut.
    rotate_after_s: float = 23 * 3600.0
    rotate_handover_timeout_s: float = 30.0
    # Backoff over consecutive failed attempts (connect, upgrade, subscribe); a confirmed
    # connection resets it.
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    # A confirmed connection that ends (for any reason) is replaced after a random delay in
    # [0, this], not after a backoff.
    reconnect_jitter_s: float = 0.25
    # Connection attempts (all shards) per 5 minutes, so a server that cuts every session
    # cannot get the IP banned. Spot documents "300 connections per attempt every 5 minutes
    # per IP" (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams);
    # futures document no number, only that "IPs that are repeatedly disconnected may be
    # banned" (https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams).
    connection_attempts_per_5min: int = 300
    # Control messages (SUBSCRIBE, LIST, pongs) per second per connection; Binance allows 10.
    control_messages_per_s: float = 4.0
    exchange_info_refresh_s: float = 3600.0
    open_timeout_s: float = 10.0
    # No frame at all (not even Binance's 3-minute ping) for this long means the link is dead.
    # Data silence alone never is: liquidation feeds can be quiet for minutes.
    idle_timeout_s: float = 600.0
    # The ledger's per-session liveness mark (`last_alive_at`) is refreshed this often, to the
    # last moment the reader was caught up (not while it waits for writer queue space).
    heartbeat_s: float = 5.0
    # Independent connections holding each shard at once: every event arrives on each, the
    # content key stores it once, so one connection's drop, cut or stall loses nothing.
    # Connection i of a shard first rotates after rotate_after_s * (1 - i / (2 * redundancy)),
    # so the connections of a shard never rotate at the same time.
    redundancy: int = 2
    # A connection that received no data frame for this long while a twin of its shard
    # received events in that time is stale: it is replaced (close reason `stale`). Silence on
    # every connection of a shard is a quiet market, not a fault.
    stall_after_s: float = 60.0


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """The bounded queue and the batching writer."""

    queue_max: int = 20_000
    batch_max_rows: int = 5_000
    batch_max_age_s: float = 0.025
    # Database connections writing batches concurrently (encoding overlaps inserting).
    writers: int = 2
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    dedup_window: int = 50_000
    # What the database could not take before shutdown is written here and replayed on start.
    spill_dir: str = ".collector/spill"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Metrics and health endpoints."""

    host: str = "127.0.0.1"
    port: int = 9108
    # /readyz fails when the newest market event is older than this (0 disables the check).
    max_event_age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Log level and rendering (`auto`: JSON unless stderr is a TTY)."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class RestConfig:
    """Signed REST polling of account force orders."""

    poll_interval_s: float = 60.0
    # Share of each documented weight limit this process may use (others may share the IP).
    weight_share: float = 0.5
    # Each poll re-scans this trailing window so late rows are caught.
    overlap_s: float = 1800.0
    recv_window_ms: int = 5000
    request_timeout_s: float = 10.0
    time_sync_interval_s: float = 300.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    # How long an account that failed authentication waits before trying again.
    auth_failure_backoff_s: float = 900.0
    # A failed poll of a scope is retried after poll_interval_s, doubling per further failure
    # (jittered) up to this; a successful poll resets it.
    poll_failure_backoff_max_s: float = 900.0
    enrich_margin_orders: bool = True
    # Margin order lookups (weight 10 each) per poll of one margin endpoint, so enrichment
    # never crowds out the force-order polls that share its budget.
    enrich_per_poll: int = 20


_DEFAULT_GRACE_S = 20.0
ACCOUNT_KINDS = ("classic", "portfolio_margin")
ACCOUNT_PRODUCTS = ("um", "cm", "margin")
KEY_TYPES = ("hmac", "rsa", "ed25519")


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One Binance account whose own force orders are polled."""

    name: str
    kind: str
    api_key: Secret = field(repr=False)
    api_secret: Secret = field(repr=False)
    key_type: str = "hmac"
    products: tuple[str, ...] = ACCOUNT_PRODUCTS
    isolated_symbols: tuple[str, ...] = ()
    # None: everything Binance keeps.
    backfill_days: float | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    database: DatabaseConfig = DatabaseConfig()
    binance: BinanceConfig = BinanceConfig()
    writer: WriterConfig = WriterConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    rest: RestConfig = RestConfig()
    shutdown_grace_s: float = _DEFAULT_GRACE_S
    accounts: tuple[AccountConfig, ...] = ()


# Settings that older files may still hold; accepted and ignored.
_RETIRED: dict[str, frozenset[str]] = {
    # The backoff now resets when a connection is confirmed, however long it then lives.
    "binance": frozenset({"healthy_after_s"}),
}

_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseConfig,
    "binance": BinanceConfig,
    "writer": WriterConfig,
    "http": HttpConfig,
    "log": LogConfig,
    "rest": RestConfig,
}


def _read_secret_file(path: str, where: str, problems: list[str]) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(f"{where}: cannot read file {path!r}: {exc.strerror or exc}")
        return None


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Convert a TOML value or an environment string to `tp`; append a problem on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return _coerce(value, inner[0], where, problems)
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
        return tuple(items)
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


def _build_section(
    cls: type[Any],
    name: str,
    toml: Mapping[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in toml:
        if key not in known and key not in _RETIRED.get(name, ()):
            problems.append(f"[{name}] {key}: unknown setting (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw, where = _raw_setting(toml, f.name, name, environ, problems)
        if raw is dataclasses.MISSING:
            continue
        value = _coerce(raw, hints[f.name], where, problems)
        if value is not None or raw in ("", None):
            values[f.name] = value
    return cls(**values)


def _env_name(section: str | None, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}" if section else ENV_PREFIX + key.upper()


def _raw_setting(
    toml: Mapping[str, Any],
    key: str,
    section: str | None,
    environ: Mapping[str, str],
    problems: list[str],
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
        content = _read_secret_file(environ[env_name + "_FILE"], where, problems)
        raw = dataclasses.MISSING if content is None else content
    if env_name in environ:
        raw, where = environ[env_name], env_name
    return raw, where


def _credential(
    table: Mapping[str, Any], what: str, where: str, environ: Mapping[str, str], problems: list[str]
) -> Secret | None:
    env_key, file_key = f"{what}_env", f"{what}_file"
    if what in table:
        problems.append(
            f"{where} {what}: do not put credentials in the config file; "
            f"use {env_key} (an environment variable name) or {file_key} (a file path)"
        )
        return None
    if env_key in table:
        var = table[env_key]
        if not isinstance(var, str) or var not in environ or not environ[var]:
            problems.append(f"{where} {env_key}: environment variable {var!r} is not set")
            return None
        return Secret(environ[var].strip())
    if file_key in table:
        content = _read_secret_file(str(table[file_key]), f"{where} {file_key}", problems)
        return Secret(content) if content else None
    problems.append(f"{where}: set {env_key} or {file_key}")
    return None


def _build_accounts(
    raw: Any, environ: Mapping[str, str], problems: list[str]
) -> tuple[AccountConfig, ...]:
    if not isinstance(raw, list):
        problems.append("accounts: expected [[accounts]] tables")
        return ()
    accounts: list[AccountConfig] = []
    names: set[str] = set()
    allowed = {
        "name",
        "kind",
        "key_type",
        "products",
        "isolated_symbols",
        "backfill_days",
        "enabled",
        "api_key_env",
        "api_key_file",
        "api_secret_env",
        "api_secret_file",
    }
    for i, table in enumerate(raw):
        where = f"[[accounts]] #{i + 1}"
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table")
            continue
        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where} name: required, a non-empty string")
            name = f"#{i + 1}"
        elif name in names:
            problems.append(f"{where} name: {name!r} is used twice")
        names.add(name)
        where = f"[[accounts]] {name!r}"
        for key in table:
            if key not in allowed and key not in ("api_key", "api_secret"):
                problems.append(f"{where} {key}: unknown setting")
        kind = table.get("kind")
        if kind not in ACCOUNT_KINDS:
            problems.append(f"{where} kind: must be one of {', '.join(ACCOUNT_KINDS)}")
        key_type = table.get("key_type", "hmac")
        if key_type not in KEY_TYPES:
            problems.append(f"{where} key_type: must be one of {', '.join(KEY_TYPES)}")
        products = (
            _coerce(
                table.get("products", list(ACCOUNT_PRODUCTS)),
                tuple[str, ...],
                f"{where} products",
                problems,
            )
            or ()
        )
        for p in products:
            if p not in ACCOUNT_PRODUCTS:
                problems.append(
                    f"{where} products: {p!r} is not one of {', '.join(ACCOUNT_PRODUCTS)}"
                )
        isolated = (
            _coerce(
                table.get("isolated_symbols", []),
                tuple[str, ...],
                f"{where} isolated_symbols",
                problems,
            )
            or ()
        )
        backfill = _coerce(
            table.get("backfill_days"), float | None, f"{where} backfill_days", problems
        )
        if backfill is not None and not _BACKFILL_DAYS.holds(backfill):
            problems.append(
                f"{where} backfill_days: {_BACKFILL_DAYS.describe()} (or unset: all Binance "
                f"keeps), got {backfill!r}"
            )
        enabled = _coerce(table.get("enabled", True), bool, f"{where} enabled", problems)
        key = _credential(table, "api_key", where, environ, problems)
        secret = _credential(table, "api_secret", where, environ, problems)
        if key is None or secret is None or kind not in ACCOUNT_KINDS:
            continue
        accounts.append(
            AccountConfig(
                name=name,
                kind=kind,
                api_key=key,
                api_secret=secret,
                key_type=str(key_type),
                products=tuple(products),
                isolated_symbols=tuple(s.upper() for s in isolated),
                backfill_days=backfill,
                enabled=bool(enabled),
            )
        )
    return tuple(accounts)


@dataclass(frozen=True, slots=True)
class _Range:
    """Allowed values of a numeric setting: `low..high`; above `low` (not at it) when `above`."""

    low: float
    high: float
    above: bool = False

    def holds(self, value: float) -> bool:
        # Written so that NaN fails every comparison and is refused.
        low_ok = value > self.low if self.above else value >= self.low
        return low_ok and value <= self.high and not math.isnan(value)

    def describe(self) -> str:
        low, high = _number(self.low), _number(self.high)
        return f"must be above {low} and at most {high}" if self.above else f"must be {low}..{high}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


_DAY = 86400.0
_WEEK = 7 * _DAY
# Every numeric setting, section None meaning top level. Durations are above 0 (a zero or
# negative interval would spin); the maxima catch unit mistakes (ms for s) and typos.
_RANGES: dict[tuple[str | None, str], _Range] = {
    ("database", "pool_min_size"): _Range(1, 100),
    ("database", "pool_max_size"): _Range(1, 100),
    ("database", "connect_timeout_s"): _Range(0, 600, above=True),
    ("database", "ping_interval_s"): _Range(0, 3600, above=True),
    ("database", "ping_timeout_s"): _Range(0, 600, above=True),
    ("database", "rollup_interval_s"): _Range(0, _DAY, above=True),
    ("binance", "max_streams_per_connection_usdm"): _Range(1, 1024),
    ("binance", "max_streams_per_connection_coinm"): _Range(1, 200),
    ("binance", "rotate_after_s"): _Range(60, _DAY, above=True),
    ("binance", "rotate_handover_timeout_s"): _Range(0, 3600, above=True),
    ("binance", "reconnect_initial_s"): _Range(0, 3600, above=True),
    ("binance", "reconnect_max_s"): _Range(0, _DAY, above=True),
    ("binance", "reconnect_jitter_s"): _Range(0, 60),
    ("binance", "connection_attempts_per_5min"): _Range(1, 10_000),
    ("binance", "exchange_info_refresh_s"): _Range(0, _WEEK, above=True),
    ("binance", "open_timeout_s"): _Range(0, 600, above=True),
    ("binance", "idle_timeout_s"): _Range(0, _DAY, above=True),
    ("binance", "heartbeat_s"): _Range(0, 10, above=True),
    ("binance", "redundancy"): _Range(1, 4),
    ("binance", "stall_after_s"): _Range(0, _DAY, above=True),
    ("writer", "queue_max"): _Range(1, 10_000_000),
    ("writer", "batch_max_rows"): _Range(1, 1_000_000),
    ("writer", "batch_max_age_s"): _Range(0, 60, above=True),
    ("writer", "writers"): _Range(1, 64),
    ("writer", "retry_initial_s"): _Range(0, 3600, above=True),
    ("writer", "retry_max_s"): _Range(0, 3600, above=True),
    ("writer", "dedup_window"): _Range(0, 10_000_000),
    ("http", "port"): _Range(0, 65535),
    ("http", "max_event_age_s"): _Range(0, _WEEK),
    ("rest", "poll_interval_s"): _Range(0, _DAY, above=True),
    ("rest", "weight_share"): _Range(0, 1, above=True),
    ("rest", "overlap_s"): _Range(0, _WEEK),
    ("rest", "recv_window_ms"): _Range(1, 60000),
    ("rest", "request_timeout_s"): _Range(0, 600, above=True),
    ("rest", "time_sync_interval_s"): _Range(0, _DAY, above=True),
    ("rest", "retry_initial_s"): _Range(0, 3600, above=True),
    ("rest", "retry_max_s"): _Range(0, _DAY, above=True),
    ("rest", "auth_failure_backoff_s"): _Range(0, _WEEK, above=True),
    ("rest", "poll_failure_backoff_max_s"): _Range(0, _WEEK, above=True),
    ("rest", "enrich_per_poll"): _Range(0, 1000),
    (None, "shutdown_grace_s"): _Range(0, 3600, above=True),
}
_BACKFILL_DAYS = _Range(0, 3650, above=True)
_NOTES: dict[tuple[str | None, str], str] = {
    ("rest", "recv_window_ms"): " (Binance's maximum)",
    ("binance", "heartbeat_s"): " (the ledger counts an open session live for 30 s after its mark)",
}


def _validate(config: Config, problems: list[str]) -> None:
    b, w = config.binance, config.writer
    for name in ("fstream_url", "dstream_url"):
        url = getattr(b, name)
        if urlsplit(url).scheme not in ("ws", "wss"):
            problems.append(f"[binance] {name}: must start with ws:// or wss://, got {url!r}")
    for name in ("fapi_url", "dapi_url", "papi_url", "sapi_url"):
        url = getattr(b, name)
        if urlsplit(url).scheme not in ("http", "https"):
            problems.append(f"[binance] {name}: must start with http:// or https://, got {url!r}")
    if not (b.all_market or b.coin_m_all_market or b.usdm_symbols or b.coinm_symbols):
        problems.append(
            "[binance]: no stream selected (all_market, coin_m_all_market, "
            "usdm_symbols or coinm_symbols)"
        )
    for (section, key), allowed in _RANGES.items():
        value = getattr(getattr(config, section) if section else config, key)
        if not allowed.holds(value):
            name = f"[{section}] {key}" if section else key
            note = _NOTES.get((section, key), "")
            problems.append(f"{name}: {allowed.describe()}{note}, got {value!r}")
    if not 0 < b.control_messages_per_s < 10:
        problems.append(
            "[binance] control_messages_per_s: must be above 0 and below 10 "
            "(Binance disconnects at 10 messages/s)"
        )
    for section, cfg in (("binance", b), ("writer", w), ("rest", config.rest)):
        initial = getattr(cfg, "reconnect_initial_s" if section == "binance" else "retry_initial_s")
        maximum = getattr(cfg, "reconnect_max_s" if section == "binance" else "retry_max_s")
        if initial > maximum:
            pair = "reconnect" if section == "binance" else "retry"
            problems.append(
                f"[{section}] {pair}_initial_s/{pair}_max_s: need initial <= max, "
                f"got {initial!r} > {maximum!r}"
            )
    if config.log.level.lower() not in ("debug", "info", "warning", "error"):
        problems.append("[log] level: must be debug, info, warning or error")
    if config.log.format not in ("auto", "json", "console"):
        problems.append("[log] format: must be auto, json or console")
    d = config.database
    if d.pool_min_size > d.pool_max_size:
        problems.append(
            "[database] pool_min_size/pool_max_size: need min <= max, "
            f"got {d.pool_min_size} > {d.pool_max_size}"
        )


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
    names = {_env_name(None, "shutdown_grace_s")}
    for section, cls in _SECTIONS.items():
        names.update(_env_name(section, f.name) for f in dataclasses.fields(cls))
        names.update(_env_name(section, key) for key in _RETIRED.get(section, ()))
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


# libpq keywords (`host=db dbname=x`) that have an equivalent in the URIs asyncpg reads.
_URI_KEYWORDS = (
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
    "application_name",
    "options",
)
_DSN_WHERE = "[database] dsn"
_DSN_FORMS = (
    "expected a postgresql:// URI (postgresql://user@host:5432/dbname) "
    "or libpq keyword=value pairs (host=... dbname=...)"
)
# `key = value`: the value single-quoted (backslash escapes) or a run without whitespace.
_KEYWORD_PAIR = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)"
)


def _parse_keyword_dsn(text: str) -> dict[str, str] | None:
    """libpq's `key=value ...` form (values optionally single-quoted, backslash escapes); None
    when `text` is not in that form."""
    pairs: dict[str, str] = {}
    pos = 0
    while text[pos:].strip():
        match = _KEYWORD_PAIR.match(text, pos)
        if match is None or (match.end() < len(text) and not text[match.end()].isspace()):
            return None
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = value[1:-1]
        pairs[key] = re.sub(r"\\(.)", r"\1", value)
        pos = match.end()
    return pairs or None


def _keyword_dsn_to_uri(pairs: dict[str, str], problems: list[str]) -> str | None:
    """The URI asyncpg reads that means what the libpq keywords mean."""
    unsupported = sorted(k for k in pairs if k not in _URI_KEYWORDS)
    if unsupported:
        hint = " (use [database] connect_timeout_s)" if "connect_timeout" in unsupported else ""
        problems.append(
            f"{_DSN_WHERE}: keyword(s) {', '.join(unsupported)} not supported{hint}; "
            f"supported: {', '.join(_URI_KEYWORDS)}"
        )
        return None
    params = dict(pairs)
    user, password = params.pop("user", ""), params.pop("password", "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host, port = params.get("host", ""), params.get("port", "")
    netloc = ""
    if host and not host.startswith("/") and "," not in host and "," not in port:
        # One TCP host goes in the authority (readable in logs); sockets and lists in the query.
        del params["host"]
        params.pop("port", None)
        netloc = f"[{host}]" if ":" in host else quote(host, safe="")
        netloc += f":{port}" if port else ""
    if auth:
        netloc = f"{auth}@{netloc}"
    path = "/" + quote(params.pop("dbname", ""), safe="")
    query = urlencode(params)
    return f"postgresql://{netloc}{path}" + (f"?{query}" if query else "")


def _valid_ports(text: str) -> bool:
    return all(p.isdigit() and p.isascii() and 1 <= int(p) <= 65535 for p in text.split(","))


def _check_dsn_uri(dsn: str, problems: list[str]) -> bool:
    """Check what asyncpg would refuse (or misread) only when connecting. Problems never quote
    the DSN, which may hold a password."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        problems.append(f"{_DSN_WHERE}: not a valid URI")
        return False
    if parts.scheme not in ("postgresql", "postgres"):
        problems.append(f"{_DSN_WHERE}: the URI must start with postgresql:// or postgres://")
        return False
    # asyncpg splits the credentials off at the first '@'.
    hostspec = parts.netloc.partition("@")[2] if "@" in parts.netloc else parts.netloc
    ok, bad_port = True, False
    for spec in hostspec.split(",") if hostspec else []:
        if spec.startswith("["):
            match = re.fullmatch(r"\[[^\]]+\](?::(.*))?", spec)
            if match is None:
                problems.append(f"{_DSN_WHERE}: an IPv6 host must be written [address]:port")
                ok = False
                continue
            port = match.group(1)
        else:
            port = spec.partition(":")[2]
        bad_port = bad_port or bool(port and not _valid_ports(port))  # empty: the default
    if parts.query:
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            problems.append(f"{_DSN_WHERE}: the query (after '?') must be key=value pairs")
            return False
        bad_port = bad_port or ("port" in query and not _valid_ports(query["port"]))
    if bad_port:
        problems.append(f"{_DSN_WHERE}: the port must be a number 1..65535")
    return ok and not bad_port


def _check_dsn(dsn: str, problems: list[str]) -> str | None:
    """`dsn` as the URI asyncpg reads (a libpq keyword DSN is converted), or None after
    appending what is wrong with it."""
    text = dsn.strip()
    if "://" not in text:
        pairs = _parse_keyword_dsn(text) if "=" in text else None
        if pairs is None:
            problems.append(f"{_DSN_WHERE}: {_DSN_FORMS}")
            return None
        converted = _keyword_dsn_to_uri(pairs, problems)
        if converted is None:
            return None
        text = converted
    return text if _check_dsn_uri(text, problems) else None


def _check_account_keys(accounts: tuple[AccountConfig, ...], problems: list[str]) -> None:
    """Load every RSA/Ed25519 private key now, so a bad key stops the start, not the first
    signed request."""
    from collector.rest.signing import make_signer  # noqa: PLC0415  (signing imports this module)

    for account in accounts:
        if account.key_type == "hmac":
            continue
        try:
            make_signer(account.key_type, account.api_secret, account.name)
        except ConfigError as exc:
            problems.extend(exc.problems)


def load_config(environ: Mapping[str, str], toml_path: Path | None = None) -> Config:
    """Build the configuration from defaults, the TOML file (if any) and `environ`.

    Raises `ConfigError` listing every problem found; nothing starts with a bad config.
    `toml_path` defaults to `$COLLECTOR_CONFIG` when that is set.
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
    known_top = {*_SECTIONS, "accounts", "shutdown_grace_s"}
    for key in data:
        if key not in known_top:
            problems.append(f"{key}: unknown section (known: {', '.join(sorted(known_top))})")
    _check_environment(environ, data.get("accounts"), problems)
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"[{name}]: expected a table")
            table = {}
        sections[name] = _build_section(cls, name, table, environ, problems)
    dsn = sections["database"].dsn
    if dsn is not None:
        uri = _check_dsn(dsn.reveal(), problems)
        sections["database"] = dataclasses.replace(
            sections["database"], dsn=Secret(uri) if uri else dsn
        )
    raw_grace, where = _raw_setting(data, "shutdown_grace_s", None, environ, problems)
    grace = None
    if raw_grace is not dataclasses.MISSING:
        grace = _coerce(raw_grace, float, where, problems)
    accounts = _build_accounts(data.get("accounts", []), environ, problems)
    _check_account_keys(accounts, problems)
    config = Config(
        **sections,
        shutdown_grace_s=grace if grace is not None else _DEFAULT_GRACE_S,
        accounts=accounts,
    )
    _validate(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def load_from_process(toml_path: Path | None) -> Config:
    """`load_config` against this process's environment."""
    return load_config(os.environ, toml_path)
