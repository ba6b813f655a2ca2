"""Configuration: defaults < TOML file < environment, validated once at start.

`load_config(environ, toml_path)` returns a frozen `Config` or raises one `ConfigError`
listing every problem. Environment variables are `COLLECTOR_<SECTION>_<KEY>` (for example
`COLLECTOR_DATABASE_DSN`, `COLLECTOR_BINANCE_FSTREAM_URL`); any key also accepts
`..._FILE` naming a file whose stripped content is the value (Docker/k8s secrets).
Accounts (`[[accounts]]`) come from the TOML file only; their credentials are read from the
environment variables or files that the TOML names, never from the TOML itself.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def redact_dsn(dsn: str) -> str:
    """Return `dsn` with any password replaced by `***`, safe for logs."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable dsn>"
    if parts.password is None:
        return dsn
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


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
    if tp in (int, float):
        if isinstance(value, bool):
            problems.append(f"{where}: expected a number, got {value!r}")
            return None
        try:
            return tp(value)
        except (TypeError, ValueError):
            problems.append(
                f"{where}: expected {'an integer' if tp is int else 'a number'}, got {value!r}"
            )
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
        env_name = f"{ENV_PREFIX}{name.upper()}_{f.name.upper()}"
        raw: Any = dataclasses.MISSING
        where = f"[{name}] {f.name}"
        if f.name in toml:
            raw = toml[f.name]
        if env_name + "_FILE" in environ:
            where = f"{env_name}_FILE"
            content = _read_secret_file(environ[env_name + "_FILE"], where, problems)
            raw = dataclasses.MISSING if content is None else content
        if env_name in environ:
            raw, where = environ[env_name], env_name
        if raw is dataclasses.MISSING:
            continue
        value = _coerce(raw, hints[f.name], where, problems)
        if value is not None or raw in ("", None):
            values[f.name] = value
    return cls(**values)


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
        if backfill is not None and backfill <= 0:
            problems.append(f"{where} backfill_days: must be positive")
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


def _validate(config: Config, problems: list[str]) -> None:
    b, w, h = config.binance, config.writer, config.http
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
    if not 1 <= b.max_streams_per_connection_usdm <= 1024:
        problems.append("[binance] max_streams_per_connection_usdm: must be 1..1024")
    if not 1 <= b.max_streams_per_connection_coinm <= 200:
        problems.append("[binance] max_streams_per_connection_coinm: must be 1..200")
    if not 0 < b.control_messages_per_s < 10:
        problems.append(
            "[binance] control_messages_per_s: must be above 0 and below 10 "
            "(Binance disconnects at 10 messages/s)"
        )
    if b.rotate_after_s <= 60:
        problems.append("[binance] rotate_after_s: must be above 60")
    if b.reconnect_initial_s <= 0 or b.reconnect_max_s < b.reconnect_initial_s:
        problems.append("[binance] reconnect_initial_s/reconnect_max_s: need 0 < initial <= max")
    if not 0 < b.heartbeat_s <= 10:
        problems.append(
            "[binance] heartbeat_s: must be above 0 and at most 10 (the ledger counts an open "
            "session live for 30 s after its last mark)"
        )
    if b.connection_attempts_per_5min < 1:
        problems.append("[binance] connection_attempts_per_5min: must be at least 1")
    if b.reconnect_jitter_s < 0:
        problems.append("[binance] reconnect_jitter_s: must be 0 or more")
    if w.queue_max < 1 or w.batch_max_rows < 1 or w.writers < 1:
        problems.append("[writer] queue_max, batch_max_rows and writers: must be at least 1")
    if w.batch_max_age_s <= 0:
        problems.append("[writer] batch_max_age_s: must be positive")
    if not 0 <= h.port <= 65535:
        problems.append(f"[http] port: must be 0..65535, got {h.port}")
    if config.log.level.lower() not in ("debug", "info", "warning", "error"):
        problems.append("[log] level: must be debug, info, warning or error")
    if config.log.format not in ("auto", "json", "console"):
        problems.append("[log] format: must be auto, json or console")
    if not 0 < config.rest.weight_share <= 1:
        problems.append("[rest] weight_share: must be in (0, 1]")
    if config.rest.enrich_per_poll < 0:
        problems.append("[rest] enrich_per_poll: must be 0 or more")
    if not 0 < config.rest.recv_window_ms <= 60000:
        problems.append("[rest] recv_window_ms: must be 1..60000 (Binance's maximum)")
    if config.shutdown_grace_s <= 0:
        problems.append("shutdown_grace_s: must be positive")
    d = config.database
    if not 1 <= d.pool_min_size <= d.pool_max_size:
        problems.append("[database] pool_min_size/pool_max_size: need 1 <= min <= max")


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
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"[{name}]: expected a table")
            table = {}
        sections[name] = _build_section(cls, name, table, environ, problems)
    grace: Any = data.get("shutdown_grace_s", _DEFAULT_GRACE_S)
    if "COLLECTOR_SHUTDOWN_GRACE_S" in environ:
        grace = environ["COLLECTOR_SHUTDOWN_GRACE_S"]
    grace = _coerce(grace, float, "shutdown_grace_s", problems)
    accounts = _build_accounts(data.get("accounts", []), environ, problems)
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
