"""The feed: one reader per process follows the committed rows (LISTEN/NOTIFY wakes it, a poll
backs it up) and hands each row, in cursor order, to every subscriber's bounded buffer. A
subscriber that falls `subscriber_buffer` rows behind is failed with reason `slow_consumer`;
nothing here ever waits for a subscriber. With no subscriber it reads no rows: it only moves its
head to the newest final row (one indexed lookup), which is where a new subscriber joins and
what durable consumers (`collector.out.cursor`, reading their own ranges) wait on.

Catching up from a cursor (`Last-Event-ID`) reads the database through the pool
(`Feed.read_range`), up to where the subscriber joined the live rows, so nothing is missed
or sent twice. The HTTP side is `collector.out.api`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
import structlog

from collector.config import FeedConfig
from collector.exceptions import CollectorError
from collector.metrics import Metrics
from collector.out.events import (
    HEAD,
    HORIZON,
    PAGE,
    RANGE,
    RECEIVED,
    START,
    Cursor,
    FeedEvent,
    Filter,
    event_from_row,
)
from collector.retry import Policy

log = structlog.get_logger(__name__)

CHANNEL = "collector_liquidations"
# A notified transaction not yet below the horizon (an older writer still runs) is looked for
# again after 2 ms, doubling up to the poll interval.
_HORIZON_WAIT = Policy(0.002, 1.0)


class TooManySubscribers(CollectorError):
    """`[feed] max_subscribers` streams are open already."""


class Subscription:
    """One subscriber's bounded buffer of rows. The feed appends (never waits); the stream
    takes. `failed` is set once, with the reason the stream must end."""

    def __init__(self, match: Filter, capacity: int, joined_at: Cursor) -> None:
        self.match = match
        self.capacity = capacity
        # The feed's position when this subscriber joined: live rows are all after it.
        self.joined_at = joined_at
        self.failed: str | None = None
        self.on_fail: Callable[[], None] | None = None
        self._rows: deque[FeedEvent] = deque()
        self._ready = asyncio.Event()

    def offer(self, event: FeedEvent) -> None:
        """Buffer `event` if it matches; fail the subscription when the buffer is full."""
        if self.failed is not None or not self.match.matches(event):
            return
        if len(self._rows) >= self.capacity:
            self.fail("slow_consumer")
            return
        self._rows.append(event)
        self._ready.set()

    def fail(self, reason: str) -> None:
        """End the subscription with `reason` (the first reason stays)."""
        if self.failed is None:
            self.failed = reason
            self._rows.clear()
            self._ready.set()
            if self.on_fail is not None:
                self.on_fail()

    async def take(self) -> list[FeedEvent]:
        """Every buffered row, waiting until there is one (or the subscription fails: then
        an empty list)."""
        while not self._rows and self.failed is None:
            self._ready.clear()
            await self._ready.wait()
        rows = list(self._rows)
        self._rows.clear()
        return rows


class Feed:
    """The process's reader of committed rows (`run` is its component) and its subscribers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        config: FeedConfig,
        metrics: Metrics,
    ) -> None:
        self.pool = pool
        self.config = config
        self.metrics = metrics
        self.head: Cursor | None = None  # None until the first read
        # The head when this process's feed started: where a new durable consumer begins.
        self.first_head: Cursor | None = None
        self._connect = connect
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._notified_xid = 0  # the newest transaction a notification named
        self._started = asyncio.Event()
        self._moved = asyncio.Event()  # set (and replaced) whenever `head` moves

    # -- subscribers --------------------------------------------------------------------------

    async def started(self) -> Cursor:
        """The feed's head once it has read the database once."""
        await self._started.wait()
        assert self.head is not None
        return self.head

    def subscribe(self, match: Filter) -> Subscription:
        """A subscription to the rows after the current head; `TooManySubscribers` beyond
        `[feed] max_subscribers`. Call `unsubscribe` when done."""
        if len(self._subscribers) >= self.config.max_subscribers:
            raise TooManySubscribers
        assert self.head is not None, "await started() first"
        sub = Subscription(match, self.config.subscriber_buffer, self.head)
        self._subscribers.add(sub)
        self.metrics.feed_subscribers.set(len(self._subscribers))
        return sub

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The open subscriptions (for readiness and tests)."""
        return tuple(self._subscribers)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop feeding `sub` (idempotent)."""
        self._subscribers.discard(sub)
        self.metrics.feed_subscribers.set(len(self._subscribers))

    async def received_at(self, cursor: Cursor) -> datetime | None:
        """When the row at `cursor` was received; None when no row has that cursor."""
        value: datetime | None = await self.pool.fetchval(RECEIVED, cursor.xid, cursor.seq)
        return value

    async def read_range(
        self, after: Cursor, upto: Cursor, limit: int | None = None
    ) -> list[FeedEvent]:
        """At most `limit` (default `[feed] page_rows`) rows after `after`, up to and including
        `upto` (a head this feed read, so all of them are final), in order."""
        limit = self.config.page_rows if limit is None else limit
        rows = await self.pool.fetch(RANGE, after.xid, after.seq, upto.xid, upto.seq, limit)
        return [event_from_row(r) for r in rows]

    async def moved_past(self, cursor: Cursor, stop: asyncio.Event) -> bool:
        """Wait until the head is past `cursor` (True) or `stop` is set (False). Durable
        consumers (`collector.out.cursor`) wait here: the feed's notifications and poll wake
        them, with no query of their own."""
        while self.head is None or self.head <= cursor:
            if stop.is_set():
                return False
            await self._sleep_until(self._moved, stop)
        return True

    # -- the reader ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the committed rows until `stop` (a supervised component: a lost connection
        raises, and the restart resumes at `head`)."""
        conn = await self._connect()
        try:
            await conn.add_listener(CHANNEL, self._notified)
            if self.head is None:
                horizon = await conn.fetchval(HORIZON)
                row = await conn.fetchrow(HEAD, horizon)
                self.head = START if row is None else Cursor(row["xid"], row["seq"])
                self.first_head = self.head
                self._started.set()
            backoff = _HORIZON_WAIT.backoff()
            while not stop.is_set():
                self._wake.clear()
                horizon = await self._read(conn)
                if self._notified_xid >= horizon:  # committed, not yet final: look again soon
                    delay = min(backoff.next_delay(), self.config.poll_interval_s)
                else:
                    backoff.reset()
                    delay = self.config.poll_interval_s
                await self._sleep(delay, stop)
        finally:
            for sub in list(self._subscribers):
                if stop.is_set():
                    sub.fail("shutdown")
            with contextlib.suppress(Exception):
                await conn.close()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._notified_xid = max(self._notified_xid, int(payload))
        self._wake.set()

    async def _sleep_until(self, event: asyncio.Event, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _sleep(self, delay_s: float, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _read(self, conn: asyncpg.Connection) -> int:
        """Hand out every final row after `head` (with no subscriber, only move `head` to the
        newest of them); return the horizon it read below."""
        assert self.head is not None
        horizon: int = await conn.fetchval(HORIZON)
        page = self.config.page_rows
        while True:
            if self._subscribers:
                rows = await conn.fetch(PAGE, self.head.xid, self.head.seq, horizon, page)
                if rows:
                    self._dispatch([event_from_row(r) for r in rows])
                if len(rows) < page:
                    return horizon
                continue
            # Nobody to hand rows to: skip to the newest final row, where a subscriber that
            # joins next joins (no await between the check below and the move).
            newest = await conn.fetchrow(HEAD, horizon)
            if self._subscribers:  # one joined during the lookup, at the old head: read for it
                continue
            if newest is not None and (head := Cursor(newest["xid"], newest["seq"])) > self.head:
                self._move(head)
            return horizon

    def _dispatch(self, events: list[FeedEvent]) -> None:
        # No await in here: a subscriber joining sees `head` move only with the rows it covers.
        for event in events:
            for sub in self._subscribers:
                sub.offer(event)
        self.metrics.feed_rows.inc(len(events))
        self._move(events[-1].cursor)

    def _move(self, head: Cursor) -> None:
        self.head = head
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
