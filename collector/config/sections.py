"""The Binance collector's sections: database, Binance, writer, HTTP, log, REST, the
`[[accounts]]` and the whole `Config` (fields with their rules: `collector.config.settings`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from collector.config.dsn import check_dsn
from collector.config.sections_out import AlertConfig, FeedConfig, NatsConfig
from collector.config.sections_venues import BybitConfig, OkxConfig, VenuesConfig
from collector.config.settings import (
    DAY,
    HTTP_URL,
    UP_TO_10MIN,
    UP_TO_DAY,
    UP_TO_HOUR,
    UP_TO_WEEK,
    WEEK,
    WS_URL,
    AccountKind,
    KeyType,
    Product,
    Reconnecting,
    Rule,
    Secret,
    between,
    one_of,
    ordered,
    setting,
    upper,
)
from collector.exceptions import ConfigError

if TYPE_CHECKING:  # cryptography (~8 MB resident) is imported only when a key is loaded
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


def _dsn_uri(dsn: Secret, problems: list[str]) -> Secret:
    uri = check_dsn(dsn.reveal(), problems)  # a libpq keyword DSN becomes the URI asyncpg reads
    return Secret(uri) if uri else dsn


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where rows go. With no `dsn`, an embedded PostgreSQL runs in `embedded_dir`."""

    dsn: Secret | None = setting(None, convert=_dsn_uri)
    embedded_dir: str = ".collector/pgdata"
    pool_min_size: int = setting(1, between(1, 100))
    pool_max_size: int = setting(4, between(1, 100))
    connect_timeout_s: float = setting(10.0, UP_TO_10MIN)
    migrate_on_start: bool = True
    # The dashboards' per-minute/hour/day rollups are brought up to date this often.
    rollup_interval_s: float = setting(30.0, UP_TO_DAY)
    # `collector_database_up` follows a `SELECT 1` through the pool this often, each bounded by
    # `ping_timeout_s` (besides the writer's own commits and failures).
    ping_interval_s: float = setting(10.0, UP_TO_HOUR)
    ping_timeout_s: float = setting(3.0, UP_TO_10MIN)

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from ordered(self, "pool_min_size", "pool_max_size", "min <= max")


