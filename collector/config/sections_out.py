"""Data out (issue 11): `[feed]` (the live feed and the history API) and `[[alerts]]`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from collector.config.settings import (
    DAY,
    HTTP_URL,
    UP_TO_10MIN,
    UP_TO_DAY,
    UP_TO_HOUR,
    UP_TO_WEEK,
    AlertFormat,
    AlertKind,
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

    def validate(self) -> Iterator[tuple[str, str]]:
        # The feed hands a subscriber a page at a time: a smaller buffer would fail it at once.
        yield from ordered(self, "page_rows", "subscriber_buffer", "page_rows <= buffer")


_USD = between(0, 1e15, above=True)


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """One `[[alerts]]` rule, delivered by webhook. The URL is a secret (Slack's and Discord's
    carry their token): it is never logged."""

    name: str
    url: Secret = setting(rule=HTTP_URL)
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

    def validate(self) -> Iterator[tuple[str, str]]:
        if self.kind == AlertKind.LARGE and self.min_notional_usd is None:
            yield "min_notional_usd", "required for kind = large"
        if self.kind == AlertKind.CASCADE and self.threshold_usd is None:
            yield "threshold_usd", "required for kind = cascade"
        yield from ordered(self, "retry_initial_s", "retry_max_s", "initial <= max")
