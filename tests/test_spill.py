"""Postgres unreachable through the whole shutdown grace: rows go to disk, and back on start."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import asyncpg
import orjson

from collector.config import WriterConfig
from collector.emulator import Emulator, EmulatorOptions
from collector.metrics import Metrics
from collector.model import Barrier, DeadLetter
from collector.signals import install_signal_handlers
from collector.sink import spill
from collector.sink.writer import Writer
from collector.sources.binance_parse import reparse_frame
from collector.supervisor import run
from tests.collector_process import collector_process, emulator_env
from tests.conftest import OwnPostgres
from tests.daemon import count_rows, eventually, make_config, running
from tests.factories import NOW, liquidation, session, um_event


async def test_unwritten_rows_are_spilled_at_shutdown_and_replayed_on_start(
    own_postgres: OwnPostgres,
) -> None:
    """With the database down at SIGTERM the queue is spilled (exit 0); the next run commits it."""
    dsn = own_postgres.dsn
    async with Emulator(EmulatorOptions()) as emu:
        config = dataclasses.replace(make_config(emu, dsn), shutdown_grace_s=1.0)
        spill_dir = Path(config.writer.spill_dir)
        async with running(config) as daemon:
            [ws] = await emu.wait_for_connections(1)
            await emu.wait_until(lambda: bool(ws.streams))
            for i in range(20):
                await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i))
            check = await asyncpg.connect(dsn)
            try:
                await eventually(count_rows(check), lambda n: n == 20)
            finally:
                await check.close()
            await own_postgres.stop()
            for i in range(20, 50):
                await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i))
            shard = daemon.runtime.shards[0]
            await eventually(
                lambda: asyncio.sleep(0, shard.current and shard.current.events_received),
                lambda n: n == 50,
            )
        assert await daemon.task == 0
        [spilled] = await asyncio.to_thread(lambda: list(spill_dir.glob("spill-*.jsonl")))
        lines = (await asyncio.to_thread(spilled.read_bytes)).splitlines()
        kinds = [orjson.loads(line)["kind"] for line in lines]
        assert kinds.count("liquidation") == 30
        assert "session" in kinds

        await own_postgres.start()
        async with running(config):
            check = await asyncpg.connect(dsn)
            try:
                await eventually(count_rows(check), lambda n: n == 50)
                closed = await check.fetchval(
                    "SELECT count(*) FROM ws_sessions WHERE close_reason = 'shutdown'"
                )
                assert closed == 1
            finally:
                await check.close()
        assert await asyncio.to_thread(lambda: list(spill_dir.glob("spill-*"))) == []


async def test_shutdown_with_a_full_queue_and_no_database_ends_within_the_grace(
    own_postgres: OwnPostgres,
) -> None:
    """Sources blocked on a full queue cannot hold shutdown past the grace period; the queue
    is spilled and the process exits 0."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, own_postgres.dsn)
        config = dataclasses.replace(
            config,
            shutdown_grace_s=1.0,
            writer=dataclasses.replace(config.writer, queue_max=5),
        )
        async with running(config) as daemon:
            [ws] = await emu.wait_for_connections(1)
            await emu.wait_until(lambda: bool(ws.streams))
            await own_postgres.stop()
            for i in range(50):
                await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i))
            writer = daemon.runtime.writer
            await eventually(lambda: asyncio.sleep(0, writer.queue.full()), lambda full: full)
            daemon.stop.set()
            assert await asyncio.wait_for(daemon.task, 10) == 0
        spilled = await asyncio.to_thread(lambda: list(Path(config.writer.spill_dir).iterdir()))
        assert len(spilled) == 1


