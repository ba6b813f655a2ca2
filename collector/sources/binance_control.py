"""Control requests on one Binance websocket and their replies (docs/binance.md §1.5).

`ControlChannel` sends SUBSCRIBE / LIST_SUBSCRIPTIONS / UNSUBSCRIBE paced within Binance's limit
on incoming messages, matches each reply to its waiting caller by id, tells a late reply (to a
request whose caller stopped waiting) from an unexpected one, and runs the subscription
handshake: SUBSCRIBE what the URL could not carry, then confirm. Reading the socket is the
session's job (`binance_session`); it hands every control reply here.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson
import structlog

from collector.metrics import Metrics
from collector.sources.binance_parse import ControlReply
from collector.sources.binance_plan import ShardSpec

# Streams per SUBSCRIBE message: a request's params stay small, the pacer spaces the messages.
_SUBSCRIBE_CHUNK = 100
# How much of an unexpected control frame the warning quotes, and how many streams one lists.
_QUOTED_FRAME_CHARS = 500
_LOGGED_STREAMS = 20


class ConnectionClosed(Exception):
    """A connection ended; `reason` is a bounded label for metrics and the ledger."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Pacer:
    """Spaces control messages at most `rate_per_s` apart (Binance allows 10 incoming/s)."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval = 1.0 / rate_per_s
        self._next = 0.0

    async def wait(self) -> None:
        """Return when the next message may be sent."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        delay = self._next - now
        self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


class ControlChannel:
    """Requests and replies of one session. `closed` is the session's: once set, a waiting
    request raises `ConnectionClosed(why_closed())`, as does any request made after it."""

    def __init__(
        self,
        spec: ShardSpec,
        metrics: Metrics,
        rate_per_s: float,
        closed: asyncio.Event,
        why_closed: Callable[[], str],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._spec = spec
        self._host = spec.host
        self._metrics = metrics
        self._pacer = Pacer(rate_per_s)
        self._closed = closed
        self._why_closed = why_closed
        self._log = log
        self._pending: dict[int, asyncio.Future[ControlReply]] = {}
        # Ids of requests sent whose caller stopped waiting (the first event confirmed the
        # subscription before LIST_SUBSCRIPTIONS answered): their replies are expected.
        self._abandoned: set[int] = set()
        self._ids = itertools.count(1)

    async def request(
        self,
        ws: aiohttp.ClientWebSocketResponse | None,
        method: str,
        params: list[str] | None,
    ) -> ControlReply:
        """Send `method` on `ws` (after the pacer allows it) and return its reply.

        Raises `ConnectionClosed` when the session is (or becomes) closed before the reply.
        """
        if ws is None or self._closed.is_set():
            raise ConnectionClosed(self._why_closed())
        ident = next(self._ids)  # futures require an unsigned integer id (§1.5)
        future: asyncio.Future[ControlReply] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        message: dict[str, Any] = {"method": method, "id": ident}
        if params is not None:
            message["params"] = params
        sent = False
        await self._pacer.wait()
        try:
            await ws.send_str(orjson.dumps(message).decode())
            sent = True
            closed: asyncio.Future[Any] = asyncio.ensure_future(self._closed.wait())
            waiting: set[asyncio.Future[Any]] = {future, closed}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if not future.done():
                raise ConnectionClosed(self._why_closed())
            return future.result()
        finally:
            self._pending.pop(ident, None)
            if sent and not future.done():
                self._abandoned.add(ident)

    async def subscribe(
        self, ws: aiohttp.ClientWebSocketResponse | None, streams: Sequence[str]
    ) -> None:
        """SUBSCRIBE `streams` in paced chunks; raise `ConnectionClosed("subscribe_rejected")`
        when Binance refuses one."""
        streams = list(streams)
        for i in range(0, len(streams), _SUBSCRIBE_CHUNK):
            reply = await self.request(ws, "SUBSCRIBE", streams[i : i + _SUBSCRIBE_CHUNK])
            if reply.error is not None:
                self._metrics.ws_control_replies.labels(self._host, "error").inc()
                self._log.error("ws.subscribe_rejected", error=reply.error)
                raise ConnectionClosed("subscribe_rejected")

    async def confirm(
        self,
        ws: aiohttp.ClientWebSocketResponse | None,
        delivered: asyncio.Event,
        timeout_s: float,
    ) -> bool:
        """True once LIST_SUBSCRIPTIONS answers or an event arrives (`delivered`) within
        `timeout_s`.

        Raises `ConnectionClosed` when the list lacks a stream we SUBSCRIBEd. Whether Binance
        lists the streams named in the URL is not documented, so a list without them only logs.
        """
        listing = asyncio.ensure_future(self.request(ws, "LIST_SUBSCRIPTIONS", None))
        data: asyncio.Future[Any] = asyncio.ensure_future(delivered.wait())
        waiting: set[asyncio.Future[Any]] = {listing, data}
        try:
            await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            data.cancel()
            if not listing.done():
                listing.cancel()
        if listing.done() and not listing.cancelled():
            reply = listing.result()  # ConnectionClosed propagates
            if reply.error is not None:
                self._log.warning("ws.list_subscriptions_refused", error=reply.error)
                return True  # the server is alive and processed our request after the URL
            listed = set(reply.result) if isinstance(reply.result, list) else set()
            missing = set(self._spec.subscribed_streams) - listed
            if missing:
                self._metrics.ws_control_replies.labels(self._host, "error").inc()
                shown = sorted(missing)[:_LOGGED_STREAMS]
                self._log.error("ws.subscription_incomplete", missing=shown)
                raise ConnectionClosed("subscribe_rejected")
            unlisted = set(self._spec.url_streams) - listed
            if unlisted:
                shown = sorted(unlisted)[:_LOGGED_STREAMS]
                self._log.warning("ws.url_streams_unlisted", streams=shown)
            return True
        return delivered.is_set()

    def on_reply(self, reply: ControlReply, text: str) -> None:
        """Hand `reply` (read as `text`) to the request waiting for it; count and log the rest."""
        future = self._pending.get(reply.id) if reply.id is not None else None
        if future is not None and not future.done():
            future.set_result(reply)
            return
        if reply.id is not None and reply.id in self._abandoned:
            # A reply to a request we sent and no longer wait for: expected, not a warning.
            self._abandoned.discard(reply.id)
            self._metrics.ws_control_replies.labels(self._host, "late").inc()
            self._log.debug("ws.late_control_reply", id=reply.id, error=reply.error)
            return
        self._metrics.ws_control_replies.labels(self._host, "unexpected").inc()
        self._log.warning("ws.unexpected_control", frame=text[:_QUOTED_FRAME_CHARS])

    def fail_pending(self) -> None:
        """The session closed: every request still waiting raises `ConnectionClosed`."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(self._why_closed()))