@dataclass(frozen=True, slots=True)
class BinanceConfig(Reconnecting):
    """Binance endpoints and which liquidation streams to follow (and the `Reconnecting`
    settings)."""

    # Settings that older files may still hold; accepted and ignored. healthy_after_s: the
    # backoff now resets when a connection is confirmed, however long it then lives.
    RETIRED: ClassVar[frozenset[str]] = frozenset({"healthy_after_s"})

    fstream_url: str = setting("wss://fstream.binance.com", WS_URL)
    dstream_url: str = setting("wss://dstream.binance.com", WS_URL)
    fapi_url: str = setting("https://fapi.binance.com", HTTP_URL)
    dapi_url: str = setting("https://dapi.binance.com", HTTP_URL)
    papi_url: str = setting("https://papi.binance.com", HTTP_URL)
    sapi_url: str = setting("https://api.binance.com", HTTP_URL)
    # `!forceOrder@arr` on the USD-M /market route: since the 2026 merge it carries COIN-M too.
    all_market: bool = True
    # Also `!forceOrder@arr` on the COIN-M host (overlaps the above; deduplicated).
    coin_m_all_market: bool = False
    # Extra per-symbol `<symbol>@forceOrder` streams.
    usdm_symbols: tuple[str, ...] = ()
    coinm_symbols: tuple[str, ...] = ()
    max_streams_per_connection_usdm: int = setting(1024, between(1, 1024))
    max_streams_per_connection_coinm: int = setting(200, between(1, 200))
    # Make-before-break rotation ahead of Binance's 24 h cut.
    rotate_after_s: float = setting(23 * 3600.0, between(60, DAY, above=True))
    # Connection attempts (all shards) per 5 minutes, so a server that cuts every session
    # cannot get the IP banned. Spot documents "300 connections per attempt every 5 minutes
    # per IP" (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams);
    # futures document no number, only that "IPs that are repeatedly disconnected may be
    # banned" (https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams).
    connection_attempts_per_5min: int = setting(300, between(1, 10_000))
    # Control messages (SUBSCRIBE, LIST, pongs) per second per connection; Binance allows 10.
    control_messages_per_s: float = setting(
        4.0,
        Rule(
            lambda v: 0 < v < 10,
            "must be above 0 and below 10 (Binance disconnects at 10 messages/s)",
        ),
    )
    exchange_info_refresh_s: float = setting(3600.0, UP_TO_WEEK)
    # No frame at all (not even Binance's 3-minute ping) for this long means the link is dead.
    # Data silence alone never is: liquidation feeds can be quiet for minutes.
    idle_timeout_s: float = setting(600.0, UP_TO_DAY)
    # The ledger's per-session liveness mark (`last_alive_at`) is refreshed this often, to the
    # last moment the reader was caught up (not while it waits for writer queue space).
    heartbeat_s: float = setting(
        5.0,
        between(
            0,
            10,
            above=True,
            note=" (the ledger counts an open session live for 30 s after its mark)",
        ),
    )
    # Independent connections holding each shard at once: every event arrives on each, the
    # content key stores it once, so one connection's drop, cut or stall loses nothing.
    # Connection i of a shard first rotates after rotate_after_s * (1 - i / (2 * redundancy)),
    # so the connections of a shard never rotate at the same time.
    redundancy: int = setting(2, between(1, 4))
    # A connection that received no data frame for this long while a twin of its shard
    # received events in that time is stale: it is replaced (close reason `stale`). Silence on
    # every connection of a shard is a quiet market, not a fault.
    stall_after_s: float = setting(60.0, UP_TO_DAY)

    def validate(self) -> Iterator[tuple[str, str]]:
        if not (
            self.all_market or self.coin_m_all_market or self.usdm_symbols or self.coinm_symbols
        ):
            yield (
                "",
                "no stream selected (all_market, coin_m_all_market, usdm_symbols or coinm_symbols)",
            )
        yield from Reconnecting.validate(self)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """The bounded queue and the batching writer."""

    queue_max: int = setting(20_000, between(1, 10_000_000))
    batch_max_rows: int = setting(5_000, between(1, 1_000_000))
    batch_max_age_s: float = setting(0.025, between(0, 60, above=True))
    # Database connections writing batches concurrently (encoding overlaps inserting).
    writers: int = setting(2, between(1, 64))
    retry_initial_s: float = setting(0.2, UP_TO_HOUR)
    retry_max_s: float = setting(10.0, UP_TO_HOUR)
    dedup_window: int = setting(50_000, between(0, 10_000_000))
    # What the database could not take before shutdown is written here and replayed on start.
    spill_dir: str = ".collector/spill"

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Metrics and health endpoints."""

    host: str = "127.0.0.1"
    port: int = setting(9108, between(0, 65535))
    # /readyz fails when the newest market event is older than this (0 disables the check).
    max_event_age_s: float = setting(0.0, between(0, WEEK))
    # The data-out API (/v1/...: feed, history, coverage). Off a loopback host it needs a bearer
    # token (`api_token_file`, a file holding it); the image sets api_enabled = false, as it
    # listens on 0.0.0.0 for Prometheus.
    api_enabled: bool = True
    api_token_file: str | None = None

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.api_token_file is not None:
            try:
                token = Path(self.api_token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                yield "api_token_file", f"cannot read {self.api_token_file!r}: {exc.strerror}"
                return
            if not token:
                yield "api_token_file", f"{self.api_token_file!r} is empty"
        elif self.api_enabled and not is_loopback(self.host):
            yield (
                "api_token_file",
                f"required when host {self.host!r} is not loopback and api_enabled"
                " (or set api_enabled = false)",
            )


def is_loopback(host: str) -> bool:
    """Whether `host` names only the loopback interface ("" means every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Log level and rendering (`auto`: JSON unless stderr is a TTY)."""

    level: str = setting("info", one_of("debug", "info", "warning", "error", ignore_case=True))
    format: str = setting("auto", one_of("auto", "json", "console"))


@dataclass(frozen=True, slots=True)
class RestConfig:
    """Signed REST polling of account force orders."""

    poll_interval_s: float = setting(60.0, UP_TO_DAY)
    # Share of each documented weight limit this process may use (others may share the IP).
    weight_share: float = setting(0.5, between(0, 1, above=True))
    # Each poll re-scans this trailing window so late rows are caught.
    overlap_s: float = setting(1800.0, between(0, WEEK))
    recv_window_ms: int = setting(5000, between(1, 60000, note=" (Binance's maximum)"))
    request_timeout_s: float = setting(10.0, UP_TO_10MIN)
    time_sync_interval_s: float = setting(300.0, UP_TO_DAY)
    retry_initial_s: float = setting(1.0, UP_TO_HOUR)
    retry_max_s: float = setting(60.0, UP_TO_DAY)
    # How long an account that failed authentication waits before trying again.
    auth_failure_backoff_s: float = setting(900.0, UP_TO_WEEK)
    # A failed poll of a scope is retried after poll_interval_s, doubling per further failure
    # (jittered) up to this; a successful poll resets it.
    poll_failure_backoff_max_s: float = setting(900.0, UP_TO_WEEK)
    enrich_margin_orders: bool = True
    # Margin order lookups (weight 10 each) per poll of one margin endpoint, so enrichment
    # never crowds out the force-order polls that share its budget.
    enrich_per_poll: int = setting(20, between(0, 1000))

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One Binance account whose own force orders are polled (`[[accounts]]`)."""

    name: str
    kind: AccountKind
    api_key: Secret = setting(credential=True)
    api_secret: Secret = setting(credential=True)
    key_type: KeyType = KeyType.HMAC
    products: tuple[Product, ...] = tuple(Product)
    isolated_symbols: tuple[str, ...] = setting((), convert=upper)
    # None: everything Binance keeps.
    backfill_days: float | None = setting(
        None, between(0, 3650, above=True, note=" (or unset: all Binance keeps)")
    )
    enabled: bool = True

    def validate(self) -> Iterator[tuple[str, str]]:
        # Every RSA/Ed25519 private key is loaded at start, so a bad key stops the start, not
        # the first signed request.
        if self.key_type != KeyType.HMAC:
            key = _private_key(self.key_type, self.api_secret)
            if isinstance(key, str):
                yield "api_secret", key


def _private_key(
    key_type: str, secret: Secret
) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | str:
    """`secret` as the PEM private key of `key_type`, or what is wrong (never quoting it)."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: PLC0415

    try:
        key = serialization.load_pem_private_key(secret.reveal().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return f"not a PEM private key for {key_type}"
    if key_type == KeyType.RSA and isinstance(key, rsa.RSAPrivateKey):
        return key
    if key_type == KeyType.ED25519 and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    return f"the PEM key is not {key_type}"


def load_private_key(
    key_type: str, secret: Secret, account: str
) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """`secret` as the PEM private key of an `rsa` or `ed25519` account. Raises `ConfigError`
    (naming the account, never the key) when it does not load or is not of `key_type`."""
    key = _private_key(key_type, secret)
    if isinstance(key, str):
        raise ConfigError([f"[[accounts]] {account!r} api_secret: {key}"])
    return key


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    binance: BinanceConfig = field(default_factory=BinanceConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    rest: RestConfig = field(default_factory=RestConfig)
    venues: VenuesConfig = field(default_factory=VenuesConfig)
    bybit: BybitConfig = field(default_factory=BybitConfig)
    okx: OkxConfig = field(default_factory=OkxConfig)
    shutdown_grace_s: float = setting(20.0, UP_TO_HOUR)
    accounts: tuple[AccountConfig, ...] = ()
    feed: FeedConfig = field(default_factory=FeedConfig)
    alerts: tuple[AlertConfig, ...] = ()
    nats: NatsConfig = field(default_factory=NatsConfig)
