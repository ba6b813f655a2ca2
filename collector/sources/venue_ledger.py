"""The coverage ledger of one Bybit or OKX websocket session, as `binance_ledger` is Binance's.

`VenueLedger` keeps the session's row (`SessionRecord` with its `venue`): when it opened, was
subscribed, received its first and last event, last read everything the server had sent, and
closed (and why). Each snapshot goes to the sink, which upserts it by session id. Event counts
reach Prometheus with each snapshot, not per event.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from collector.metrics import Metrics
from collector.model import SessionRecord, Sink
from collector.venues import Venue, VenueLiquidation

log = structlog.get_logger(__name__)

_LAST_SESSION_END = """
SELECT max(coalesce(closed_at, last_alive_at)) FROM ws_sessions
 WHERE venue = $1 AND subscribed_at IS NOT NULL
"""


async def last_session_end(pool: asyncpg.Pool, venue: Venue) -> datetime | None:
    """When the latest subscribed session of `venue` the ledger recorded stopped covering (its
    close, or its last sign of life if it never closed: a crash); None when there is none, or
    when the database cannot say (logged: the caller falls back to its look-back)."""
    try:
        async with pool.acquire() as conn:
            end: datetime | None = await conn.fetchval(_LAST_SESSION_END, venue.value)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("venue_ledger.last_session_unknown", venue=venue.value, error=repr(exc)[:300])
        return None
    return end


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """What one connection of a venue is: `name` labels it (`bybit/linear#0`), `host` is the
    stream host it reads (`linear`, `inverse`, `public`), `url` where it connects."""

    venue: Venue
    name: str
    host: str
    url: str


class VenueLedger:
    """One session's ledger row and event counts. `release` is the session's draining flag:
    once set, snapshots go behind a full sink instead of waiting for room."""

    def __init__(
        self, spec: LinkSpec, sink: Sink, metrics: Metrics, release: asyncio.Event
    ) -> None:
        self._spec = spec
        self._sink = sink
        self._metrics = metrics
        self._release = release
        self.record: SessionRecord | None = None
        self.events_received = 0
        self.first_event_at: datetime | None = None
        self.last_event_at: datetime | None = None
        # Whether the reader waits on the socket (everything that arrived has been read), and
        # the last moment it was seen so: the ledger's liveness mark.
        self.receiving = False
        self.read_through_at: datetime | None = None
        self._unpublished: dict[str, int] = {}

    async def open(self, streams: tuple[str, ...]) -> None:
        """Record the session as opened now (and alive until now), reading `streams`."""
        spec = self._spec
        now = self.read_through_at = datetime.now(UTC)
        self.record = SessionRecord(
            session_id=uuid.uuid4(),
            connection=spec.name,
            host=spec.host,
            route="",
            url=spec.url,
            streams=streams,
            opened_at=now,
            last_alive_at=now,
            venue=spec.venue.value,
        )
        await self._sink.put(self.record, release=self._release)

    def count(self, row: VenueLiquidation) -> bool:
        """Count one liquidation received; True when it is the session's first."""
        self.events_received += 1
        first = self.first_event_at is None
        if first:
            self.first_event_at = row.received_at
        self.last_event_at = row.received_at
        self._unpublished[row.market] = self._unpublished.get(row.market, 0) + 1
        self._metrics.mark_event()
        return first

    def read_through(self) -> datetime:
        """Until when everything the server sent is known to be read: now while the reader
        waits on the socket, else the last moment it was seen waiting."""
        if self.receiving or self.read_through_at is None:
            self.read_through_at = datetime.now(UTC)
        return self.read_through_at

    async def snapshot(self, **changes: Any) -> None:
        """Publish the event counts and put the row, as of now, with `changes` (`streams`,
        `subscribed_at`, or `closed_at` and `close_reason` for the last snapshot)."""
        self._publish_metrics()
        assert self.record is not None
        self.record = replace(
            self.record,
            last_alive_at=self.read_through(),
            first_event_at=self.first_event_at,
            last_event_at=self.last_event_at,
            events_received=self.events_received,
            **changes,
        )
        await self._sink.put(self.record, release=self._release)

    def _publish_metrics(self) -> None:
        venue = self._spec.venue.value
        for market, count in self._unpublished.items():
            self._metrics.venue_events_received.labels(venue, market).inc(count)
        if self._unpublished and self.last_event_at is not None:
            self._metrics.venue_last_event_timestamp.labels(venue).set(
                self.last_event_at.timestamp()
            )
        self._unpublished.clear()