async def test_every_kind_of_item_round_trips_through_a_spill_file(
    pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Liquidations, dead letters (any bytes) and ledger rows come back exactly from disk."""
    row = liquidation(1)
    dead = DeadLetter(NOW, "fstream/market", "malformed_json", "bad", b"\x00\xff{oops", kept=False)
    ledger = session(closed_at=NOW, close_reason="shutdown", events_received=3)
    path = spill.write(
        str(tmp_path), [row, Barrier(asyncio.get_running_loop().create_future()), dead, ledger]
    )
    assert path is not None
    assert path.parent == tmp_path
    writer = Writer(lambda: asyncpg.connect(pg_dsn), WriterConfig(writers=1), Metrics())
    task = asyncio.create_task(writer.run())
    try:
        assert await spill.replay(str(tmp_path), writer, reparse_frame) == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stored = await pg.fetchrow("SELECT content_key, price, raw::text FROM market_liquidations")
    assert (bytes(stored["content_key"]), stored["price"]) == (row.content_key, row.price)
    dead_row = await pg.fetchrow(
        "SELECT received_at, source, reason, detail, raw, kept FROM dead_letters"
    )
    assert tuple(dead_row) == (NOW, "fstream/market", "malformed_json", "bad", dead.raw, False)
    ws = await pg.fetchrow(
        "SELECT session_id, closed_at, close_reason, events_received, streams FROM ws_sessions"
    )
    assert tuple(ws) == (ledger.session_id, NOW, "shutdown", 3, ["!forceOrder@arr"])
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_sigterm_with_the_database_down_and_the_queue_full_loses_no_received_event(
    own_postgres: OwnPostgres,
) -> None:
    """SIGTERM while the database is down, the queue full and frames wait in the sockets: every
    event the emulator sent is committed or spilled (exit 0), and a restart stores each once."""
    dsn = own_postgres.dsn
    async with Emulator(EmulatorOptions.for_rate(4000.0)) as emu:
        config = make_config(emu, dsn)
        config = dataclasses.replace(
            config,
            shutdown_grace_s=3.0,
            writer=dataclasses.replace(config.writer, queue_max=50, batch_max_rows=500),
        )
        spill_dir = Path(config.writer.spill_dir)
        loop = asyncio.get_running_loop()
        async with running(config) as daemon:
            [ws] = await emu.wait_for_connections(1)
            check = await asyncpg.connect(dsn)
            try:
                await eventually(count_rows(check), lambda n: n >= 200)
            finally:
                await check.close()
            await own_postgres.stop()
            shard = daemon.runtime.shards[0]
            writer = daemon.runtime.writer

            def backlog() -> int:
                """Data frames the emulator sent that the collector has not read yet."""
                received = shard.current.events_received if shard.current else 0
                return ws.frames_sent - 1 - received  # minus the LIST_SUBSCRIPTIONS reply

            await eventually(
                lambda: asyncio.sleep(0, writer.queue.full() and backlog()),
                lambda n: n >= 2000,
                timeout=30,
            )
            install_signal_handlers(daemon.stop)
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                code = await asyncio.wait_for(asyncio.shield(daemon.task), 15)
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            assert code == 0
            assert writer.items_dropped == 0
        data_frames = ws.frames_sent - 2  # minus the LIST_SUBSCRIPTIONS and UNSUBSCRIBE replies
    [spilled] = await asyncio.to_thread(lambda: list(spill_dir.glob("spill-*.jsonl")))
    lines = (await asyncio.to_thread(spilled.read_bytes)).splitlines()
    spilled_rows = [orjson.loads(line)["kind"] for line in lines].count("liquidation")
    await own_postgres.start()
    check = await asyncpg.connect(dsn)
    try:
        committed = await count_rows(check)()
        assert committed + spilled_rows == data_frames
        # The emulator is gone: the restart stores only what it replays.
        async with running(config):
            assert await asyncio.to_thread(lambda: list(spill_dir.iterdir())) == []
            assert await count_rows(check)() == data_frames
            keys = await check.fetchval(
                "SELECT count(DISTINCT content_key) FROM market_liquidations"
            )
            assert keys == data_frames
            session = await check.fetchrow("SELECT close_reason, events_received FROM ws_sessions")
            assert tuple(session) == ("shutdown", data_frames)
    finally:
        await check.close()


async def test_sigterm_during_a_replay_that_cannot_commit_exits_promptly_and_keeps_the_file(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """`collector run` replaying a spill file while the database goes down stops on SIGTERM at
    once (exit 0, well within the grace period) and leaves the file for the next start."""
    dsn = own_postgres.dsn
    path = spill.write(str(tmp_path), [liquidation(i) for i in range(20)])
    assert path is not None
    content = await asyncio.to_thread(path.read_bytes)
    holder = await asyncpg.connect(dsn)
    await holder.execute("BEGIN; LOCK TABLE market_liquidations IN ACCESS EXCLUSIVE MODE")
    async with (
        Emulator(EmulatorOptions()) as emu,
        collector_process(
            {
                "COLLECTOR_DATABASE_DSN": dsn,
                "COLLECTOR_WRITER_SPILL_DIR": str(tmp_path),
                "COLLECTOR_SHUTDOWN_GRACE_S": "60",
                **emulator_env(emu),
            }
        ) as collector,
    ):
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        check = await asyncpg.connect(dsn)  # (a transaction sees one pg_stat_activity snapshot)
        try:
            await eventually(lambda: check.fetchval(waiting), lambda n: n >= 1, timeout=30)
        finally:
            await check.close()
        await own_postgres.stop()  # ends the lock holder too: the replay now meets no server
        holder.terminate()
        await collector.wait_for_log(lambda r: r.get("event") == "writer.retry_scheduled")
        code = await collector.stop(timeout=10)
    assert code == 0, collector.output()
    assert await asyncio.to_thread(lambda: sorted(tmp_path.iterdir())) == [path]
    assert await asyncio.to_thread(path.read_bytes) == content
    records = [orjson.loads(line) for line in collector.stderr_lines if line.startswith("{")]
    [interrupted] = [r for r in records if r["event"] == "supervisor.replay_interrupted"]
    assert interrupted["reason"] == "stop"
    assert not [r for r in records if r["event"] == "supervisor.started"]


async def test_poison_rows_in_a_spill_file_are_dead_lettered_and_the_rest_committed(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Unreadable lines and a wrongly typed one become `spill_unreadable` dead letters, a row
    Postgres rejects a `db_rejected` one; the good rows commit and the file is deleted."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn)
        good = [liquidation(i) for i in range(5)]
        path = spill.write(config.writer.spill_dir, good)
        assert path is not None
        nul = orjson.dumps(
            {
                "stream": "!forceOrder@arr",
                "data": {**um_event(trade_time_ms=1_795_000_000_099), "x": "\x00"},
            }
        )
        rejected = {
            "kind": "liquidation",
            "raw": nul.decode(),
            "host": "fstream",
            "route": "market",
            "stream": "!forceOrder@arr",
            "received_at": NOW.isoformat(),
        }
        mistyped = {
            "kind": "dead_letter",
            "received_at": NOW.isoformat(),
            "source": "fstream/market",
            "reason": "malformed_json",
            "detail": "bad",
            "raw": "e30=",
            "kept": "yes",
        }
        extra = [b"{not json", orjson.dumps(mistyped), orjson.dumps(rejected)]
        with path.open("ab") as out:
            out.write(b"\n".join(extra) + b"\n")
        async with running(config):
            assert await asyncio.to_thread(lambda: list(path.parent.iterdir())) == []
            assert await count_rows(pg)() == 5
            dead = await pg.fetch("SELECT reason, source, raw FROM dead_letters ORDER BY id")
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == 5
    by_reason = sorted((d["reason"], d["source"]) for d in dead)
    assert by_reason == [
        ("db_rejected", "fstream/!forceOrder@arr"),
        ("spill_unreadable", f"spill/{path.name}"),
        ("spill_unreadable", f"spill/{path.name}"),
    ]
    unreadable = sorted(bytes(d["raw"]) for d in dead if d["reason"] == "spill_unreadable")
    assert unreadable == sorted(extra[:2])


async def test_a_writer_failure_during_replay_ends_the_start_with_exit_1(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A writer that dies replaying (the table it writes is gone) stops the start with exit 1
    instead of hanging, and the spill file stays."""
    await pg.execute("ALTER TABLE market_liquidations RENAME TO market_liquidations_away")
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn)
        path = spill.write(config.writer.spill_dir, [liquidation(i) for i in range(3)])
        assert path is not None
        code = await asyncio.wait_for(run(config, stop=asyncio.Event()), 10)
    assert code == 1
    assert await asyncio.to_thread(lambda: list(path.parent.iterdir())) == [path]


