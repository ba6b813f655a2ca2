"""The WebSocket and REST plumbing the Bybit and OKX emulators share (`bybit`, `okx`).

A `VenueWsHost` owns one aiohttp WebSocket application: its connections, their subscriptions,
the fault knobs the Binance emulator also has (drops, closes, stalls, refused upgrades, raw
malformed frames) and an idle cut whose deadline each venue defines. The venue modules decide
what a text message means and what goes where. `RateWindow` counts REST requests in a sliding
window on an injectable clock, so tests can fill a window without waiting for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

import structlog
from aiohttp import WSMsgType, web

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

Clock = Callable[[], float]


@dataclass(slots=True)
class VenueConnection:
    """Live view of one server-side connection of a Bybit or OKX emulator."""

    id: int
    conn_id: str
    """The venue's connection id, echoed in replies (`conn_id` on Bybit, `connId` on OKX)."""
    path: str
    opened_at: float
    """The host clock's time of the upgrade."""
    subscriptions: dict[str, None] = field(default_factory=dict)
    """Subscribed keys in subscription order (topics on Bybit, `channel:instType` on OKX)."""
    messages_received: int = 0
    frames_sent: int = 0
    last_sent_at: float = 0.0
    """The host clock's time of the last frame sent (the upgrade counts as one)."""
    subscribed_at: float | None = None
    close_reason: str | None = None
    close_code: int | None = None

    @property
    def topics(self) -> list[str]:
        """The subscribed keys, in order."""
        return list(self.subscriptions)


@dataclass(slots=True)
class VenueStats:
    """Counters over one emulator's lifetime."""

    events_published: int = 0
    events_stalled: int = 0
    frames_sent: int = 0
    upgrades: int = 0
    upgrades_failed: int = 0
    """Upgrades refused by `fail_upgrades`."""
    upgrades_rate_limited: int = 0
    """Upgrades refused by the connection-rate limit."""
    disconnects: Counter[str] = field(default_factory=Counter)


