"""The coverage ledger of one websocket session: when we were (and were not) listening.

`SessionLedger` keeps the session's `ws_sessions` row: when it opened, was subscribed, received
its first and last event, last read everything the server had sent, and closed (and why). Each
snapshot goes to the sink, which upserts it by session id. It also counts the session's events
for Prometheus, published with each snapshot rather than per event.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from collector.metrics import Metrics
from collector.model import MarketLiquidation, SessionRecord, Sink
from collector.sources.binance_plan import ShardSpec, stream_kind


class SessionLedger:
    """One session's ledger row and event counts. `release` is the session's draining flag: once
    set, snapshots go behind a full sink instead of waiting for room."""

    def __init__(
        self, spec: ShardSpec, sink: Sink, metrics: Metrics, release: asyncio.Event
    ) -> None:
        self._spec = spec
        self._sink = sink
        self._metrics = metrics
        self._release = release
        self.record: SessionRecord | None = None
        self.events_received = 0
        self.first_event_at: datetime | None = None
        self.last_event_at: datetime | None = None
        # Whether the reader is waiting on the socket (everything that arrived has been read),
        # and the last moment it was seen so: the ledger's liveness mark.
        self.receiving = False
        self.read_through_at: datetime | None = None
        # Events per (market, stream kind) not yet added to the Prometheus counter.
        self._unpublished: dict[tuple[str, str], int] = {}

    async def open(self) -> None:
        """Record the session as opened now (and alive until now)."""
        spec = self._spec
        now = self.read_through_at = datetime.now(UTC)
        self.record = SessionRecord(
            session_id=uuid.uuid4(),
            connection=spec.name,
            host=spec.host,
            route=spec.route,
            url=spec.url,
            streams=spec.streams,
            opened_at=now,
            last_alive_at=now,
        )
        await self._sink.put(self.record, release=self._release)

    def count(self, row: MarketLiquidation) -> bool:
        """Count one event received; True when it is the session's first."""
        self.events_received += 1
        first = self.first_event_at is None
        if first:
            self.first_event_at = row.received_at
        self.last_event_at = row.received_at
        # Counted locally and published on each snapshot: prometheus_client's locked inc() per
        # event was a measurable share of the hot path.
        key = (row.market.value, stream_kind(row.source_stream))
        self._unpublished[key] = self._unpublished.get(key, 0) + 1
        self._metrics.mark_event()
        return first

    def read_through(self) -> datetime:
        """Until when everything the server sent is known to be read: now while the reader
        waits on the socket, else the last moment it was seen waiting. (A reader held up by a
        full sink has frames buffered unread; time it did not read is not covered.)"""
        if self.receiving or self.read_through_at is None:
            self.read_through_at = datetime.now(UTC)
        return self.read_through_at

    async def snapshot(self, **changes: Any) -> None:
        """Publish the event counts and put the row, as of now, with `changes` (e.g.
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
        host = self._spec.host
        for (market, kind), count in self._unpublished.items():
            self._metrics.events_received.labels(host, market, kind).inc(count)
        if self._unpublished and self.last_event_at is not None:
            self._metrics.last_event_timestamp.labels(host).set(self.last_event_at.timestamp())
        self._unpublished.clear()
