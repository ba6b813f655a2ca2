"""The data-out side on its own for tests: a pool, a `Feed` reading the test database, the
`Api` on a real loopback port (the collector's own `serve_http`), and rows inserted with the
writer's statements."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg

from collector.config import Config, FeedConfig, HttpConfig
from collector.health import Health, listen, serve_http
from collector.metrics import Metrics
from collector.model import MarketLiquidation
from collector.out.api import Api
from collector.out.feed import Feed
from collector.sink.columns import INSERT_ML_ONE, ml_record


@dataclasses.dataclass
class Served:
    """A feed and its API on a loopback port."""

    feed: Feed
    metrics: Metrics
    url: str
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def served(
    dsn: str, *, http: HttpConfig | None = None, send_buffer: int | None = None, **feed: Any
) -> AsyncIterator[Served]:
    """Run a feed (and its API) over `dsn` until the context ends; `send_buffer` sets the
    server's SO_SNDBUF (small: a client that does not read blocks the stream sooner)."""
    config = Config(
        http=http or HttpConfig(port=0),
        feed=FeedConfig(**{"heartbeat_s": 5.0, "poll_interval_s": 0.5, **feed}),
    )
    metrics = Metrics()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    stop = asyncio.Event()
    try:
        feed_ = Feed(pool, lambda: asyncpg.connect(dsn), config.feed, metrics)
        api = Api(config, feed_, pool, metrics)
        sockets = listen("127.0.0.1", 0)
        for sock in sockets:
            if send_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        async with serve_http(
            "127.0.0.1", 0, Health(), metrics, sockets=sockets, routes=api.add_routes
        ) as runner:
            task = asyncio.create_task(feed_.run(stop))
            try:
                starting = asyncio.ensure_future(feed_.started())
                await asyncio.wait({starting, task}, return_when=asyncio.FIRST_COMPLETED)
                if not starting.done():
                    starting.cancel()
                    await task  # raises what stopped it
                port = runner.addresses[0][1]
                yield Served(feed_, metrics, f"http://127.0.0.1:{port}", pool)
            finally:
                stop.set()
                await task
    finally:
        await pool.close()


async def insert(conn: asyncpg.Connection, *rows: MarketLiquidation) -> None:
    """Insert `rows` in one transaction, with the writer's statement."""
    async with conn.transaction():
        for row in rows:
            await conn.execute(INSERT_ML_ONE, *ml_record(row))


class Stream:
    """An SSE stream read frame by frame (`: ping` comments kept as frames)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._buffer = b""

    async def frame(self, timeout: float = 10.0) -> bytes:
        """The next frame, its blank line included."""
        async with asyncio.timeout(timeout):
            while b"\n\n" not in self._buffer:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError(self._buffer)
                self._buffer += chunk
        frame, _, self._buffer = self._buffer.partition(b"\n\n")
        return frame + b"\n\n"

    async def events(self, n: int) -> list[bytes]:
        """The next `n` frames that are not comments; an error event fails."""
        found: list[bytes] = []
        while len(found) < n:
            frame = await self.frame()
            if frame.startswith(b"event: error"):
                raise AssertionError(f"the stream ended: {frame!r}")
            if not frame.startswith(b":"):
                found.append(frame)
        return found


def ids(frames: list[bytes]) -> list[str]:
    """The `id:` of each frame."""
    return [f.split(b"\n", 1)[0].removeprefix(b"id: ").decode() for f in frames]
