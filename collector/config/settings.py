"""The settings: one frozen dataclass per section, each field with its default and its rule.

A field's rule (`setting(default, rule)`) checks that one value; a section's `validate()` checks
what spans its fields. Reading files and the environment into these is `collector.config.loader`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from collector.config.dsn import check_dsn
from collector.exceptions import ConfigError

T = TypeVar("T")


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


class AccountKind(StrEnum):
    """Classic accounts poll fapi, dapi and sapi, Portfolio Margin ones papi
    (docs/binance.md §4.4)."""

    CLASSIC = "classic"
    PORTFOLIO_MARGIN = "portfolio_margin"


class KeyType(StrEnum):
    """How an account's API key signs requests (docs/binance.md §2.2)."""

    HMAC = "hmac"
    RSA = "rsa"
    ED25519 = "ed25519"


class Product(StrEnum):
    """Which book an account's force orders come from: USD-M or COIN-M futures, or margin."""

    UM = "um"
    CM = "cm"
    MARGIN = "margin"


class ApiFamily(StrEnum):
    """A Binance REST API: its base URL (`[binance] <family>_url`) and its server clock."""

    FAPI = "fapi"
    DAPI = "dapi"
    PAPI = "papi"
    SAPI = "sapi"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one setting's value must be; `message` says so (and may quote `{value!r}`)."""

    holds: Callable[[Any], bool]
    message: str

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None when it holds (None, an unset value, always does)."""
        return None if value is None or self.holds(value) else self.message.format(value=value)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def between(low: float, high: float, *, above: bool = False, note: str = "") -> Rule:
    """`low..high`; above `low` (not at it) when `above`."""

    def holds(value: float) -> bool:
        # Written so that NaN fails every comparison and is refused.
        low_ok = value > low if above else value >= low
        return low_ok and value <= high and not math.isnan(value)

    low_s, high_s = _number(low), _number(high)
    text = f"must be above {low_s} and at most {high_s}" if above else f"must be {low_s}..{high_s}"
    return Rule(holds, f"{text}{note}, got {{value!r}}")


def one_of(*choices: str, ignore_case: bool = False) -> Rule:
    """One of `choices` (compared in lower case when `ignore_case`)."""
    text = f"must be {', '.join(choices[:-1])} or {choices[-1]}"
    return Rule(lambda v: (v.lower() if ignore_case else v) in choices, text)


def url(*schemes: str) -> Rule:
    """A URL with one of `schemes`."""
    text = " or ".join(f"{s}://" for s in schemes)
    return Rule(lambda v: urlsplit(v).scheme in schemes, f"must start with {text}, got {{value!r}}")


Convert = Callable[[Any, list[str]], Any]


def setting(default: T, rule: Rule | None = None, *, convert: Convert | None = None) -> T:
    """A field with its `rule`; `convert(value, problems)` normalises a value that was set."""
    return field(default=default, metadata={"rule": rule, "convert": convert})


_DAY = 86400.0
_WEEK = 7 * _DAY
# Every number has a range. Durations are above 0 (a zero or negative interval would spin); the
# maxima catch unit mistakes (ms for s) and typos.
_UP_TO_10MIN = between(0, 600, above=True)
_UP_TO_HOUR = between(0, 3600, above=True)
_UP_TO_DAY = between(0, _DAY, above=True)
_UP_TO_WEEK = between(0, _WEEK, above=True)


def _ordered(section: object, low: str, high: str, need: str) -> Iterator[tuple[str, str]]:
    lo, hi = getattr(section, low), getattr(section, high)
    if lo > hi:
        yield f"{low}/{high}", f"need {need}, got {lo!r} > {hi!r}"


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
    connect_timeout_s: float = setting(10.0, _UP_TO_10MIN)
    migrate_on_start: bool = True
    # The dashboards' per-minute/hour/day rollups are brought up to date this often.
    rollup_interval_s: float = setting(30.0, _UP_TO_DAY)
    # `collector_database_up` follows a `SELECT 1` through the pool this often, each bounded by
    # `ping_timeout_s` (besides the writer's own commits and failures).
    ping_interval_s: float = setting(10.0, _UP_TO_HOUR)
    ping_timeout_s: float = setting(3.0, _UP_TO_10MIN)

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        yield from _ordered(self, "pool_min_size", "pool_max_size", "min <= max")


_WS, _HTTP = url("ws", "wss"), url("http", "https")


@dataclass(frozen=True, slots=True)
class BinanceConfig:
    """Binance endpoints and which liquidation streams to follow."""

    # Settings that older files may still hold; accepted and ignored. healthy_after_s: the
    # backoff now resets when a connection is confirmed, however long it then lives.
    RETIRED: ClassVar[frozenset[str]] = frozenset({"healthy_after_s"})

    fstream_url: str = setting("wss://fstream.binance.com", _WS)
    dstream_url: str = setting("wss://dstream.binance.com", _WS)
    fapi_url: str = setting("https://fapi.binance.com", _HTTP)
    dapi_url: str = setting("https://dapi.binance.com", _HTTP)
    papi_url: str = setting("https://papi.binance.com", _HTTP)
    sapi_url: str = setting("https://api.binance.com", _HTTP)
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
    rotate_after_s: float = setting(23 * 3600.0, between(60, _DAY, above=True))
    # Backoff over consecutive failed attempts (connect, upgrade, subscribe); a confirmed
    # connection resets it.
    reconnect_initial_s: float = setting(1.0, _UP_TO_HOUR)
    reconnect_max_s: float = setting(60.0, _UP_TO_DAY)
    # A confirmed connection that ends (for any reason) is replaced after a random delay in
    # [0, this], not after a backoff.
    reconnect_jitter_s: float = setting(0.25, between(0, 60))
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
    exchange_info_refresh_s: float = setting(3600.0, _UP_TO_WEEK)
    open_timeout_s: float = setting(10.0, _UP_TO_10MIN)
    # No frame at all (not even Binance's 3-minute ping) for this long means the link is dead.
    # Data silence alone never is: liquidation feeds can be quiet for minutes.
    idle_timeout_s: float = setting(600.0, _UP_TO_DAY)
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
    stall_after_s: float = setting(60.0, _UP_TO_DAY)

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        if not (
            self.all_market or self.coin_m_all_market or self.usdm_symbols or self.coinm_symbols
        ):
            yield (
                "",
                "no stream selected (all_market, coin_m_all_market, usdm_symbols or coinm_symbols)",
            )
        yield from _ordered(self, "reconnect_initial_s", "reconnect_max_s", "initial <= max")


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """The bounded queue and the batching writer."""

    queue_max: int = setting(20_000, between(1, 10_000_000))
    batch_max_rows: int = setting(5_000, between(1, 1_000_000))
    batch_max_age_s: float = setting(0.025, between(0, 60, above=True))
    # Database connections writing batches concurrently (encoding overlaps inserting).
    writers: int = setting(2, between(1, 64))
    retry_initial_s: float = setting(0.2, _UP_TO_HOUR)
    retry_max_s: float = setting(10.0, _UP_TO_HOUR)
    dedup_window: int = setting(50_000, between(0, 10_000_000))
    # What the database could not take before shutdown is written here and replayed on start.
    spill_dir: str = ".collector/spill"

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        yield from _ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Metrics and health endpoints."""

    host: str = "127.0.0.1"
    port: int = setting(9108, between(0, 65535))
    # /readyz fails when the newest market event is older than this (0 disables the check).
    max_event_age_s: float = setting(0.0, between(0, _WEEK))
    # The data-out API (/v1/...: feed, history, coverage). Off a loopback host it needs a bearer
    # token (`api_token_file`, a file holding it); the image sets api_enabled = false, as it
    # listens on 0.0.0.0 for Prometheus.
    api_enabled: bool = True
    api_token_file: str | None = None

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
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

    poll_interval_s: float = setting(60.0, _UP_TO_DAY)
    # Share of each documented weight limit this process may use (others may share the IP).
    weight_share: float = setting(0.5, between(0, 1, above=True))
    # Each poll re-scans this trailing window so late rows are caught.
    overlap_s: float = setting(1800.0, between(0, _WEEK))
    recv_window_ms: int = setting(5000, between(1, 60000, note=" (Binance's maximum)"))
    request_timeout_s: float = setting(10.0, _UP_TO_10MIN)
    time_sync_interval_s: float = setting(300.0, _UP_TO_DAY)
    retry_initial_s: float = setting(1.0, _UP_TO_HOUR)
    retry_max_s: float = setting(60.0, _UP_TO_DAY)
    # How long an account that failed authentication waits before trying again.
    auth_failure_backoff_s: float = setting(900.0, _UP_TO_WEEK)
    # A failed poll of a scope is retried after poll_interval_s, doubling per further failure
    # (jittered) up to this; a successful poll resets it.
    poll_failure_backoff_max_s: float = setting(900.0, _UP_TO_WEEK)
    enrich_margin_orders: bool = True
    # Margin order lookups (weight 10 each) per poll of one margin endpoint, so enrichment
    # never crowds out the force-order polls that share its budget.
    enrich_per_poll: int = setting(20, between(0, 1000))

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        yield from _ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")


