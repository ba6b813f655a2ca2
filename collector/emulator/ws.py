"""Server side of one Binance WebSocket market-stream host (fstream or dstream).

Reproduces docs/binance.md §1: `/ws/<stream>` (bare payloads), `/ws` (then SUBSCRIBE)
and `/stream?streams=a/b` (combined envelope); on fstream the same under the `/public`,
`/market` and `/private` routes, with liquidation data only on `/market` (§1.1). Live control
messages (§1.5), server pings with a pong deadline, the 10 messages/s limit and the 24 h cut
(§1.4). Which events go to which host is decided by `core.Emulator`; this module owns the
connections and writes pre-serialised frames to them.

Close codes are the emulator's choice (Binance does not document them): 1008 for the message
rate limit, invalid JSON and a missed pong, 1001 for the lifetime cut, a scripted server close
and emulator shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from http import HTTPStatus
from typing import Any, Final, TypeVar

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from collector.emulator.ws_control import ControlError, answer
from collector.emulator.ws_state import (
    Connection,
    ConnectionInfo,
    EmulatorStats,
    Faults,
    StreamIndex,
    WsSettings,
)

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

FORCE_ORDER_ARR: Final = "!forceOrder@arr"
ROUTES: Final = ("public", "market", "private")
"""fstream route prefixes (§1.1); only `/market` carries liquidation streams."""


_UNCORK_HIGH_WATER = 4 * 1024 * 1024


class StreamHost:
    """One WebSocket host: its aiohttp application, its connections and their subscriptions."""

    def __init__(
        self,
        name: str,
        *,
        is_routed: bool,
        settings: WsSettings,
        faults: Faults,
        stats: EmulatorStats,
        on_change: Callable[[], None],
    ) -> None:
        self.name = name
        self.is_routed = is_routed
        self._settings = settings
        self._faults = faults
        self._stats = stats
        self._on_change = on_change
        self._connections: dict[Connection, None] = {}
        # Only connections that may receive liquidation data are indexed (fstream /market and
        # every dstream connection): stream name → connections, in connection order.
        self._subscribers = StreamIndex()  # only connections whose route carries data
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_id = 1
        self.app = web.Application()
        paths = ["/ws", "/ws/{stream}", "/stream"]
        if is_routed:
            route = "/{route:" + "|".join(ROUTES) + "}"
            paths += [route + p for p in paths]
        for path in paths:
            self.app.router.add_get(path, self._handle)

    @property
    def connections(self) -> list[ConnectionInfo]:
        """Open connections, oldest first."""
        return [c.info for c in self._connections if c.info.close_reason is None]

    # -- delivery -----------------------------------------------------------------------------

    async def deliver(self, streams: Sequence[str], payload: bytes) -> int:
        """Send `payload` once per subscribed stream in `streams` to each subscriber (bare on raw
        connections, enveloped on combined ones); return the number of distinct sockets reached.
        """
        targets = self._subscribers.targets(streams, payload)
        if not targets:
            return 0
        reached: set[Connection] = set()
        for conn, data in targets:
            if await conn.send(data):
                reached.add(conn)
                self._stats.frames_sent += 1
        return len(reached)

    def cork(self) -> None:
        """Collect data frames instead of writing each: one socket write per connection per
        generator tick (a syscall per frame was most of the emulator's CPU at high rates)."""
        for conn in self._connections:
            conn.corked = []

    async def uncork(self) -> None:
        """Write what `cork` collected, frames in order, then wait while a socket is backed up."""
        for conn in list(self._connections):
            frames, conn.corked = conn.corked, None
            transport = conn.request.transport
            if not frames or transport is None or transport.is_closing():
                continue
            transport.write(b"".join(frames))
            while (  # noqa: ASYNC110
                not transport.is_closing()
                and transport.get_write_buffer_size() > _UNCORK_HIGH_WATER
            ):
                # The client reads slowly: backpressure. (aiohttp's flow-control waiter is
                # private, so poll the public buffer size.)
                await asyncio.sleep(0.001)

    def stall_connection(self, connection_id: int, seconds: float) -> bool:
        """Deliver no data to the connection with `connection_id` for `seconds` (its socket stays
        open, pings and control replies go on; 0 ends it); False if no such connection is open."""
        for conn in self._connections:
            if conn.info.id == connection_id and conn.info.close_reason is None:
                conn.stalled_until = time.monotonic() + seconds
                return True
        return False

    async def send_text(self, data: bytes) -> int:
        """Send one text frame to every open connection; return how many took it."""
        sent = 0
        for conn in list(self._connections):
            if conn.info.close_reason is None and await conn.send(data):
                sent += 1
        self._stats.frames_sent += sent
        return sent

    def drop(self, ids: Collection[int] | None = None) -> int:
        """Abort every open connection's (or those with `ids`) TCP transport, with no close
        frame; return the count."""
        dropped = 0
        for conn in list(self._connections):
            if conn.info.close_reason is not None or (ids is not None and conn.info.id not in ids):
                continue
            self._mark_closed(conn, "dropped")
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
            dropped += 1
        return dropped

    def close_connections(self) -> int:
        """Close every open connection with 1001 and a close frame, as a server cut does (the
        lifetime cut, maintenance); return the count. Handlers finish in the background."""
        closing = 0
        for conn in list(self._connections):
            if conn.info.close_reason is None:
                self._begin_close(conn, "closed", WSCloseCode.GOING_AWAY, b"Server closing")
                closing += 1
        return closing

    async def close_all(self) -> None:
        """Close every connection with 1001 (going away) and wait for the handlers to finish."""
        for conn in list(self._connections):
            self._begin_close(conn, "server_stop", WSCloseCode.GOING_AWAY, b"Server shutting down")
        closers = [c.closer for c in self._connections if c.closer is not None]
        if closers:
            await asyncio.gather(*closers, return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- connection lifecycle -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info.get("route")
        is_combined = request.path.endswith("/stream")
        if is_combined:
            names = [s for s in request.query.get("streams", "").split("/") if s]
        else:
            stream = request.match_info.get("stream")
            names = [stream] if stream else []
        ws = web.WebSocketResponse(
            autoping=False,  # we must see the client's pongs, and count its pings (§1.4)
            compress=False,
            timeout=self._settings.close_timeout_s,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="Expected a WebSocket upgrade")
        failure = self._faults.take_upgrade_failure()
        if failure is not None:
            self._stats.upgrades_failed += 1
            return web.Response(status=failure, text=f"{HTTPStatus(failure).phrase}.")
        unique = dict.fromkeys(names)
        if len(unique) > self._settings.max_streams:
            self._stats.upgrades_rejected += 1
            return web.Response(status=400, text="Too many streams")
        await ws.prepare(request)
        self._stats.upgrades += 1
        info = ConnectionInfo(
            id=self._next_id,
            host=self.name,
            path=request.path,
            route=route,
            is_combined=is_combined,
            opened_at=time.time(),
            subscriptions=unique,
        )
        self._next_id += 1
        conn = Connection(info, ws, request)
        self._connections[conn] = None
        self._index(conn, unique)
        keeper = self._spawn(self._keep_alive(conn))
        log.debug("emulator.ws_opened", host=self.name, path=request.path_qs, id=info.id)
        self._on_change()
        try:
            await self._read(conn)
        finally:
            keeper.cancel()
            # asyncio.wait, unlike await, neither raises the task's error nor cancels the task
            # when this handler is cancelled.
            await asyncio.wait([keeper])
            if conn.closer is not None:
                await asyncio.wait([conn.closer])
            self._mark_closed(conn, "client_closed")
            del self._connections[conn]
            log.debug("emulator.ws_closed", host=self.name, id=info.id, reason=info.close_reason)
            self._on_change()
        return ws

    def _carries_liquidations(self, conn: Connection) -> bool:
        return not self.is_routed or conn.info.route == "market"

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _mark_closed(self, conn: Connection, reason: str) -> bool:
        """Record why `conn` closes and stop sending it data; False if it was already closing."""
        if conn.info.close_reason is not None:
            return False
        conn.info.close_reason = reason
        self._stats.disconnects[reason] += 1
        self._subscribers.remove(conn, conn.info.subscriptions)
        return True

    def _index(self, conn: Connection, names: Iterable[str]) -> None:
        """Deliver the streams `names` to `conn` (when its route carries liquidations)."""
        if self._carries_liquidations(conn):
            self._subscribers.add(conn, names)

    def _begin_close(self, conn: Connection, reason: str, code: int, message: bytes) -> None:
        """Start a server-initiated close in its own task, so that neither the reader nor the
        keep-alive task cancels it by finishing."""
        if self._mark_closed(conn, reason):
            conn.closer = self._spawn(conn.ws.close(code=code, message=message))
            self._on_change()

    async def _read(self, conn: Connection) -> None:
        ws = conn.ws
        info = conn.info
        limit = self._settings.max_incoming_per_s
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if info.close_reason is not None:
                continue  # closing: drain until the close handshake ends
            info.messages_received += 1
            # §1.4: more than `limit` incoming messages (PING, PONG, JSON) within 1 s → dropped.
            now = time.monotonic()
            recent = conn.incoming
            recent.append(now)
            while recent and recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) > limit:
                self._begin_close(conn, "rate_limit", WSCloseCode.POLICY_VIOLATION, b"Too many")
                continue
            if msg.type is WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                self._on_pong(conn, msg.data)
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self._on_control(conn, msg.data)
            self._on_change()

    def _on_pong(self, conn: Connection, payload: bytes) -> None:
        info = conn.info
        info.pongs_received += 1
        info.last_pong_payload = payload
        self._stats.pongs_received += 1
        pending = conn.pending_pings
        matched = any(sent == payload for sent, _ in pending)
        if matched:  # answers this ping and every older one
            while pending:
                if pending.popleft()[0] == payload:
                    break
        info.last_pong_matched = matched

    async def _keep_alive(self, conn: Connection) -> None:
        """Ping every `ping_interval_s`, close after a missed pong or at `max_lifetime_s`."""
        settings = self._settings
        info = conn.info
        next_ping = conn.opened_mono + settings.ping_interval_s
        lifetime_end = conn.opened_mono + settings.max_lifetime_s
        while True:
            now = time.monotonic()
            if now >= lifetime_end:
                self._begin_close(conn, "lifetime", WSCloseCode.GOING_AWAY, b"Lifetime exceeded")
                return
            pending = conn.pending_pings
            if pending and now >= pending[0][1] + settings.pong_timeout_s:
                self._begin_close(conn, "pong_timeout", WSCloseCode.POLICY_VIOLATION, b"No pong")
                return
            if now >= next_ping:
                payload = str(time.time_ns() // 1_000_000).encode()
                pending.append((payload, now))
                try:
                    await conn.ws.ping(payload)
                except ConnectionError:
                    return
                info.pings_sent += 1
                info.last_ping_payload = payload
                self._stats.pings_sent += 1
                next_ping = now + settings.ping_interval_s
            wake = min(lifetime_end, next_ping)
            if pending:
                wake = min(wake, pending[0][1] + settings.pong_timeout_s)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    # -- live control (§1.5) --------------------------------------------------------------------

    async def _on_control(self, conn: Connection, data: str | bytes) -> None:
        subscribe = functools.partial(self._subscribe, conn)
        unsubscribe = functools.partial(self._unsubscribe, conn)
        reply, is_json = answer(conn.info, data, subscribe, unsubscribe)
        if not is_json:  # §1.4: invalid JSON gets its reply, then the connection is dropped
            if await conn.send(reply):
                self._stats.frames_sent += 1
            self._begin_close(conn, "invalid_json", WSCloseCode.POLICY_VIOLATION, b"Invalid JSON")
            return
        released = self._faults.replies_released
        if released is not None:
            self._on_change()  # the request counts as received while its reply waits
            await released.wait()
        if await conn.send(reply):
            self._stats.frames_sent += 1

    def _subscribe(self, conn: Connection, names: list[str]) -> None:
        subscriptions = conn.info.subscriptions
        new = [n for n in dict.fromkeys(names) if n not in subscriptions]
        if len(subscriptions) + len(new) > self._settings.max_streams:
            # Binance does not document this reply; the wording is the emulator's.
            raise ControlError(
                2, f"Invalid request: too many streams (max {self._settings.max_streams})"
            )
        subscriptions.update(dict.fromkeys(new))
        self._index(conn, new)

    def _unsubscribe(self, conn: Connection, names: list[str]) -> None:
        subscriptions = conn.info.subscriptions
        gone = [n for n in dict.fromkeys(names) if n in subscriptions]
        for name in gone:
            del subscriptions[name]
        self._subscribers.remove(conn, gone)
