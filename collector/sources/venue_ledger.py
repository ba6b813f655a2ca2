"""The coverage ledger of one Bybit or OKX websocket session, as `binance_ledger` is Binance's
(both are `session_ledger.LedgerRow`).

`VenueLedger` keeps the session's row (`SessionRecord` with its `venue`); `last_session_end`
reads back when the ledger's latest session of a venue stopped covering (OKX's restart repair).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

from collector.metrics import Metrics
from collector.model import SessionRecord, Sink
from collector.sources.session_ledger import LedgerRow
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


class VenueLedger(LedgerRow[VenueLiquidation, str]):
    """One session's ledger row and event counts (see `LedgerRow`): events are counted per
    market for `collector_venue_events_received_total` by venue."""

    def __init__(
        self, spec: LinkSpec, sink: Sink, metrics: Metrics, release: asyncio.Event
    ) -> None:
        super().__init__(sink, metrics, release)
        self._spec = spec

    async def open(self, streams: tuple[str, ...]) -> None:
        """Record the session as opened now (and alive until now), reading `streams`."""
        spec = self._spec
        now = datetime.now(UTC)
        await self._put_opened(
            SessionRecord(
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
        )

    def _count_key(self, row: VenueLiquidation) -> str:
        return row.market

    def _publish(self, counts: Mapping[str, int], last_event_at: datetime) -> None:
        venue = self._spec.venue.value
        for market, count in counts.items():
            self._metrics.venue_events_received.labels(venue, market).inc(count)
        self._metrics.venue_last_event_timestamp.labels(venue).set(last_event_at.timestamp())
