"""What a Binance stream host (docs/binance.md §1) keeps of each connection and counts for
tests: `ConnectionInfo` (what a test sees of a connection), `EmulatorStats`, the per-connection
rules (`WsSettings`), the scripted `Faults`, a connection's server-side state (`Connection`) and
the frames written to it (the combined-stream `envelope`, pre-encoded text frames). The host is
`ws.StreamHost`.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web


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


class Connection:
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
            self.corked.append(text_frame(data))
            self.info.frames_sent += 1
            return True
        try:
            await self.ws.send_frame(data, WSMsgType.TEXT)
        except ConnectionError:
            return False
        self.info.frames_sent += 1
        return True


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed server text frame (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class StreamIndex:
    """Which connections each stream's data goes to, and in which form."""

    def __init__(self) -> None:
        self._by_stream: dict[str, dict[Connection, None]] = {}

    def add(self, conn: Connection, names: Iterable[str]) -> None:
        for name in names:
            self._by_stream.setdefault(name, {})[conn] = None

    def remove(self, conn: Connection, names: Iterable[str]) -> None:
        for name in names:
            subscribers = self._by_stream.get(name)
            if subscribers is not None:
                subscribers.pop(conn, None)
                if not subscribers:
                    del self._by_stream[name]

    def targets(self, streams: Sequence[str], payload: bytes) -> list[tuple[Connection, bytes]]:
        """Each (connection, frame) that `payload` on `streams` makes: bare on raw connections,
        enveloped on combined ones; none to a connection while it is stalled."""
        targets: list[tuple[Connection, bytes]] = []
        now = 0.0
        for stream in streams:
            subscribers = self._by_stream.get(stream)
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
        return targets
