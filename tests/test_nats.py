"""The NATS JetStream publisher against a real, private nats-server (never the machine's shared
one at 127.0.0.1:4222): two daemon replicas on one database fed by the emulator, a broker
restart mid-stream, and a JetStream consumer that sees each row once, in order per subject,
with the row's key as message id and the SSE feed's JSON as body. A broker that is down never
stops the writer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import nats.aio.client
import nats.errors
import orjson
import pytest
from nats.aio.msg import Msg

from collector.config import Config, FeedConfig, NatsConfig
from collector.emulator import Emulator, EmulatorOptions
from collector.out.broker import subject, token
from collector.out.events import Cursor, FeedEvent, event_from_row
from tests.daemon import count_rows, eventually, make_config, metric_value, running, subscribed
from tests.factories import um_event

NATS_SERVER = "/usr/sbin/nats-server"
pytestmark = pytest.mark.skipif(
    not os.access(NATS_SERVER, os.X_OK),
    reason=f"{NATS_SERVER} is missing (Debian's nats-server package; .ci/run installs it)",
)
STREAM = "TEST_LIQUIDATIONS"


async def connect(url: str) -> nats.aio.client.Client:
    """A test client that gives up at once when nothing answers (nats-py's default retries
    for two minutes)."""
    return await nats.connect(
        url, allow_reconnect=False, connect_timeout=1, max_reconnect_attempts=1,
        reconnect_time_wait=0, error_cb=_ignore,
    )  # fmt: skip


async def _ignore(_exc: Exception) -> None:
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A private nats-server with JetStream on a loopback port, its store in `store_dir`;
    `stop` kills it, `start` brings it back on the same port and store."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.store_dir = store_dir
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js",
            "-sd", str(self.store_dir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await eventually(self._answers, what=f"nats-server on port {self.port}")

    async def _answers(self) -> bool:
        try:
            nc = await connect(self.url)
        except Exception:
            return False
        try:
            await nc.jetstream().account_info()
        except Exception:
            return False
        finally:
            await nc.close()
        return True

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def nats_server(store_dir: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(store_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def with_nats(config: Config, url: str, **nats_settings: Any) -> Config:
    settings: dict[str, Any] = {
        "enabled": True, "servers": (url,), "stream": STREAM, "publish_timeout_s": 1.0,
        "connect_timeout_s": 1.0, "retry_initial_s": 0.05, "retry_max_s": 0.5, "batch_rows": 4,
    }  # fmt: skip
    return dataclasses.replace(
        config, nats=NatsConfig(**{**settings, **nats_settings}),
        feed=FeedConfig(poll_interval_s=0.2),
    )  # fmt: skip


async def all_messages(url: str, n: int) -> list[Msg]:
    """Every message of the stream, read by a new pull consumer, in stream order."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("liquidations.>", stream=STREAM)
        found: list[Msg] = []
        while len(found) < n:
            found += await sub.fetch(n - len(found), timeout=5)
        for msg in found:
            await msg.ack()
        return found
    finally:
        await nc.close()


