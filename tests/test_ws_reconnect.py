"""One shard against the emulator and a real writer: when it reconnects, and what the ledger and
readiness say about connections that ended."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import asyncpg

from collector.emulator import Emulator, EmulatorOptions
from collector.metrics import Metrics
from collector.model import Market
from collector.retry import AttemptBudget, Backoff, sleep_or_stop
from collector.runtime import Component, Runtime
from collector.sink.writer import Writer
from collector.sources.binance_plan import plan_shards
from collector.sources.binance_session import Connection
from collector.sources.binance_ws import Shard, run_ws_sources
from collector.sources.catalog import SymbolCatalog
from tests.daemon import count_rows, eventually, make_config, metric_value, running, subscribed
from tests.factories import um_event

SEED = 7


@dataclasses.dataclass
class Harness:
    """A running shard, the delays it paused for (with when each pause ended) and its metrics."""

    shard: Shard
    pauses: list[tuple[float, float]]
    metrics: Metrics
    writer: Writer

    def sample(self, name: str, labels: dict[str, str]) -> float:
        return metric_value(self.metrics.registry, name, **labels)


@contextlib.asynccontextmanager
async def shard_running(
    emu: Emulator,
    pg_dsn: str,
    *,
    catalog: SymbolCatalog | None = None,
    budget: AttemptBudget | None = None,
    **binance: object,
) -> AsyncIterator[Harness]:
    """Run the first planned shard with a seeded jitter and recorded pauses; stop it on exit."""
    config = make_config(emu, pg_dsn, **binance)
    metrics = Metrics()
    writer = Writer(lambda: asyncpg.connect(pg_dsn), config.writer, metrics)
    writer_task = asyncio.create_task(writer.run())
    pauses: list[tuple[float, float]] = []

    async def pause(delay: float, stop: asyncio.Event) -> bool:
        stopped = await sleep_or_stop(delay, stop)
        pauses.append((delay, time.monotonic()))
        return stopped

    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        spec = plan_shards(config.binance)[0]
        shard = Shard(
            spec,
            http,
            writer,
            metrics,
            catalog or SymbolCatalog(),
            config.binance,
            rng=random.Random(SEED),
            pause=pause,
            budget=budget,
        )
        task = asyncio.create_task(shard.run(stop))
        try:
            yield Harness(shard, pauses, metrics, writer)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await asyncio.wait_for(writer.flush(), 10)
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer_task


async def confirmed_after(shard: Shard, previous: Connection | None) -> Connection:
    """Wait until the shard holds a confirmed connection other than `previous`."""

    def probe() -> Connection | None:
        conn = shard.current
        ok = conn is not None and conn is not previous and conn.subscribed.is_set()
        return conn if ok and not conn.closed.is_set() else None

    conn = await eventually(lambda: asyncio.sleep(0, probe()), lambda c: c is not None)
    assert conn is not None
    return conn


async def test_ten_server_cuts_reconnect_at_once_without_backoff(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Ten cuts of good sessions (drops and close frames) are each replaced within the 250 ms
    jitter, and the backoff never grows."""
    async with (
        Emulator(EmulatorOptions()) as emu,
        shard_running(emu, pg_dsn, reconnect_initial_s=0.5, reconnect_max_s=8.0) as h,
    ):
        conn = await confirmed_after(h.shard, None)
        gaps: list[float] = []
        for i in range(10):
            await emu.wait_until(
                lambda: [c.streams for c in emu.connections] == [{"!forceOrder@arr"}]
            )
            assert await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i)) == 1
            await eventually(count_rows(pg), lambda n, i=i: n == i + 1)
            cut = time.monotonic()
            assert (await emu.drop_connections() if i % 2 else emu.close_connections()) == 1
            conn = await confirmed_after(h.shard, conn)
            gaps.append(h.pauses[-1][1] - cut)
            assert h.shard.backoff.attempt == 0
        jitter = random.Random(SEED)
        assert [d for d, _ in h.pauses] == [jitter.random() * 0.25 for _ in range(10)]
        # Each attempt started within its jitter (<= 250 ms) plus the time to see the cut.
        assert all(gap < 0.25 + 0.25 for gap in gaps), gaps
        assert (
            h.sample(
                "collector_ws_reconnects_total", {"host": "fstream", "reason": "server_closed"}
            )
            == 10
        )
        assert h.sample("collector_ws_connects_total", {"host": "fstream"}) == 11
    sessions = await pg.fetch(
        "SELECT events_received, close_reason FROM ws_sessions ORDER BY opened_at"
    )
    assert [tuple(s) for s in sessions] == [(1, "server_closed")] * 10 + [(0, "shutdown")]
    print(
        f"cut -> next attempt: max {max(gaps) * 1000:.1f} ms, mean {sum(gaps) / 10 * 1000:.1f} ms"
    )


