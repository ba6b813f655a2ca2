"""Redundant connections (`[binance] redundancy`): the daemon against the emulator and real
Postgres. Every shard is held by two connections carrying every event; the content key stores
each event once, so one connection's drop or stall loses nothing, and the ledger records a gap
only when no connection carried the stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import asyncpg

from collector.emulator import Emulator, EmulatorOptions
from collector.metrics import Metrics
from tests.daemon import (
    Daemon,
    count_rows,
    eventually,
    make_config,
    metric_value,
    running,
    subscribed,
)
from tests.factories import um_event

SHARD = "fstream/market#0"
STREAMS = ["!forceOrder@arr"]


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metric_value(metrics.registry, name, **(labels or {}))


class Publisher:
    """Publishes distinct events (one trade time each) every few milliseconds until stopped."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.emu.publish(um_event(trade_time_ms=1_795_000_000_000 + self.published))
            self.published += 1
            await asyncio.sleep(0.002)  # pacing: a continuous feed, not a wait

    def count(self) -> Callable[[], Awaitable[int]]:
        async def probe() -> int:
            return self.published

        return probe


@contextlib.asynccontextmanager
async def publishing(emu: Emulator) -> AsyncIterator[Publisher]:
    """Publish continuously for the duration of the context."""
    publisher, stop = Publisher(emu), asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        yield publisher
    finally:
        stop.set()
        await task


async def stored_once(pg: asyncpg.Connection, daemon: Daemon, published: int) -> None:
    """Wait until `published` rows are stored, stop the daemon, and check each is stored once
    and every event received beyond the first copy was counted as a duplicate."""
    await eventually(count_rows(pg), lambda n: n >= published)
    assert await daemon.shutdown() == 0
    row = await pg.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT (trade_time, content_key)) AS keys "
        "FROM market_liquidations"
    )
    assert (row["n"], row["keys"]) == (published, published)
    received = await pg.fetchval("SELECT sum(events_received) FROM ws_sessions")
    metrics = daemon.runtime.metrics
    duplicates = sample(metrics, "collector_duplicates_total", {"layer": "memory"}) + sample(
        metrics, "collector_duplicates_total", {"layer": "database"}
    )
    assert duplicates == received - published


async def gaps(pg: asyncpg.Connection) -> list[asyncpg.Record]:
    """Gaps in the ledger from the first session's upgrade to the last session's close."""
    return list(
        await pg.fetch(
            "SELECT * FROM coverage_gaps($1, (SELECT min(opened_at) FROM ws_sessions), "
            "(SELECT max(closed_at) FROM ws_sessions))",
            STREAMS,
        )
    )


