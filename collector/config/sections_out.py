"""Data out (issue 11): `[feed]` (the live feed, the history API, the durable consumers),
`[[alerts]]` and `[nats]` (the JetStream publisher)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from collector.config.settings import (
    DAY,
    HTTP_URL,
    UP_TO_10MIN,
    UP_TO_DAY,
    UP_TO_HOUR,
    UP_TO_WEEK,
    AlertFormat,
    AlertKind,
    Rule,
    Secret,
    between,
    ordered,
    setting,
    upper,
)


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """The committed-order feed behind /v1/liquidations/stream and the alerts."""

    # Besides LISTEN/NOTIFY, the feed looks for committed rows this often.
    poll_interval_s: float = setting(1.0, UP_TO_HOUR)
    # How far back `Last-Event-ID` may resume (by the event's received time); older: an error.
    lookback_s: float = setting(3600.0, UP_TO_WEEK)
    # A `: ping` comment on each stream this often, so proxies keep idle streams open.
    heartbeat_s: float = setting(15.0, UP_TO_HOUR)
    max_subscribers: int = setting(100, between(0, 100_000))
    # Events a subscriber may fall behind by before it is disconnected (`slow_consumer`).
    subscriber_buffer: int = setting(10_000, between(1, 1_000_000))
    # Rows read from the database per query (live and catching up).
    page_rows: int = setting(1000, between(1, 100_000))
    # The largest `limit` of GET /v1/liquidations.
    history_max_rows: int = setting(10_000, between(1, 1_000_000))
    # The alerts' durable cursor (migrations/0012, consumer_cursors): replicas sharing a
    # database share it, and a restart resumes at it.
    alerts_cursor: str = setting("alerts", Rule(bool, "must not be empty"))
    # Rows older than this (by received time) when the alerts reach them are skipped and
    # counted (collector_alerts_rows_skipped_total{reason="too_old"}): after a long stop, a
    # backlog is not sent as a burst of stale alerts.
    alerts_max_age_s: float = setting(900.0, UP_TO_WEEK)
    # Rows a durable consumer (alerts) takes per batch; its cursor moves once per batch.
    consumer_batch_rows: int = setting(500, between(1, 100_000))

    def validate(self) -> Iterator[tuple[str, str]]:
        # The feed hands a subscriber a page at a time: a smaller buffer would fail it at once.
        yield from ordered(self, "page_rows", "subscriber_buffer", "page_rows <= buffer")


def read_url_file(path: str) -> Secret:
    """The webhook URL held by the file `path` (stripped); OSError when it cannot be read."""
    return Secret(Path(path).read_text(encoding="utf-8").strip())


def _webhook_url_file(path: str, problems: list[str]) -> str:
    try:
        url = read_url_file(path)
    except OSError as exc:
        problems.append(f"[[alerts]] url_file: cannot read {path!r}: {exc.strerror or exc}")
        return path
    if urlsplit(url.reveal()).scheme not in ("http", "https"):  # the URL itself never shown
        problems.append(f"[[alerts]] url_file: {path!r} must hold an http:// or https:// URL")
    return path


_USD = between(0, 1e15, above=True)


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """One `[[alerts]]` rule, delivered by webhook. The URL is a secret (Slack's and Discord's
    carry their token): it is never logged."""

    name: str
    # Exactly one of `url` and `url_file` (a file holding the URL: a Docker/k8s secret).
    url: Secret | None = setting(None, HTTP_URL)
    kind: AlertKind = AlertKind.LARGE
    format: AlertFormat = AlertFormat.JSON
    venues: tuple[str, ...] = ()
    symbols: tuple[str, ...] = setting((), convert=upper)
    min_notional_usd: float | None = setting(None, _USD)  # large
    threshold_usd: float | None = setting(None, _USD)  # cascade
    window_s: float = setting(60.0, UP_TO_DAY)  # cascade
    # At most one delivery per this many seconds; alerts in between are dropped and counted.
    min_interval_s: float = setting(0.0, between(0, DAY))
    max_attempts: int = setting(5, between(1, 100))
    retry_initial_s: float = setting(1.0, UP_TO_HOUR)
    retry_max_s: float = setting(60.0, UP_TO_DAY)
    timeout_s: float = setting(10.0, UP_TO_10MIN)
    # Alerts waiting for delivery; beyond, new ones are dropped and counted.
    queue_max: int = setting(100, between(1, 100_000))
    url_file: str | None = setting(None, convert=_webhook_url_file)

    def webhook_url(self) -> Secret:
        """The URL to post to: `url`, or what `url_file` holds (read now)."""
        if self.url is not None:
            return self.url
        assert self.url_file is not None, "validate() requires url or url_file"
        return read_url_file(self.url_file)

    def validate(self) -> Iterator[tuple[str, str]]:
        if (self.url is None) == (self.url_file is None):
            yield "url/url_file", "set exactly one of url and url_file"
        if self.kind == AlertKind.LARGE and self.min_notional_usd is None:
            yield "min_notional_usd", "required for kind = large"
        if self.kind == AlertKind.CASCADE and self.threshold_usd is None:
            yield "threshold_usd", "required for kind = cascade"
        yield from ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")


# NATS subjects are dot-separated tokens; a token holds no whitespace, `.`, `*` or `>`.
_TOKEN = re.compile(r"[^\s.*>]+")
_STREAM_NAME = re.compile(r"[^\s.*>/\\]{1,255}")
_SUBJECT_PREFIX = Rule(
    lambda v: all(_TOKEN.fullmatch(t) for t in v.split(".")),
    "must be dot-separated tokens without spaces, '*' or '>', got {value!r}",
)
_NATS_URLS = Rule(
    lambda v: bool(v) and all(urlsplit(u).scheme in ("nats", "tls") for u in v),
    "must list one or more nats:// or tls:// URLs, got {value!r}",
)


def _readable(setting_name: str) -> Callable[[str, list[str]], str]:
    def convert(path: str, problems: list[str]) -> str:
        try:
            content = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"[nats] {setting_name}: cannot read {path!r}: {exc.strerror}")
            return path
        if not content:
            problems.append(f"[nats] {setting_name}: {path!r} is empty")
        return path

    return convert


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """The JetStream publisher (docs/nats.md): every committed row to
    `<subject_prefix>.<venue>.<symbol>`, acknowledged by JetStream before its durable cursor
    moves. Off by default; a broker that is down never stops collection."""

    enabled: bool = False
    servers: tuple[str, ...] = setting(("nats://127.0.0.1:4222",), _NATS_URLS)
    stream: str = setting("LIQUIDATIONS", Rule(
        lambda v: bool(_STREAM_NAME.fullmatch(v)), "must be a JetStream stream name (no spaces,"
        " '.', '*', '>', '/'), got {value!r}"))  # fmt: skip
    subject_prefix: str = setting("liquidations", _SUBJECT_PREFIX)
    # The publisher's durable cursor (consumer_cursors); replicas sharing it share progress.
    cursor: str = setting("nats", Rule(bool, "must not be empty"))
    # Create the stream when it does not exist (else: fail until someone creates it). An
    # existing stream is checked to capture <subject_prefix>.>, never changed.
    create_stream: bool = True
    # JetStream drops a message whose Nats-Msg-Id it stored within this window: the copy a
    # second replica (or a retry after a lost ack) publishes. Used when creating the stream.
    duplicate_window_s: float = setting(120.0, UP_TO_DAY)
    # Rows published per batch (the cursor moves once per batch, after every ack).
    batch_rows: int = setting(500, between(1, 100_000))
    publish_timeout_s: float = setting(5.0, UP_TO_10MIN)
    connect_timeout_s: float = setting(5.0, UP_TO_10MIN)
    # A batch the broker did not take (down, restarting, a lost ack) is published again after
    # a jittered backoff from retry_initial_s doubling up to retry_max_s; success resets it.
    retry_initial_s: float = setting(0.5, UP_TO_HOUR)
    retry_max_s: float = setting(30.0, UP_TO_HOUR)
    # Authentication, from files only (never the TOML itself): a NATS .creds file (JWT and
    # NKey seed), or a file holding a token. Neither is ever logged.
    credentials_file: str | None = setting(None, convert=_readable("credentials_file"))
    token_file: str | None = setting(None, convert=_readable("token_file"))

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.credentials_file is not None and self.token_file is not None:
            yield "credentials_file/token_file", "set at most one"
        yield from ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")