async def test_refused_upgrades_back_off_and_a_confirmed_connection_resets_it(
    pg_dsn: str,
) -> None:
    """Five 503s back off with growing, capped delays; the confirmed connection resets the
    backoff, so its cut is replaced at once and the next 503 starts from the initial delay."""
    async with Emulator(EmulatorOptions()) as emu:
        emu.fail_upgrades(5)
        async with shard_running(emu, pg_dsn, reconnect_initial_s=0.05, reconnect_max_s=0.4) as h:
            conn = await confirmed_after(h.shard, None)
            assert h.shard.backoff.attempt == 0
            emu.fail_upgrades(1)
            assert emu.close_connections() == 1
            await confirmed_after(h.shard, conn)
            assert h.shard.backoff.attempt == 0
            assert emu.stats.upgrades_failed == 6
            assert (
                h.sample("collector_ws_reconnects_total", {"host": "fstream", "reason": "http_503"})
                == 6
            )
    rng = random.Random(SEED)
    expected = Backoff(0.05, 0.4, rng=rng)
    backoffs = [expected.next_delay() for _ in range(5)]
    quick = rng.random() * 0.25
    expected.reset()
    after_reset = expected.next_delay()
    delays = [d for d, _ in h.pauses]
    assert delays == [*backoffs, quick, after_reset]
    # Growing until the cap: each within [d/2, d] of 0.05, 0.1, 0.2, 0.4, 0.4.
    for delay, cap in zip(backoffs, (0.05, 0.1, 0.2, 0.4, 0.4), strict=True):
        assert cap / 2 <= delay <= cap
    assert backoffs[0] < backoffs[1] < backoffs[2] < backoffs[3]


async def test_a_restarted_ws_component_leaves_no_dead_shards_in_readiness(pg_dsn: str) -> None:
    """After the supervisor restarts a failed ws component, readiness sees only the new shards."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn)
        runs = 0

        def components(runtime: Runtime) -> dict[str, Component]:
            async def ws(stop: asyncio.Event) -> None:
                nonlocal runs
                runs += 1
                own_stop = asyncio.Event() if runs == 1 else stop
                sources = asyncio.create_task(
                    run_ws_sources(
                        config.binance,
                        runtime.writer,
                        runtime.metrics,
                        runtime.catalog,
                        own_stop,
                        runtime.shards,
                    )
                )
                if runs == 1:
                    await subscribed(emu)
                    own_stop.set()
                    await sources
                    raise RuntimeError("the ws component failed")
                await sources

            return {"ws": ws}

        async with running(config, components) as daemon:
            await eventually(lambda: asyncio.sleep(0, runs), lambda n: n == 2)
            health = daemon.runtime.health
            ok, failing = await eventually(health.run_checks, lambda r: not r[1], timeout=15)
            assert (ok, failing) == (["database", "event_age", "streams"], {})
            assert [s.spec.name for s in daemon.runtime.shards] == ["fstream/market#0"]
            restarts = daemon.runtime.metrics.registry.get_sample_value(
                "collector_component_restarts_total", {"component": "ws"}
            )
            assert restarts == 1


class FaultyCatalog(SymbolCatalog):
    """A catalog with a bug: looking up BOOMUSDT raises (any failure of our own code)."""

    def is_known(self, market: Market, symbol: str) -> bool | None:
        if symbol == "BOOMUSDT":
            raise RuntimeError("a bug in the catalog")
        return super().is_known(market, symbol)


def heartbeats() -> list[str]:
    """Names of the heartbeat tasks alive in this loop."""
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("ws-beat"))


async def test_a_reader_failure_closes_the_session_at_its_last_frame_and_reconnects(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A reader killed by a bug ends its session at the last received frame, is counted, takes
    its heartbeat down with it, and a new connection carries the stream on."""
    async with (
        Emulator(EmulatorOptions()) as emu,
        shard_running(emu, pg_dsn, catalog=FaultyCatalog()) as h,
    ):
        first = await confirmed_after(h.shard, None)
        await emu.wait_until(lambda: [c.streams for c in emu.connections] == [{"!forceOrder@arr"}])
        await emu.publish(um_event("BTCUSDT", 1_795_000_000_001))
        await emu.publish(um_event("BOOMUSDT", 1_795_000_000_002))
        second = await confirmed_after(h.shard, first)
        assert heartbeats() == ["ws-beat fstream/market#0"]
        assert first.close_reason == "reader_failed"
        await emu.wait_until(lambda: [c.streams for c in emu.connections] == [{"!forceOrder@arr"}])
        await emu.publish(um_event("BTCUSDT", 1_795_000_000_003))
        await eventually(count_rows(pg), lambda n: n == 3)
        assert h.sample("collector_ws_reader_failures_total", {"host": "fstream"}) == 1
        assert (
            h.sample(
                "collector_ws_reconnects_total", {"host": "fstream", "reason": "reader_failed"}
            )
            == 1
        )
        assert h.sample("collector_ws_connections", {"host": "fstream"}) == 1
        assert not second.closed.is_set()
    sessions = await pg.fetch(
        "SELECT closed_at, close_reason, events_received FROM ws_sessions ORDER BY opened_at"
    )
    assert [(s["close_reason"], s["events_received"]) for s in sessions] == [
        ("reader_failed", 2),
        ("shutdown", 1),
    ]
    boom_received = await pg.fetchval(
        "SELECT received_at FROM market_liquidations WHERE symbol = 'BOOMUSDT'"
    )
    assert sessions[0]["closed_at"] == boom_received