async def test_a_drop_of_one_connection_loses_no_event(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """With redundancy 2, aborting one connection mid-feed loses 0 events and leaves no gap."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, redundancy=2)
        async with running(config) as daemon:
            await subscribed(emu, 2)
            first, second = emu.connections
            async with publishing(emu) as feed:
                await eventually(feed.count(), lambda n: n >= 100)
                assert await emu.drop_connection(first)
                await emu.wait_until(
                    lambda: (
                        {c.id for c in emu.connections} - {first.id, second.id} != set()
                        and all(c.streams for c in emu.connections)
                    )
                )
                reconnected_at = feed.published
                await eventually(feed.count(), lambda n: n >= reconnected_at + 100)
            await stored_once(pg, daemon, feed.published)
    sessions = await pg.fetch("SELECT events_received, close_reason FROM ws_sessions")
    assert sorted(s["close_reason"] for s in sessions) == ["server_closed", "shutdown", "shutdown"]
    # The connection that stayed up carried every event.
    assert max(s["events_received"] for s in sessions) == feed.published
    assert await gaps(pg) == []


async def test_a_stalled_connection_is_replaced_and_loses_no_event(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A 10 s data stall of one connection loses 0 events; it is closed as stale and replaced
    (make before break) long before the stall ends."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, redundancy=2, stall_after_s=0.5)
        async with running(config) as daemon:
            await subscribed(emu, 2)
            stalled, twin = emu.connections
            async with publishing(emu) as feed:
                await eventually(feed.count(), lambda n: n >= 50)
                assert emu.stall_connection(stalled, 10.0)
                started = time.monotonic()
                await emu.wait_until(
                    lambda: (
                        stalled.id not in {c.id for c in emu.connections}
                        and len(emu.connections) == 2
                        and all(c.streams for c in emu.connections)
                    ),
                    timeout=5.0,
                )
                replaced_after_s = time.monotonic() - started
                replaced_at = feed.published
                await eventually(feed.count(), lambda n: n >= replaced_at + 50)
            reconnects = sample(
                daemon.runtime.metrics,
                "collector_ws_reconnects_total",
                {"host": "fstream", "reason": "stale"},
            )
            await stored_once(pg, daemon, feed.published)
    assert reconnects == 1.0
    assert replaced_after_s < 5.0
    assert twin.id != stalled.id
    reasons = await pg.fetch("SELECT close_reason FROM ws_sessions ORDER BY opened_at")
    assert sorted(r["close_reason"] for r in reasons) == ["shutdown", "shutdown", "stale"]
    assert await gaps(pg) == []


async def test_silence_on_every_connection_is_a_quiet_market(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """With no events at all, neither connection is stale: both stay open past stall_after_s."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, redundancy=2, stall_after_s=0.3)
        async with running(config) as daemon:
            await subscribed(emu, 2)
            ids = {c.id for c in emu.connections}

            async def lived_4_windows() -> int:
                return int(
                    await pg.fetchval(
                        "SELECT count(*) FROM ws_sessions "
                        "WHERE last_alive_at - opened_at >= interval '1.2 seconds'"
                    )
                )

            await eventually(lived_4_windows, lambda n: n == 2)
            assert {c.id for c in emu.connections} == ids
            assert (
                sample(
                    daemon.runtime.metrics,
                    "collector_ws_reconnects_total",
                    {"host": "fstream", "reason": "stale"},
                )
                == 0.0
            )


async def test_readiness_is_degraded_with_one_connection_and_down_with_none(
    pg_dsn: str,
) -> None:
    """/readyz stays 200 but says `degraded` while one of two connections is up, and the
    degraded gauge is 1; with none up it is 503; both up again, it is `ok`."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, redundancy=2)
        async with running(config) as daemon:
            await subscribed(emu, 2)
            await daemon.runtime.writer.flush()
            base = f"http://127.0.0.1:{daemon.runtime.http_port}"
            metrics = daemon.runtime.metrics
            async with aiohttp.ClientSession() as http:

                async def ready() -> tuple[int, dict[str, object]]:
                    async with http.get(f"{base}/readyz") as r:
                        return r.status, await r.json()

                def streams(up: list[str]) -> dict[str, object]:
                    state = {2: "ok", 1: "degraded", 0: "down"}[up.count("up")]
                    shard = {"up": up.count("up"), "wanted": 2, "connections": up}
                    return {"state": state, "shards": {SHARD: shard}}

                status, body = await eventually(ready, lambda sb: sb[0] == 200)
                assert body["streams"] == streams(["up", "up"])
                assert sample(metrics, "collector_ws_shard_degraded", {"shard": SHARD}) == 0.0

                emu.fail_upgrades(1000)
                first, _ = emu.connections
                assert await emu.drop_connection(first)
                status, body = await eventually(
                    ready,
                    lambda sb: sb[1]["streams"]["state"] == "degraded",  # type: ignore[index]
                )
                assert status == 200
                assert body["failing"] == {}
                assert body["streams"]["shards"][SHARD]["up"] == 1  # type: ignore[index]
                assert sample(metrics, "collector_ws_shard_degraded", {"shard": SHARD}) == 1.0
                assert sample(metrics, "collector_ws_shard_connections_up", {"shard": SHARD}) == 1.0

                await emu.drop_connections()
                status, body = await eventually(ready, lambda sb: sb[0] == 503)
                assert body["failing"] == {"streams": f"not connected: {SHARD}"}
                assert body["streams"] == streams(["down", "down"])

                emu.fail_upgrades(0)
                status, body = await eventually(
                    ready,
                    lambda sb: sb[1]["streams"]["state"] == "ok",  # type: ignore[index]
                )
                assert (status, body["streams"]) == (200, streams(["up", "up"]))
                async with http.get(f"{base}/metrics") as r:
                    text = await r.text()
    assert f'collector_ws_shard_connections_up{{shard="{SHARD}"}} 2.0' in text
    assert f'collector_ws_shard_connections_wanted{{shard="{SHARD}"}} 2.0' in text
    assert f'collector_ws_shard_degraded{{shard="{SHARD}"}} 0.0' in text


async def test_the_replicas_of_a_shard_rotate_at_different_times(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Replica 1 of 2 first rotates at 3/4 of rotate_after_s, replica 0 at rotate_after_s."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, redundancy=2, rotate_after_s=2.0)
        async with running(config) as daemon:
            await subscribed(emu, 2)

            async def rotated() -> list[float]:
                rows = await pg.fetch(
                    "SELECT extract(epoch FROM closed_at - opened_at)::float8 AS lived "
                    "FROM ws_sessions WHERE close_reason = 'rotated' ORDER BY closed_at"
                )
                return [r["lived"] for r in rows]

            lived = await eventually(rotated, lambda ls: len(ls) >= 2, timeout=15.0)
            assert await daemon.shutdown() == 0
    # 1.5 s and 2.0 s after their upgrades (plus the replacement's confirmation).
    assert 1.5 <= lived[0] < 2.0 <= lived[1]
    assert await gaps(pg) == []
