"""Readings of the protocol the docs leave open, served by a minimal websocket server: the
collector must work with each (the docs are the spec, not our emulator)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import orjson
from aiohttp import WSMsgType, web

from collector.config import Config
from tests.daemon import count_rows, eventually, running
from tests.factories import um_event

Handler = Callable[[web.WebSocketResponse, dict[str, object]], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(on_control: Handler) -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """A ws server on loopback that sends one event after the first control message and lets
    `on_control` answer (or not) each control message. Yields its base URL and the requests."""
    requests: list[dict[str, object]] = []

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sent = False
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            control = orjson.loads(msg.data)
            requests.append(control)
            await on_control(ws, control)
            if not sent:
                event = um_event("BTCUSDT", 1_795_000_000_000 + len(requests))
                await ws.send_str(
                    orjson.dumps({"stream": "!forceOrder@arr", "data": event}).decode()
                )
                sent = True
        return ws

    app = web.Application()
    app.router.add_get("/market/stream", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}", requests
    finally:
        await runner.cleanup()


def config_for(base: str, dsn: str) -> Config:
    from collector.config import (
        BinanceConfig,
        DatabaseConfig,
        HttpConfig,
        Secret,
        VenuesConfig,
        WriterConfig,
    )

    return Config(
        database=DatabaseConfig(dsn=Secret(dsn), migrate_on_start=False),
        binance=BinanceConfig(
            fstream_url=base,
            fapi_url="http://127.0.0.1:9",
            dapi_url="http://127.0.0.1:9",
            open_timeout_s=0.5,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.2,
            heartbeat_s=0.2,
            redundancy=1,  # these tests are about one connection's handshake
        ),
        venues=VenuesConfig(enabled=("binance",)),  # no real Bybit or OKX
        writer=WriterConfig(
            batch_max_age_s=0.01, spill_dir=tempfile.mkdtemp(prefix="collector-spill-")
        ),
        http=HttpConfig(port=0),
    )


async def test_a_list_without_the_url_streams_is_accepted(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """LIST_SUBSCRIPTIONS answering [] (URL streams unlisted) keeps the connection and its data."""

    async def answer_empty(ws: web.WebSocketResponse, control: dict[str, object]) -> None:
        await ws.send_str(orjson.dumps({"result": [], "id": control["id"]}).decode())

    async with server(answer_empty) as (base, requests), running(config_for(base, pg_dsn)):
        await eventually(count_rows(pg), lambda n: n == 1)
        session = await eventually(
            lambda: pg.fetchrow("SELECT subscribed_at, closed_at FROM ws_sessions"),
            lambda row: row is not None and row["subscribed_at"] is not None,
        )
        assert session["closed_at"] is None
        assert requests == [{"method": "LIST_SUBSCRIPTIONS", "id": 1}]


async def test_a_server_that_never_answers_control_messages_still_delivers(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """No reply to LIST_SUBSCRIPTIONS: the first event confirms the subscription instead."""

    async def ignore(ws: web.WebSocketResponse, control: dict[str, object]) -> None:
        return None

    async with server(ignore) as (base, requests), running(config_for(base, pg_dsn)) as daemon:
        await eventually(count_rows(pg), lambda n: n == 1)
        shard = daemon.runtime.shards[0]
        assert shard.current is not None
        await asyncio.wait_for(shard.current.subscribed.wait(), 5)
        assert len(requests) == 1