VENUE_NAMES = ("binance", "bybit", "okx")
"""The venues the collector can record (`collector.venues.Venue`)."""


def _venue_names(names: tuple[str, ...], _problems: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip().lower() for n in names))


def _subset(*choices: str) -> Rule:
    """A non-empty list of `choices`, each at most once."""
    text = ", ".join(choices)
    return Rule(
        lambda v: bool(v) and set(v) <= set(choices) and len(set(v)) == len(v),
        f"must list one or more of {text}, each once, got {{value!r}}",
    )


@dataclass(frozen=True, slots=True)
class VenuesConfig:
    """Which venues' liquidations are recorded; each has its own section."""

    enabled: tuple[str, ...] = setting(
        VENUE_NAMES,
        Rule(
            lambda v: bool(v) and set(v) <= set(VENUE_NAMES),
            f"must name one or more known venues ({', '.join(VENUE_NAMES)}), got {{value!r}}",
        ),
        convert=_venue_names,
    )


@dataclass(frozen=True, slots=True)
class BybitConfig:
    """Bybit's v5 public `allLiquidation.{symbol}` streams and instruments-info
    (docs/bybit.md)."""

    ws_url: str = setting("wss://stream.bybit.com", _WS)
    rest_url: str = setting("https://api.bybit.com", _HTTP)
    categories: tuple[str, ...] = setting(("linear", "inverse"), _subset("linear", "inverse"))
    # The symbol list (new listings subscribed, delisted ones unsubscribed) is re-read this often.
    instruments_refresh_s: float = setting(3600.0, _UP_TO_WEEK)
    # `{"op":"ping"}` this often: "we recommend sending the ping heartbeat packet every 20
    # seconds" (https://bybit-exchange.github.io/docs/v5/ws/connect); a connection whose pong
    # does not come within `pong_timeout_s` is closed and replaced.
    heartbeat_s: float = setting(20.0, between(0, 600, above=True, note=" (Bybit cuts at 10 min)"))
    pong_timeout_s: float = setting(10.0, _UP_TO_10MIN)
    open_timeout_s: float = setting(10.0, _UP_TO_10MIN)
    reconnect_initial_s: float = setting(1.0, _UP_TO_HOUR)
    reconnect_max_s: float = setting(60.0, _UP_TO_DAY)
    reconnect_jitter_s: float = setting(0.25, between(0, 60))
    # "Do not build over 500 connections in 5 minutes" per domain
    # (https://bybit-exchange.github.io/docs/v5/rate-limit); we keep well under it.
    connection_attempts_per_5min: int = setting(250, between(1, 500))
    # Per connection, the JSON text of the subscribed args array (docs/bybit.md section 1.4).
    max_args_chars: int = setting(21_000, between(100, 21_000))

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        yield from _ordered(self, "reconnect_initial_s", "reconnect_max_s", "initial <= max")