class RateWindow:
    """At most `limit` requests in any `window_s` seconds (a sliding window, one IP)."""

    def __init__(self, limit: int, window_s: float, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        """Replaceable: tests pin it so that a whole burst falls into one window."""
        self._times: deque[float] = deque()

    def admit(self) -> bool:
        """Count one request; False (and not counted) if the window is full."""
        now = self.clock()
        times = self._times
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


class _Conn:
    __slots__ = ("info", "request", "stalled_until", "ws")

    def __init__(self, info: VenueConnection, ws: web.WebSocketResponse, request: web.Request):
        self.info = info
        self.ws = ws
        self.request = request
        self.stalled_until = 0.0


OnText = Callable[["VenueWsHost", VenueConnection, str], Awaitable[None]]
IdleDeadline = Callable[[VenueConnection], "tuple[float, int, str] | None"]


class VenueWsHost:
    """One WebSocket host: connections on `paths`, their subscriptions, delivery and faults.

    `on_text` handles each text message; `idle_deadline(info)` returns (time, close code,
    reason) by which the connection is cut, or None. Times are on `clock` (the event loop's by
    default); `idle_check_s` is how often deadlines are checked.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[str],
        *,
        on_text: OnText,
        idle_deadline: IdleDeadline,
        connect_limit: RateWindow | None = None,
        connect_limit_status: int = 429,
        idle_check_s: float = 0.05,
    ) -> None:
        self.name = name
        self.stats = VenueStats()
        self._on_text = on_text
        self._idle_deadline = idle_deadline
        self._connect_limit = connect_limit
        self._connect_limit_status = connect_limit_status
        self._idle_check_s = idle_check_s
        self._conns: dict[int, _Conn] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_id = 1
        self._change: asyncio.Event | None = None
        self.failing_upgrades = 0
        self.failure_status = 503
        self.stalled_until = 0.0
        self.app = web.Application()
        for path in paths:
            self.app.router.add_get(path, self._handle)

    # -- clock ----------------------------------------------------------------------------------

    def now(self) -> float:
        """The host's clock: the running loop's time."""
        return asyncio.get_running_loop().time()

    # -- views ----------------------------------------------------------------------------------

    @property
    def connections(self) -> list[VenueConnection]:
        """Open connections, oldest first."""
        return [c.info for c in self._conns.values() if c.info.close_reason is None]

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until `predicate()` holds, re-checked whenever a connection opens, closes, sends
        or receives. Raises TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._change is None:
                    self._change = asyncio.Event()
                await self._change.wait()

    def notify(self) -> None:
        """Wake `wait_until` callers."""
        change, self._change = self._change, None
        if change is not None:
            change.set()

    # -- sending --------------------------------------------------------------------------------

    async def send(self, info: VenueConnection, data: str) -> bool:
        """Send one text frame to the connection; False if it is closing or gone."""
        conn = self._conns.get(info.id)
        if conn is None or info.close_reason is not None:
            return False
        try:
            await conn.ws.send_str(data)
        except ConnectionError:
            return False
        info.frames_sent += 1
        info.last_sent_at = self.now()
        self.stats.frames_sent += 1
        self.notify()
        return True

    async def deliver(self, key: str, data: str) -> int:
        """Send `data` to every open connection subscribed to `key` that is not stalled (nothing
        while the whole host is stalled); return how many took it."""
        self.stats.events_published += 1
        now = self.now()
        if self.stalled_until > now:
            self.stats.events_stalled += 1
            return 0
        reached = 0
        for conn in list(self._conns.values()):
            if key in conn.info.subscriptions and conn.stalled_until <= now:
                reached += await self.send(conn.info, data)
        return reached

    async def send_raw(self, text: str) -> int:
        """Send `text` (e.g. a malformed frame) to every open connection; return the count."""
        sent = 0
        for conn in list(self._conns.values()):
            sent += await self.send(conn.info, text)
        return sent

    # -- faults ---------------------------------------------------------------------------------

    def fail_upgrades(self, count: int, status: int = 503) -> None:
        """Refuse the next `count` upgrades with HTTP `status`."""
        self.failing_upgrades = count
        self.failure_status = status

    def stall(self, seconds: float) -> None:
        """Deliver no data for `seconds` (sockets stay open, replies go on); 0 ends it."""
        self.stalled_until = self.now() + seconds if seconds > 0 else 0.0

    def stall_connection(self, info: VenueConnection, seconds: float) -> bool:
        """Deliver no data to one connection for `seconds`; False if it is not open."""
        conn = self._conns.get(info.id)
        if conn is None or info.close_reason is not None:
            return False
        conn.stalled_until = self.now() + seconds
        return True

    def drop(self, info: VenueConnection | None = None) -> int:
        """Abort the TCP transport of every (or one) open connection, with no close frame."""
        dropped = 0
        for conn in list(self._conns.values()):
            if conn.info.close_reason is not None or (info is not None and conn.info is not info):
                continue
            self._mark_closed(conn.info, "dropped", None)
            if conn.request.transport is not None:
                conn.request.transport.abort()
            dropped += 1
        return dropped

    def close(
        self, info: VenueConnection | None = None, *, code: int = 1001, reason: str = "closed"
    ) -> int:
        """Close every (or one) open connection with `code` and a close frame; return the count.
        The close handshake finishes in the background."""
        closing = 0
        for conn in list(self._conns.values()):
            if info is not None and conn.info is not info:
                continue
            if self._begin_close(conn, reason, code):
                closing += 1
        return closing

    async def close_all(self) -> None:
        """Close every connection (1001) and wait for the handlers; stop the helper tasks."""
        self.close(code=1001, reason="server_stop")
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- lifecycle of one connection ------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, compress=False, timeout=2.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="Expected a WebSocket upgrade")
        if self.failing_upgrades > 0:
            self.failing_upgrades -= 1
            self.stats.upgrades_failed += 1
            status = self.failure_status
            return web.Response(status=status, text=f"{HTTPStatus(status).phrase}.")
        if self._connect_limit is not None and not self._connect_limit.admit():
            self.stats.upgrades_rate_limited += 1
            status = self._connect_limit_status
            return web.Response(status=status, text=f"{HTTPStatus(status).phrase}.")
        await ws.prepare(request)
        self.stats.upgrades += 1
        now = self.now()
        info = VenueConnection(
            id=self._next_id,
            conn_id=uuid.uuid4().hex[:8],
            path=request.path,
            opened_at=now,
            last_sent_at=now,
        )
        self._next_id += 1
        conn = _Conn(info, ws, request)
        self._conns[info.id] = conn
        keeper = self._spawn(self._keep(conn))
        log.debug("emulator.venue_ws_opened", host=self.name, path=request.path, id=info.id)
        self.notify()
        try:
            async for msg in ws:
                if info.close_reason is not None:
                    continue
                if msg.type is WSMsgType.TEXT:
                    info.messages_received += 1
                    await self._on_text(self, info, msg.data)
                    self.notify()
                elif msg.type is WSMsgType.BINARY:
                    info.messages_received += 1
                    await self._on_text(self, info, msg.data.decode(errors="replace"))
                    self.notify()
        finally:
            keeper.cancel()
            await asyncio.wait([keeper])
            self._mark_closed(info, "client_closed", ws.close_code)
            del self._conns[info.id]
            self.notify()
        return ws

    async def _keep(self, conn: _Conn) -> None:
        """Cut the connection at its idle deadline."""
        while conn.info.close_reason is None:
            deadline = self._idle_deadline(conn.info)
            if deadline is not None and self.now() >= deadline[0]:
                self._begin_close(conn, deadline[2], deadline[1])
                return
            await asyncio.sleep(self._idle_check_s)

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _mark_closed(self, info: VenueConnection, reason: str, code: int | None) -> bool:
        if info.close_reason is not None:
            return False
        info.close_reason = reason
        info.close_code = code
        self.stats.disconnects[reason] += 1
        return True

    def _begin_close(self, conn: _Conn, reason: str, code: int) -> bool:
        if not self._mark_closed(conn.info, reason, code):
            return False
        self._spawn(self._close(conn.ws, code, reason))
        self.notify()
        return True

    @staticmethod
    async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionError):
            await ws.close(code=code, message=reason.encode())
