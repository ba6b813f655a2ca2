"""Bybit's venue-wide coverage in the ledger: one row open exactly while every listed symbol is
subscribed.

Bybit has no all-market topic (docs/bybit.md section 1.2): a session covers the topics it holds,
and the venue is covered only while every listed symbol of every configured category is held
by an open, subscribed session. `AllSymbolsLedger` keeps that claim as a ledger row of its own
(connection `bybit/all-symbols`, stream `allLiquidation.*`, the venue's `coverage_streams` since
migration 0014): opened when the last missing topic is subscribed, closed the moment one is
missing again (a session closed, a topic refused, a new listing not yet held), with the reason;
its liveness mark is the slowest contributing session's, so it never claims time a session did
not read. The sessions and categories call `update` whenever what they hold changes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

import structlog

from collector.model import SessionRecord, Sink
from collector.retry import sleep_or_stop
from collector.sources.venue_session import LEDGER_MARK_S, VenueSession
from collector.venues import Venue

log = structlog.get_logger(__name__)

CONNECTION = "bybit/all-symbols"
STREAM = "allLiquidation.*"
"""The ledger's name for "every listed symbol's allLiquidation topic"."""


class HeldTopics(Protocol):
    """What a category tells about itself: whether its symbol list is known, the topics it
    wants, and its live sessions."""

    @property
    def loaded(self) -> bool: ...

    def wanted_topics(self) -> Iterable[str]: ...

    def held_sessions(self) -> Sequence[VenueSession]: ...

    def held_topics(self) -> set[str]: ...


class AllSymbolsLedger:
    """The venue-wide row; see the module docstring."""

    def __init__(
        self,
        categories: Sequence[HeldTopics],
        sink: Sink,
        url: str,
        *,
        mark_s: float = LEDGER_MARK_S,
    ) -> None:
        self._categories = categories
        self._sink = sink
        self._url = url
        self._mark_s = mark_s
        self._lock = asyncio.Lock()
        self._release = asyncio.Event()
        self._release.set()  # a few small rows: never wait behind a full sink for them
        self.record: SessionRecord | None = None
        self.records: list[SessionRecord] = []
        """Every row opened (tests read them)."""

    def complete(self) -> bool:
        """Whether every configured category's symbol list is known and all of its topics are
        held by open, subscribed sessions."""
        for category in self._categories:
            if not category.loaded:
                return False
            if not set(category.wanted_topics()) <= category.held_topics():
                return False
        return True

    def _read_through(self, now: datetime) -> datetime:
        marks = [s.ledger.read_through() for c in self._categories for s in c.held_sessions()]
        return min([now, *marks])

    async def update(self, reason: str | None = None, at: datetime | None = None) -> None:
        """Open or close the row to match `complete()`. `reason`, `at`: what ended the cover
        and when, if a session's close did (else "incomplete", now)."""
        async with self._lock:
            now = datetime.now(UTC)
            complete = self.complete()
            if complete and self.record is None:
                self.record = SessionRecord(
                    session_id=uuid.uuid4(), connection=CONNECTION, host="all", route="",
                    url=self._url, streams=(STREAM,), opened_at=now, last_alive_at=now,
                    subscribed_at=now, venue=Venue.BYBIT.value,
                )  # fmt: skip
                self.records.append(self.record)
                await self._sink.put(self.record, release=self._release)
                log.info("bybit.all_symbols_covered", venue=Venue.BYBIT.value)
            elif not complete and self.record is not None:
                await self._close(reason or "incomplete", min(at or now, now))

    async def _close(self, reason: str, at: datetime) -> None:
        record = self.record
        assert record is not None
        self.record = None
        at = max(at, record.opened_at)
        closed = replace(
            record, last_alive_at=max(min(record.last_alive_at, at), record.opened_at),
            closed_at=at, close_reason=reason,
        )  # fmt: skip
        self.records[self.records.index(record)] = closed
        await self._sink.put(closed, release=self._release)
        log.warning("bybit.all_symbols_not_covered", venue=Venue.BYBIT.value, reason=reason)

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the open row's liveness mark until `stop`; then close it (`shutdown`)."""
        while not await sleep_or_stop(self._mark_s, stop):
            async with self._lock:
                if self.record is not None:
                    now = datetime.now(UTC)
                    self.record = replace(self.record, last_alive_at=self._read_through(now))
                    self.records[-1] = self.record
                    await self._sink.put(self.record, release=self._release)
        async with self._lock:
            if self.record is not None:
                await self._close("shutdown", datetime.now(UTC))
