"""What every session's coverage-ledger row shares, Binance's (`binance_ledger.SessionLedger`)
and the other venues' (`venue_ledger.VenueLedger`).

A `LedgerRow` keeps one session's `ws_sessions` row: when it opened, was subscribed, received
its first and last event, last read everything the server had sent, and closed (and why). Each
snapshot goes to the sink, which upserts it by session id. Event counts are kept per key and
reach Prometheus with each snapshot, not per event (prometheus_client's locked inc() per event
was a measurable share of the hot path). A subclass says how a row opens (`_new_record`), which
key an event counts under (`_count_key`) and which metrics it feeds (`_publish`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from collector.metrics import Metrics
from collector.model import SessionRecord, Sink


class CountedRow(Protocol):
    """What the ledger reads of a row it counts."""

    @property
    def received_at(self) -> datetime: ...


Row = TypeVar("Row", bound=CountedRow)
Key = TypeVar("Key", bound=Hashable)


class LedgerRow(Generic[Row, Key]):
    """One session's ledger row and event counts. `release` is the session's draining flag:
    once set, snapshots go behind a full sink instead of waiting for room."""

    def __init__(self, sink: Sink, metrics: Metrics, release: asyncio.Event) -> None:
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
        # Events per key not yet added to the Prometheus counters.
        self._unpublished: dict[Key, int] = {}

    # -- for subclasses ----------------------------------------------------------------------

    def _count_key(self, row: Row) -> Key:
        raise NotImplementedError

    def _publish(self, counts: Mapping[Key, int], last_event_at: datetime) -> None:
        """Add `counts` (not empty) to the metrics; `last_event_at` is the latest event's."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    async def _put_opened(self, record: SessionRecord) -> None:
        """Record the session as opened (alive until its `opened_at`)."""
        self.read_through_at = record.opened_at
        self.record = record
        await self._sink.put(record, release=self._release)

    def count(self, row: Row) -> bool:
        """Count one event received; True when it is the session's first."""
        self.events_received += 1
        first = self.first_event_at is None
        if first:
            self.first_event_at = row.received_at
        self.last_event_at = row.received_at
        key = self._count_key(row)
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
        """Publish the event counts and put the row, as of now, with `changes` (`streams`,
        `subscribed_at`, or `closed_at` and `close_reason` for the last snapshot)."""
        if self._unpublished and self.last_event_at is not None:
            self._publish(self._unpublished, self.last_event_at)
        self._unpublished.clear()
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