@dataclass(frozen=True, slots=True)
class OkxConfig:
    """OKX's v5 public `liquidation-orders` channel, instruments and the REST gap repair
    (docs/okx.md)."""

    ws_url: str = setting("wss://ws.okx.com:8443", _WS)
    rest_url: str = setting("https://www.okx.com", _HTTP)
    inst_types: tuple[str, ...] = setting(
        ("SWAP", "FUTURES", "MARGIN"), _subset("SWAP", "FUTURES", "MARGIN")
    )
    # Contract terms (ctVal, ctMult, ctValCcy: SWAP/FUTURES notional) are re-read this often.
    instruments_refresh_s: float = setting(3600.0, _UP_TO_WEEK)
    # A text `ping` after this long without a message, below OKX's 30 s no-data cut
    # (https://www.okx.com/docs-v5/en/#overview-websocket-connect); no `pong` within
    # `pong_timeout_s` closes and replaces the connection.
    heartbeat_s: float = setting(20.0, between(0, 30, above=True, note=" (OKX cuts at 30 s)"))
    pong_timeout_s: float = setting(5.0, between(0, 30, above=True))
    open_timeout_s: float = setting(10.0, _UP_TO_10MIN)
    reconnect_initial_s: float = setting(1.0, _UP_TO_HOUR)
    reconnect_max_s: float = setting(60.0, _UP_TO_DAY)
    reconnect_jitter_s: float = setting(0.25, between(0, 60))
    # Gaps in coverage are read back from GET /api/v5/public/liquidation-orders (best effort:
    # a 404 or an error code switches it off until restart).
    repair: bool = True
    # How far back a repair reads (the endpoint keeps "the last day"), also for start-up.
    repair_lookback_s: float = setting(86400.0, between(0, _DAY, above=True))
    # Requests per 2 s the repair may make; the endpoint allows 40 per IP.
    repair_requests_per_2s: int = setting(20, between(1, 40))

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        yield from _ordered(self, "reconnect_initial_s", "reconnect_max_s", "initial <= max")
        if self.pong_timeout_s + self.heartbeat_s >= 30:
            yield (
                "heartbeat_s/pong_timeout_s",
                (
                    "need heartbeat_s + pong_timeout_s < 30 (OKX cuts a silent link at 30 s), "
                    f"got {self.heartbeat_s!r} + {self.pong_timeout_s!r}"
                ),
            )