async def stream_size(url: str) -> int:
    nc = await connect(url)
    try:
        info = await nc.jetstream().stream_info(STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


_ROWS = """SELECT committed_xid AS xid, seq, venue, market, symbol, liquidated_side,
       price::text AS price, qty::text AS qty, notional_usd::text AS notional_usd,
       trade_time, received_at, encode(content_key, 'hex') AS content_key
  FROM liquidation_feed ORDER BY committed_xid, seq"""


async def stored_events(pg: asyncpg.Connection) -> list[FeedEvent]:
    return [event_from_row(r) for r in await pg.fetch(_ROWS)]


async def cursor_of(pg: asyncpg.Connection, name: str) -> Cursor | None:
    row = await pg.fetchrow(
        "SELECT committed_xid AS xid, seq FROM consumer_cursors WHERE name = $1", name
    )
    return None if row is None else Cursor(int(row["xid"]), row["seq"])


def event_at(i: int) -> dict[str, Any]:
    symbol = ("BTCUSDT", "ETHUSDT")[i % 2]
    return um_event(symbol, 1_795_000_000_000 + i * 1000, qty="0.5", price="100.5",
                    avg_price=f"{100 + i}.25")  # fmt: skip


def test_subjects_hold_only_valid_tokens() -> None:
    """Whitespace, `.`, `*`, `>` and control characters in a venue or symbol become `_`."""
    assert token("BTC-USDT-SWAP") == "BTC-USDT-SWAP"
    assert token("A.B*C>D E\tF\x00") == "A_B_C_D_E_F_"
    assert token("") == "_"
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    at = FeedEvent(Cursor(1, 1), "okx", "SWAP", "BTC.USD*", None, None, None, None, moment, moment)
    assert subject("liquidations", at) == "liquidations.okx.BTC_USD_"


async def test_two_replicas_and_a_broker_restart_store_each_row_once_in_order(
    pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two daemons on one database publish every row; the broker is killed after 6 rows and
    started again (same port and store) after 6 more committed meanwhile: the stream holds the
    12 rows once each, in commit order per subject, ids = venue:content_key, bodies = the SSE
    JSON, and both replicas' shared cursor is at the last row."""
    async with (
        nats_server(tmp_path / "js") as broker,
        Emulator(EmulatorOptions()) as emu,
    ):
        config = with_nats(make_config(emu, pg_dsn), broker.url)
        async with running(config) as a, running(config) as b:
            await subscribed(emu, 2, host="fstream")
            for i in range(6):
                assert await emu.publish(event_at(i)) == 2
            await eventually(count_rows(pg), lambda n: n == 6, timeout=60)
            await eventually(lambda: stream_size_or_none(broker.url), lambda n: n == 6, timeout=60)

            await broker.stop()
            for i in range(6, 12):
                assert await emu.publish(event_at(i)) == 2
            await eventually(
                count_rows(pg), lambda n: n == 12, what="rows while NATS is down", timeout=60
            )
            for registry in (a.runtime.metrics.registry, b.runtime.metrics.registry):
                await eventually(lambda r=registry: metric_value(  # type: ignore[misc]
                    r, "collector_consumer_retries_total", consumer="nats"),
                    what="a failed publish", timeout=60)  # fmt: skip
            assert await stream_size_or_none(broker.url) is None
            await broker.start()

            events = await stored_events(pg)
            assert len(events) == 12
            await eventually(
                lambda: cursor_of(pg, "nats"), lambda c: c == events[-1].cursor, timeout=60
            )
            await eventually(lambda: a.runtime.nats and a.runtime.nats.cursor.position,
                             lambda p: p == events[-1].cursor, timeout=60)  # fmt: skip
            await eventually(lambda: b.runtime.nats and b.runtime.nats.cursor.position,
                             lambda p: p == events[-1].cursor, timeout=60)  # fmt: skip
            published = [
                metric_value(r.runtime.metrics.registry, "collector_nats_published_total",
                             stream=STREAM, result="stored")
                for r in (a, b)
            ]  # fmt: skip
        assert sum(published) == 12
        assert await stream_size(broker.url) == 12
        messages = await all_messages(broker.url, 12)

    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == [e.key for e in events]
    assert all(e.key.startswith("binance:") and len(e.key) == 8 + 32 for e in events)
    assert [m.subject for m in messages] == [
        f"liquidations.binance.{('BTCUSDT', 'ETHUSDT')[i % 2]}" for i in range(12)
    ]
    assert [orjson.loads(m.data) for m in messages] == [e.as_json() for e in events]
    assert [m.headers and m.headers["Collector-Cursor"] for m in messages] == [
        str(e.cursor) for e in events
    ]
    assert orjson.loads(messages[3].data) == {
        "venue": "binance", "symbol": "ETHUSDT", "market": "UM", "liquidated_side": "LONG",
        "price": "103.25", "qty": "0.5", "notional_usd": "51.625",
        "trade_time": "2026-11-18T11:06:43.000000Z",
        "received_time": events[3].as_json()["received_time"],
    }  # fmt: skip


async def stream_size_or_none(url: str) -> int | None:
    try:
        return await stream_size(url)
    except (OSError, nats.errors.Error):
        return None


async def test_a_dead_broker_does_not_stop_the_writer_and_rows_follow_when_it_is_up(
    pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Nothing listens on the broker's port: rows commit, /readyz answers 200, connects fail
    and are counted, the cursor stays; once a broker starts there, every row is published."""
    broker = NatsServer(tmp_path / "js")
    async with Emulator(EmulatorOptions()) as emu:
        config = with_nats(make_config(emu, pg_dsn), broker.url)
        async with running(config) as daemon:
            registry = daemon.runtime.metrics.registry
            await subscribed(emu, 1, host="fstream")
            for i in range(5):
                assert await emu.publish(event_at(i)) == 1
            await eventually(count_rows(pg), lambda n: n == 5, timeout=60)
            await eventually(
                lambda: metric_value(registry, "collector_consumer_retries_total", consumer="nats"),
                lambda n: n >= 2, timeout=60,
            )  # fmt: skip
            failures = metric_value(registry, "collector_nats_publish_failures_total",
                                    stream=STREAM, reason="OSError")  # fmt: skip
            failures += metric_value(registry, "collector_nats_publish_failures_total",
                                     stream=STREAM, reason="NoServersError")  # fmt: skip
            assert failures >= 1
            assert metric_value(registry, "collector_nats_connected", stream=STREAM) == 0
            first = await cursor_of(pg, "nats")
            assert first is not None
            assert first < (await stored_events(pg))[0].cursor
            port = daemon.runtime.http_port
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/readyz") as resp,
            ):
                assert resp.status == 200, await resp.text()

            await broker.start()
            try:
                await eventually(lambda: stream_size_or_none(broker.url), lambda n: n == 5,
                                 timeout=60)  # fmt: skip
                assert metric_value(registry, "collector_nats_connected", stream=STREAM) == 1
                events = await stored_events(pg)
                await eventually(
                    lambda: cursor_of(pg, "nats"), lambda c: c == events[-1].cursor, timeout=60
                )
                await eventually(lambda: metric_value(
                    registry, "collector_consumer_lag_rows", consumer="nats") == 0)  # fmt: skip
                messages = await all_messages(broker.url, 5)
            finally:
                await broker.stop()
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == [e.key for e in events]


async def test_rows_committed_while_the_publisher_was_stopped_are_published_after_its_restart(
    pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A publishing daemon stops after 2 rows; a daemon without [nats] commits 3 more; the
    publisher's next start resumes at its stored cursor: 5 messages, each once, in order."""
    async with nats_server(tmp_path / "js") as broker, Emulator(EmulatorOptions()) as emu:
        base = make_config(emu, pg_dsn)
        publishing = with_nats(base, broker.url)
        async with running(publishing):
            await subscribed(emu, 1, host="fstream")
            for i in range(2):
                assert await emu.publish(event_at(i)) == 1
            await eventually(lambda: stream_size_or_none(broker.url), lambda n: n == 2, timeout=60)
        at_stop = await cursor_of(pg, "nats")
        async with running(base):
            await emu.wait_until(lambda: len(emu.connections) == 1 and emu.connections[0].streams)
            for i in range(2, 5):
                assert await emu.publish(event_at(i)) == 1
            await eventually(count_rows(pg), lambda n: n == 5, timeout=60)
        assert await cursor_of(pg, "nats") == at_stop
        async with running(publishing):
            events = await stored_events(pg)
            await eventually(lambda: cursor_of(pg, "nats"), lambda c: c == events[-1].cursor,
                             timeout=60)  # fmt: skip
        assert await stream_size(broker.url) == 5
        messages = await all_messages(broker.url, 5)
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == [e.key for e in events]
    assert [orjson.loads(m.data) for m in messages] == [e.as_json() for e in events]