async def test_a_reader_held_up_by_a_full_queue_does_not_mark_the_session_alive(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """While a slow database keeps the queue full and frames wait unread, the ledger's
    last_alive_at does not pass the moment the reader stopped reading; once all is read it
    advances."""
    await pg.execute(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$"
    )
    await pg.execute(
        "CREATE TRIGGER slow BEFORE INSERT ON market_liquidations "
        "FOR EACH ROW EXECUTE FUNCTION slow_insert()"
    )
    burst, queue_max = 150, 5
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, heartbeat_s=0.05)
        config = dataclasses.replace(
            config,
            writer=dataclasses.replace(
                config.writer, queue_max=queue_max, writers=1, batch_max_rows=1
            ),
        )
        async with running(config) as daemon:
            await subscribed(emu)
            for i in range(burst):
                assert await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i)) == 1
            # From the moment the queue is full the reader waits for space with the rest of the
            # burst buffered unread (sent before now).
            queue = daemon.runtime.writer.queue
            await eventually(lambda: asyncio.sleep(0, queue.full()), lambda full: full)
            sent_by = datetime.now(UTC)
            seen: list[tuple[int, datetime | None]] = []

            async def probe() -> int:
                row = await pg.fetchrow(
                    "SELECT (SELECT count(*) FROM market_liquidations) AS n, "
                    "(SELECT last_alive_at FROM ws_sessions) AS alive"
                )
                assert row is not None
                seen.append((row["n"], row["alive"]))
                return int(row["n"])

            await eventually(probe, lambda n: n == burst, timeout=30)
            # Rows stored < burst - (queue + the batch in flight + the reader's own + one):
            # some frame sent before `sent_by` is still unread.
            unread = [(n, alive) for n, alive in seen if n < burst - queue_max - 3]
            assert len(unread) >= 10
            assert [(n, a) for n, a in unread if a is not None and a > sent_by] == []
            await eventually(
                lambda: pg.fetchval("SELECT last_alive_at FROM ws_sessions"),
                lambda alive: alive is not None and alive > sent_by,
            )


async def test_quick_reconnects_stay_within_the_attempt_budget(pg_dsn: str) -> None:
    """With three attempts per 1.5 s, the fourth quick reconnect waits for the first to age out
    of the window (a server that cuts every session cannot make us exceed the budget)."""
    async with (
        Emulator(EmulatorOptions()) as emu,
        shard_running(emu, pg_dsn, budget=AttemptBudget(3, 1.5)) as h,
    ):
        conn = await confirmed_after(h.shard, None)
        for _ in range(4):
            assert emu.close_connections() == 1
            conn = await confirmed_after(h.shard, conn)
        delays = [d for d, _ in h.pauses]
        jitter = random.Random(SEED)
        assert delays[:3] == [jitter.random() * 0.25 for _ in range(3)]
        assert delays[3] > 0.25
        assert h.pauses[3][1] - h.pauses[0][1] >= 1.45
        assert h.shard.backoff.attempt == 0
