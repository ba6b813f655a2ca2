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
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, TypeVar

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

FORCE_ORDER_ARR: Final = "!forceOrder@arr"
ROUTES: Final = ("public", "market", "private")
"""fstream route prefixes (§1.1); only `/market` carries liquidation streams."""
METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_MAX_REQUEST_ID: Final = 2**64 - 1


@dataclass(slots=True)
class ConnectionInfo:
    """Live view of one server-side WebSocket connection (updated as it runs)."""

    id: int
    host: str
    """"fstream" or "dstream"."""
    path: str
    """Request path, e.g. "/market/stream"."""
    route: str | None
    """"public", "market" or "private" on a routed fstream path, else None."""
    is_combined: bool
    """Whether data is wrapped in `{"stream":…,"data":…}`; SET_PROPERTY may change it."""
    opened_at: float
    """Unix time (seconds) of the upgrade."""
    subscriptions: dict[str, None] = field(default_factory=dict)
    """Subscribed stream names in subscription order (see `streams`)."""
    messages_received: int = 0
    """Incoming frames that count toward the rate limit: text, binary, ping and pong."""
    pings_sent: int = 0
    pongs_received: int = 0
    last_ping_payload: bytes | None = None
    last_pong_payload: bytes | None = None
    last_pong_matched: bool | None = None
    """Whether the last pong echoed an unanswered server ping; None before the first pong."""
    frames_sent: int = 0
    """Text frames sent: data, raw frames and control replies."""
    close_reason: str | None = None

    @property
    def streams(self) -> set[str]:
        """The subscribed stream names."""
        return set(self.subscriptions)


@dataclass(slots=True)
class EmulatorStats:
    """Counters over the emulator's lifetime."""

    events_published: int = 0
    """Events handed to delivery, by `publish` or the generator."""
    events_generated: int = 0
    events_rate_capped: int = 0
    """Generated events skipped because no symbol was ready (each may emit once per 1000 ms);
    also happens when the emulator falls behind and catches up in one large batch."""
    events_stalled: int = 0
    """Events dropped because delivery was stalled."""
    frames_sent: int = 0
    upgrades: int = 0
    upgrades_failed: int = 0
    """Upgrades refused on purpose by `fail_upgrades`."""
    upgrades_rejected: int = 0
    """Upgrades refused with 400 because the URL named too many streams."""
    pings_sent: int = 0
    pongs_received: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    """Closed connections by reason: client_closed, rate_limit, invalid_json, pong_timeout,
    lifetime, dropped, closed (a scripted server close), server_stop."""


@dataclass(frozen=True, slots=True)
class WsSettings:
    """Per-connection rules of one host (§1.4)."""

    max_streams: int
    ping_interval_s: float
    pong_timeout_s: float
    max_lifetime_s: float
    max_incoming_per_s: int
    close_timeout_s: float = 2.0
    """How long a server-initiated close waits for the client's close frame."""


class Faults:
    """Faults scripted by tests, shared by both hosts."""

    def __init__(self) -> None:
        self.failing_upgrades = 0
        self.failure_status = 503
        self.stalled_until = 0.0
        """`time.monotonic()` until which data is not delivered."""
        self.replies_released: asyncio.Event | None = None
        """While not None, control replies wait until it is set (data keeps flowing)."""

    def take_upgrade_failure(self) -> int | None:
        """Return the HTTP status to refuse this upgrade with, or None to accept it."""
        if self.failing_upgrades <= 0:
            return None
        self.failing_upgrades -= 1
        return self.failure_status

    def is_stalled(self) -> bool:
        """Whether data delivery is currently stalled."""
        return self.stalled_until > 0.0 and time.monotonic() < self.stalled_until


@functools.lru_cache(maxsize=8192)
def _envelope_prefix(stream: str) -> bytes:
    return b'{"stream":' + orjson.dumps(stream) + b',"data":'


def envelope(stream: str, payload: bytes) -> bytes:
    """Wrap a serialised event in the combined-stream envelope (§1.2) without re-encoding it."""
    return b"".join((_envelope_prefix(stream), payload, b"}"))


