"""Keeps one venue connection up: open a session, hold it until it ends, open the next.

A `Link` is `binance_ws.Shard`'s reconnect policy for one Bybit or OKX connection: consecutive
failed attempts (connect, upgrade, subscribe, a session that ended unconfirmed) back off with
jitter (`retry.Backoff`); a confirmed session that ends is replaced after a short random delay
and resets the backoff; every attempt is booked in the venue's connection budget
(`retry.AttemptBudget`, the documented connections-per-window limit). Each session is a row in
the coverage ledger; `on_subscribed(session, previous)` tells the venue (gap repair) when a
session is confirmed and which one ended before it (still open: a handover, no gap). A session
whose venue announced its end (`VenueSession.handover`, OKX's 64008) is replaced make-before-
break; `keep()` false before an attempt (Bybit: no topic left to hold) ends the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

import structlog

from collector.metrics import Metrics
from collector.retry import AttemptBudget, Backoff, sleep_or_stop
from collector.sources.venue_session import SessionClosed, VenueSession

log = structlog.get_logger(__name__)

Pause = Callable[[float, asyncio.Event], Awaitable[bool]]
OnSubscribed = Callable[[VenueSession, VenueSession | None], Awaitable[None]]
_LOGGED_ERROR_CHARS = 300


class Link:
    """One connection of a venue, reconnected until `stop` (or `retire()`)."""

    def __init__(
        self,
        name: str,
        venue: str,
        new_session: Callable[[], VenueSession],
        metrics: Metrics,
        *,
        backoff: Backoff,
        jitter_s: float,
        budget: AttemptBudget,
        rng: random.Random | None = None,
        pause: Pause = sleep_or_stop,
        on_subscribed: OnSubscribed | None = None,
        keep: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self._venue = venue
        self._new_session = new_session
        self._metrics = metrics
        self.backoff = backoff
        self._jitter_s = jitter_s
        self._budget = budget
        self._rng = rng or random.Random()
        self._pause = pause
        self._on_subscribed = on_subscribed
        self._keep = keep
        """Asked before each new session: False ends the link (nothing left to hold)."""
        self.ended = False
        """True once the loop stopped because `keep()` said so."""
        self._retired = asyncio.Event()
        self.current: VenueSession | None = None
        # During a handover: the session being opened to take over, then the one it replaces
        # until that is closed (run() closes both if it is stopped meanwhile).
        self._successor: VenueSession | None = None
        self._outgoing: VenueSession | None = None
        self.previous: VenueSession | None = None
        """The last session that was subscribed and has ended (the start of a gap)."""
        self.log = log.bind(venue=venue, connection=name)

    @property
    def is_up(self) -> bool:
        """Whether a subscribed session is open."""
        current = self.current
        return current is not None and current.subscribed.is_set() and not current.closed.is_set()

    def retire(self) -> None:
        """Stop this link (its session closes) without stopping the others."""
        self._retired.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Hold a session until `stop` or `retire()`; the live one is closed on the way out.

        A stop interrupts whatever the loop waits for (an upgrade, a subscribe reply, a
        backoff), so shutdown never waits out a silent server's timeouts."""
        halt = asyncio.Event()
        watcher = asyncio.ensure_future(self._halt_on(stop, halt))
        holding = asyncio.ensure_future(self._loop(halt))
        try:
            await asyncio.wait({watcher, holding}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not holding.done():
                holding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await holding
            for session in (self._successor, self._outgoing, self.current):
                if session is not None:
                    await session.close("shutdown" if stop.is_set() else "retired")
        if not holding.cancelled():
            holding.result()  # a bug in the loop propagates to the supervisor

    async def _halt_on(self, stop: asyncio.Event, halt: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._retired.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        halt.set()

    async def _loop(self, halt: asyncio.Event) -> None:
        venue = self._venue
        delay = 0.0
        while not halt.is_set():
            if self._keep is not None and not self._keep():
                self.ended = True
                self.log.warning("venue_ws.nothing_to_hold")
                return
            wait_s = self._within_budget(delay)
            if wait_s > 0:
                await self._pause(wait_s, halt)
                if halt.is_set():
                    return
            session = self._new_session()
            self.current = session
            try:
                await session.open()
            except SessionClosed as exc:
                self._metrics.venue_ws_reconnects.labels(venue, exc.reason).inc()
                delay = self.backoff.next_delay()
                cause = exc.__cause__
                self.log.warning(
                    "venue_ws.connect_failed",
                    reason=exc.reason,
                    error=str(cause)[:_LOGGED_ERROR_CHARS] if cause else None,
                    retry_in_s=round(delay, 3),
                )
                continue
            self.backoff.reset()
            if self._on_subscribed is not None:
                await self._on_subscribed(session, self.previous)
            session = await self._hold(session, halt)
            if halt.is_set():
                return
            self.previous = session
            self._metrics.venue_ws_reconnects.labels(venue, session.close_reason).inc()
            if session.close_reason == "reader_failed":
                delay = self.backoff.next_delay()  # a bug must not make us hammer the server
            else:
                delay = self._rng.random() * self._jitter_s
            self.log.warning(
                "venue_ws.reconnect_scheduled", reason=session.close_reason, delay_s=round(delay, 3)
            )

    async def _hold(self, session: VenueSession, halt: asyncio.Event) -> VenueSession:
        """Hold `session` until it closes or `halt`; return the session that ended.

        When the venue announces a session's end (`session.handover`), its successor is opened
        first and the old one closed only once the successor is subscribed (reason
        `service_upgrade`), so the ledger has no gap; if the successor cannot open, the old one
        is held until the venue closes it, and the loop reconnects as after any close."""
        while True:
            await self._wait_any(session.closed, halt, session.handover)
            if halt.is_set() or session.closed.is_set():
                return session
            successor = await self._open_successor(halt)
            if successor is None:
                await self._wait_any(session.closed, halt)
                return session
            self._outgoing, self.current, self._successor = session, successor, None
            if self._on_subscribed is not None:
                await self._on_subscribed(successor, session)
            await session.close("service_upgrade")
            self._outgoing = None
            self._metrics.venue_ws_reconnects.labels(self._venue, "service_upgrade").inc()
            self.log.info("venue_ws.handed_over", reason="service_upgrade")
            self.previous = session
            session = successor

    async def _open_successor(self, halt: asyncio.Event) -> VenueSession | None:
        """Open the session that takes over from the current one; None if it could not."""
        wait_s = self._within_budget(0.0)
        if wait_s > 0 and await self._pause(wait_s, halt):
            return None
        successor = self._successor = self._new_session()  # run() closes it if cancelled
        try:
            await successor.open()
        except SessionClosed as exc:
            self._successor = None
            self._metrics.venue_ws_reconnects.labels(self._venue, exc.reason).inc()
            self.log.warning("venue_ws.handover_failed", reason=exc.reason)
            return None
        return successor

    @staticmethod
    async def _wait_any(*events: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(event.wait()) for event in events}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _within_budget(self, delay: float) -> float:
        """`delay`, lengthened if the attempt after it would exceed the connection budget (the
        attempt is booked)."""
        now = time.monotonic()
        at = now + delay
        booked = self._budget.reserve(at)
        return delay if booked == at else booked - now