async def test_a_spill_file_in_the_format_of_december_2026_replays(
    pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A file written by the collector of December 2026 (tests/fixtures) replays exactly: both
    frame shapes (a raw event, a combined-stream envelope), a dead letter, a ledger row."""
    fixture = Path(__file__).parent / "fixtures" / "spill-format-2026-12.jsonl"
    path = tmp_path / "spill-20261121T120002000000Z-1.jsonl"
    await asyncio.to_thread(shutil.copyfile, fixture, path)
    writer = Writer(lambda: asyncpg.connect(pg_dsn), WriterConfig(writers=1), Metrics())
    task = asyncio.create_task(writer.run())
    try:
        assert await spill.replay(str(tmp_path), writer, reparse_frame) == 4
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    rows = await pg.fetch(
        "SELECT symbol, side, liquidated_side, price, avg_price, filled_qty, notional_usd,"
        " trade_time, received_at, source_host, source_route, source_stream"
        " FROM market_liquidations ORDER BY trade_time"
    )
    t0 = datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC)  # 1_795_000_000_000 ms
    assert [tuple(r) for r in rows] == [
        ("BTCUSDT", "SELL", "LONG", D("9910"), D("9910"), D("0.014"), D("138.740"),
         t0 + timedelta(milliseconds=7), NOW, "fstream", "market", "!forceOrder@arr"),
        ("ETHUSDT", "BUY", "SHORT", D("3100.25"), D("3100.5"), D("1.5"), D("4650.75"),
         t0 + timedelta(milliseconds=8), NOW + timedelta(seconds=1.25), "fstream", "market",
         "!forceOrder@arr"),
    ]  # fmt: skip
    dead = await pg.fetchrow(
        "SELECT received_at, source, reason, detail, raw, kept FROM dead_letters"
    )
    assert tuple(dead) == (NOW, "fstream/market", "malformed_json", "bad", b"\x00\xff{oops", False)
    ws = await pg.fetchrow(
        "SELECT session_id::text, closed_at, close_reason, events_received FROM ws_sessions"
    )
    assert tuple(ws) == ("6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5", NOW, "shutdown", 3)
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