def _upper(symbols: tuple[str, ...], _problems: list[str]) -> tuple[str, ...]:
    return tuple(s.upper() for s in symbols)


# Read from `<name>_env` (an environment variable's name) or `<name>_file`, never from the TOML.
_CREDENTIAL = {"credential": True}


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One Binance account whose own force orders are polled (`[[accounts]]`)."""

    name: str
    kind: AccountKind
    api_key: Secret = field(repr=False, metadata=_CREDENTIAL)
    api_secret: Secret = field(repr=False, metadata=_CREDENTIAL)
    key_type: KeyType = KeyType.HMAC
    products: tuple[Product, ...] = tuple(Product)
    isolated_symbols: tuple[str, ...] = setting((), convert=_upper)
    # None: everything Binance keeps.
    backfill_days: float | None = setting(
        None, between(0, 3650, above=True, note=" (or unset: all Binance keeps)")
    )
    enabled: bool = True


def load_private_key(
    key_type: str, secret: Secret, account: str
) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """`secret` as the PEM private key of an `rsa` or `ed25519` account. Raises `ConfigError`
    (naming the account, never the key) when it does not load or is not of `key_type`."""
    try:
        key = serialization.load_pem_private_key(secret.reveal().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            [f"[[accounts]] {account!r} api_secret: not a PEM private key for {key_type}"]
        ) from None
    if key_type == KeyType.RSA and isinstance(key, rsa.RSAPrivateKey):
        return key
    if key_type == KeyType.ED25519 and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ConfigError([f"[[accounts]] {account!r} api_secret: the PEM key is not {key_type}"])


# -- data out (issue 11): the live feed, the history API and alerts ------------------------------


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """The committed-order feed behind /v1/liquidations/stream and the alerts."""

    # Besides LISTEN/NOTIFY, the feed looks for committed rows this often.
    poll_interval_s: float = setting(1.0, _UP_TO_HOUR)
    # How far back `Last-Event-ID` may resume (by the event's received time); older: an error.
    lookback_s: float = setting(3600.0, _UP_TO_WEEK)
    # A `: ping` comment on each stream this often, so proxies keep idle streams open.
    heartbeat_s: float = setting(15.0, _UP_TO_HOUR)
    max_subscribers: int = setting(100, between(0, 100_000))
    # Events a subscriber may fall behind by before it is disconnected (`slow_consumer`).
    subscriber_buffer: int = setting(10_000, between(1, 1_000_000))
    # Rows read from the database per query (live and catching up).
    page_rows: int = setting(1000, between(1, 100_000))
    # The largest `limit` of GET /v1/liquidations.
    history_max_rows: int = setting(10_000, between(1, 1_000_000))

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        # The feed hands a subscriber a page at a time: a smaller buffer would fail it at once.
        yield from _ordered(self, "page_rows", "subscriber_buffer", "page_rows <= buffer")


class AlertKind(StrEnum):
    """`large`: one liquidation of at least min_notional_usd; `cascade`: the liquidated USD of
    one side within window_s reaches threshold_usd."""

    LARGE = "large"
    CASCADE = "cascade"


class AlertFormat(StrEnum):
    """The webhook body: our JSON, or Slack's / Discord's incoming-webhook shape."""

    JSON = "json"
    SLACK = "slack"
    DISCORD = "discord"


def _webhook_url(value: Secret, problems: list[str]) -> Secret:
    if urlsplit(value.reveal()).scheme not in ("http", "https"):
        problems.append("[[alerts]] url: must start with http:// or https://")  # never shown
    return value


_USD = between(0, 1e15, above=True)


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """One `[[alerts]]` rule, delivered by webhook. The URL is a secret (Slack's and Discord's
    carry their token): it is never logged."""

    name: str
    url: Secret = field(repr=False, metadata={"rule": None, "convert": _webhook_url})
    kind: AlertKind = AlertKind.LARGE
    format: AlertFormat = AlertFormat.JSON
    venues: tuple[str, ...] = ()
    symbols: tuple[str, ...] = setting((), convert=_upper)
    min_notional_usd: float | None = setting(None, _USD)  # large
    threshold_usd: float | None = setting(None, _USD)  # cascade
    window_s: float = setting(60.0, _UP_TO_DAY)  # cascade
    # At most one delivery per this many seconds; alerts in between are dropped and counted.
    min_interval_s: float = setting(0.0, between(0, _DAY))
    max_attempts: int = setting(5, between(1, 100))
    retry_initial_s: float = setting(1.0, _UP_TO_HOUR)
    retry_max_s: float = setting(60.0, _UP_TO_DAY)
    timeout_s: float = setting(10.0, _UP_TO_10MIN)
    # Alerts waiting for delivery; beyond, new ones are dropped and counted.
    queue_max: int = setting(100, between(1, 100_000))

    def validate(self) -> Iterator[tuple[str, str]]:
        """(settings, problem) for each rule that spans settings."""
        if self.kind == AlertKind.LARGE and self.min_notional_usd is None:
            yield "min_notional_usd", "required for kind = large"
        if self.kind == AlertKind.CASCADE and self.threshold_usd is None:
            yield "threshold_usd", "required for kind = cascade"
        yield from _ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    database: DatabaseConfig = DatabaseConfig()
    binance: BinanceConfig = BinanceConfig()
    writer: WriterConfig = WriterConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    rest: RestConfig = RestConfig()
    venues: VenuesConfig = VenuesConfig()
    bybit: BybitConfig = BybitConfig()
    okx: OkxConfig = OkxConfig()
    shutdown_grace_s: float = setting(20.0, _UP_TO_HOUR)
    accounts: tuple[AccountConfig, ...] = ()
    feed: FeedConfig = FeedConfig()
    alerts: tuple[AlertConfig, ...] = ()
