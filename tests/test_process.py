"""The collector as a process and across a database restart: drains on SIGTERM, loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg

from collector.emulator import Emulator, EmulatorOptions
from tests.conftest import OwnPostgres
from tests.daemon import count_rows, eventually, make_config, running
from tests.factories import um_event


async def test_sigterm_drains_every_received_event_and_exits_zero(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """`collector run` stops on SIGTERM: every event sent to it is committed; exit code 0."""
    async with Emulator(EmulatorOptions()) as emu:
        env = {
            **os.environ,
            "COLLECTOR_DATABASE_DSN": pg_dsn,
            "COLLECTOR_VENUES_ENABLED": "binance",  # the emulator is Binance's only
            "COLLECTOR_BINANCE_FSTREAM_URL": emu.fstream_url,
            "COLLECTOR_BINANCE_DSTREAM_URL": emu.dstream_url,
            "COLLECTOR_BINANCE_FAPI_URL": emu.fapi_url,
            "COLLECTOR_BINANCE_DAPI_URL": emu.dapi_url,
            "COLLECTOR_HTTP_PORT": "0",
            "COLLECTOR_LOG_FORMAT": "json",
            "COLLECTOR_SHUTDOWN_GRACE_S": "10",
            "COLLECTOR_BINANCE_REDUNDANCY": "1",  # counts one connection's frames
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "collector",
            "run",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            [conn] = await emu.wait_for_connections(1, timeout=30)
            await emu.wait_until(lambda: bool(conn.streams), timeout=10)
            sent = 0
            while sent < 300:
                sent += await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + sent))
            # Stop mid-stream: more events keep coming while the daemon shuts down.
            proc.send_signal(signal.SIGTERM)
            while conn in emu.connections:
                sent += await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + sent))
                await asyncio.sleep(0)
            code = await asyncio.wait_for(proc.wait(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        _, stderr = await proc.communicate()
        assert code == 0, stderr.decode()[-2000:]
    data_frames = conn.frames_sent - 2  # minus the LIST_SUBSCRIPTIONS and UNSUBSCRIBE replies
    assert await count_rows(pg)() == data_frames
    session = await pg.fetchrow("SELECT close_reason, events_received, closed_at FROM ws_sessions")
    assert (session["close_reason"], session["events_received"]) == ("shutdown", data_frames)
    assert b'"event": "supervisor.drained"' in stderr


async def test_postgres_restart_mid_stream_loses_nothing(own_postgres: OwnPostgres) -> None:
    """Events received while Postgres restarts are kept in the queue and committed after."""
    dsn = own_postgres.dsn
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, dsn)) as daemon:
        [ws] = await emu.wait_for_connections(1)
        await emu.wait_until(lambda: bool(ws.streams))
        for i in range(50):
            await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i))
        await daemon.runtime.writer.flush()
        await own_postgres.stop()
        for i in range(50, 150):
            await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i))
        metrics = daemon.runtime.metrics.registry
        await eventually(
            lambda: asyncio.sleep(0, metrics.get_sample_value("collector_database_up")),
            lambda up: up == 0,
        )
        await own_postgres.start()
        await asyncio.wait_for(daemon.runtime.writer.flush(), 30)
        check = await asyncpg.connect(dsn)
        try:
            assert await count_rows(check)() == 150
            keys = await check.fetchval(
                "SELECT count(DISTINCT trade_time) FROM market_liquidations"
            )
            assert keys == 150
        finally:
            await check.close()
        transient = metrics.get_sample_value("collector_write_errors_total", {"kind": "transient"})
        assert transient >= 1