class _ControlError(Exception):
    """A control request Binance answers with `{"error":{…},"id":…}`."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class _Connection:
    """Server-side state of one connection beyond what `ConnectionInfo` shows."""

    __slots__ = (
        "closer",
        "corked",
        "incoming",
        "info",
        "opened_mono",
        "pending_pings",
        "request",
        "stalled_until",
        "ws",
    )

    def __init__(self, info: ConnectionInfo, ws: web.WebSocketResponse, request: web.Request):
        self.info = info
        self.ws = ws
        self.request = request
        self.opened_mono = time.monotonic()
        self.pending_pings: deque[tuple[bytes, float]] = deque()
        """Unanswered server pings, oldest first: (payload, monotonic time sent)."""
        self.incoming: deque[float] = deque()
        """Monotonic times of the recent incoming messages, for the rate limit."""
        self.closer: asyncio.Task[bool] | None = None
        self.corked: list[bytes] | None = None
        """While not None, text frames are collected here and written at once by `uncork`."""
        self.stalled_until = 0.0
        """`time.monotonic()` until which this connection alone gets no data."""

    async def send(self, data: bytes) -> bool:
        """Write one text frame; return False if the socket is closing."""
        if self.corked is not None:
            if self.info.close_reason is not None:
                return False
            self.corked.append(_text_frame(data))
            self.info.frames_sent += 1
            return True
        try:
            await self.ws.send_frame(data, WSMsgType.TEXT)
        except ConnectionError:
            return False
        self.info.frames_sent += 1
        return True


def _text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed server text frame (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


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
        self._connections: dict[_Connection, None] = {}
        # Only connections that may receive liquidation data are indexed (fstream /market and
        # every dstream connection): stream name → connections, in connection order.
        self._subscribers: dict[str, dict[_Connection, None]] = {}
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
        targets: list[tuple[_Connection, bytes]] = []
        now = 0.0
        for stream in streams:
            subscribers = self._subscribers.get(stream)
            if not subscribers:
                continue
            wrapped: bytes | None = None
            for conn in subscribers:
                if conn.stalled_until:
                    now = now or time.monotonic()
                    if now < conn.stalled_until:
                        continue
                    conn.stalled_until = 0.0
                if conn.info.is_combined:
                    if wrapped is None:
                        wrapped = envelope(stream, payload)
                    targets.append((conn, wrapped))
                else:
                    targets.append((conn, payload))
        if not targets:
            return 0
        reached: set[_Connection] = set()
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
        conn = _Connection(info, ws, request)
        self._connections[conn] = None
        if self._carries_liquidations(conn):
            for name in unique:
                self._subscribers.setdefault(name, {})[conn] = None
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

    def _carries_liquidations(self, conn: _Connection) -> bool:
        return not self.is_routed or conn.info.route == "market"

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _mark_closed(self, conn: _Connection, reason: str) -> bool:
        """Record why `conn` closes and stop sending it data; False if it was already closing."""
        if conn.info.close_reason is not None:
            return False
        conn.info.close_reason = reason
        self._stats.disconnects[reason] += 1
        for name in conn.info.subscriptions:
            subscribers = self._subscribers.get(name)
            if subscribers is not None:
                subscribers.pop(conn, None)
                if not subscribers:
                    del self._subscribers[name]
        return True

    def _begin_close(self, conn: _Connection, reason: str, code: int, message: bytes) -> None:
        """Start a server-initiated close in its own task, so that neither the reader nor the
        keep-alive task cancels it by finishing."""
        if self._mark_closed(conn, reason):
            conn.closer = self._spawn(conn.ws.close(code=code, message=message))
            self._on_change()

    async def _read(self, conn: _Connection) -> None:
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

    def _on_pong(self, conn: _Connection, payload: bytes) -> None:
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

    async def _keep_alive(self, conn: _Connection) -> None:
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

    async def _on_control(self, conn: _Connection, data: str | bytes) -> None:
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # §1.4: invalid JSON gets this reply, then the connection is dropped.
            msg = f"Invalid JSON: expected value at line {exc.lineno} column {exc.colno}"
            if await conn.send(orjson.dumps({"error": {"code": 3, "msg": msg}})):
                self._stats.frames_sent += 1
            self._begin_close(conn, "invalid_json", WSCloseCode.POLICY_VIOLATION, b"Invalid JSON")
            return
        request_id = request.get("id") if isinstance(request, dict) else None
        if not _is_request_id(request_id):
            request_id = None
        try:
            reply: dict[str, Any] = {"result": self._execute(conn, request), "id": request_id}
        except _ControlError as exc:
            reply = {"error": {"code": exc.code, "msg": exc.msg}, "id": request_id}
        released = self._faults.replies_released
        if released is not None:
            self._on_change()  # the request counts as received while its reply waits
            await released.wait()
        if await conn.send(orjson.dumps(reply)):
            self._stats.frames_sent += 1

    def _execute(self, conn: _Connection, request: Any) -> Any:
        """Run one control request; return its `result` or raise `_ControlError`."""
        if not isinstance(request, dict):
            raise _ControlError(2, "Invalid request: expected a JSON object")
        if not _is_request_id(request.get("id")):
            raise _ControlError(2, "Invalid request: request ID must be an unsigned integer")
        if "method" not in request:
            raise _ControlError(2, "Invalid request: missing field `method`")
        method = request["method"]
        if method not in METHODS:
            shown = method if isinstance(method, str) else orjson.dumps(method).decode()
            raise _ControlError(
                2, f"Invalid request: unknown variant {shown}, expected one of {', '.join(METHODS)}"
            )
        params = request.get("params", [])
        if not isinstance(params, list):
            raise _ControlError(2, "Invalid request: params must be an array")
        info = conn.info
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                raise _ControlError(2, "Invalid request: stream names must be strings")
            if method == "SUBSCRIBE":
                self._subscribe(conn, params)
            else:
                self._unsubscribe(conn, params)
            return None
        if method == "LIST_SUBSCRIPTIONS":
            if params:
                raise _ControlError(2, "Invalid request: too many parameters")
            return list(info.subscriptions)
        max_params = 2 if method == "SET_PROPERTY" else 1
        if len(params) > max_params:
            raise _ControlError(2, "Invalid request: too many parameters")
        if not params or not isinstance(params[0], str):
            raise _ControlError(2, "Invalid request: property name must be a string")
        if params[0] != "combined":
            raise _ControlError(0, "Unknown property")
        if method == "GET_PROPERTY":
            return info.is_combined
        if len(params) < 2 or not isinstance(params[1], bool):
            raise _ControlError(1, "Invalid value type: expected Boolean")
        info.is_combined = params[1]
        return None

    def _subscribe(self, conn: _Connection, names: list[str]) -> None:
        subscriptions = conn.info.subscriptions
        new = [n for n in dict.fromkeys(names) if n not in subscriptions]
        if len(subscriptions) + len(new) > self._settings.max_streams:
            # Binance does not document this reply; the wording is the emulator's.
            raise _ControlError(
                2, f"Invalid request: too many streams (max {self._settings.max_streams})"
            )
        carries = self._carries_liquidations(conn)
        for name in new:
            subscriptions[name] = None
            if carries:
                self._subscribers.setdefault(name, {})[conn] = None

    def _unsubscribe(self, conn: _Connection, names: list[str]) -> None:
        subscriptions = conn.info.subscriptions
        for name in names:
            if name in subscriptions:
                del subscriptions[name]
                subscribers = self._subscribers.get(name)
                if subscribers is not None:
                    subscribers.pop(conn, None)
                    if not subscribers:
                        del self._subscribers[name]


def _is_request_id(value: Any) -> bool:
    """Futures wants an unsigned integer `id` (§1.5); JSON booleans and floats are not."""
    return type(value) is int and 0 <= value <= _MAX_REQUEST_ID
