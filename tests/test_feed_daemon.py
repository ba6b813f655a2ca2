"""The live feed through the real daemon: the emulator sends force orders, the daemon's writer
commits them, and an SSE client of the daemon's own HTTP server receives them in order."""

from __future__ import annotations

import dataclasses

import aiohttp
import asyncpg
import orjson

from collector.config import FeedConfig
from collector.emulator import Emulator, EmulatorOptions
from tests.daemon import count_rows, eventually, make_config, running, subscribed
from tests.factories import um_event
from tests.feed_harness import Stream, ids


async def test_emulator_rows_reach_an_sse_client_of_the_daemon(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Three force orders from the emulator: the stream opened before them sends three frames,
    in commit order, with the stored rows' cursors as ids and their values as data."""
    async with Emulator(EmulatorOptions()) as emu:
        config = dataclasses.replace(make_config(emu, pg_dsn), feed=FeedConfig(poll_interval_s=0.2))
        async with running(config) as daemon, aiohttp.ClientSession() as http:
            await subscribed(emu, 1, host="fstream")
            url = f"http://127.0.0.1:{daemon.runtime.http_port}/v1/liquidations/stream"
            async with http.get(url) as resp:
                assert resp.status == 200
                await eventually(lambda: daemon.runtime.feed and daemon.runtime.feed.subscriptions)
                for i, symbol in enumerate(("BTCUSDT", "ETHUSDT", "BTCUSDT")):
                    event = um_event(symbol, 1_795_000_000_000 + i, qty="0.5", avg_price="200")
                    assert await emu.publish(event) == 1
                    # One row per transaction, so the commit order is the sending order.
                    await eventually(count_rows(pg), lambda n, want=i + 1: n == want)
                # Rows are final once every older transaction of the cluster ended: parallel
                # tests' DROP DATABASE can hold that back for seconds on a loaded machine.
                stream = Stream(resp)
                frames: list[bytes] = []
                while len(frames) < 3:
                    frame = await stream.frame(timeout=60)
                    if not frame.startswith(b":"):  # not a heartbeat comment
                        frames.append(frame)
    rows = await pg.fetch(
        "SELECT committed_xid::text || '-' || seq AS cursor, symbol FROM market_liquidations"
        " ORDER BY committed_xid, seq"
    )
    assert ids(frames) == [r["cursor"] for r in rows]
    data = [orjson.loads(f.split(b"\ndata: ", 1)[1]) for f in frames]
    assert [(d["symbol"], d["qty"], d["notional_usd"]) for d in data] == [
        ("BTCUSDT", "0.5", "100.0"), ("ETHUSDT", "0.5", "100.0"), ("BTCUSDT", "0.5", "100.0"),
    ]  # fmt: skip
    assert {d["trade_time"] for d in data} == {
        "2026-11-18T11:06:40.000000Z", "2026-11-18T11:06:40.001000Z",
        "2026-11-18T11:06:40.002000Z",
    }  # fmt: skip
