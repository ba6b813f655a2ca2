"""`collector simulate` as the offline demo uses it: the daemon, configured from nothing but the
settings line the command prints, stores liquidations from all three venues."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from collector.config import load_config
from tests.daemon import eventually, running

_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
async def simulated() -> AsyncIterator[dict[str, str]]:
    """`collector simulate --port-base 0 --rate 20` as a process: the settings it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "simulate", "--port-base", "0", "--rate", "20",
        env=_ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        yield dict(pair.split("=", 1) for pair in line.split())
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_the_daemon_on_the_printed_settings_stores_rows_from_every_venue(
    simulated: dict[str, str], pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A daemon whose only venue settings are the line `collector simulate` printed stores rows
    from Binance, Bybit and OKX, all read in the `liquidations` view; Bybit's and OKX's stream
    rows arrive on their websockets."""
    assert simulated["COLLECTOR_VENUES_ENABLED"] == "binance,bybit,okx"
    config = load_config({
        **simulated,
        "COLLECTOR_DATABASE_DSN": pg_dsn,
        "COLLECTOR_DATABASE_MIGRATE_ON_START": "false",
        "COLLECTOR_HTTP_PORT": "0",
        "COLLECTOR_WRITER_SPILL_DIR": str(tmp_path / "spill"),
    })  # fmt: skip
    async with running(config):
        venues = await eventually(
            lambda: pg.fetch("SELECT DISTINCT venue FROM liquidations ORDER BY venue"),
            lambda rows: len(rows) == 3,
            timeout=30,
            what="rows from all three venues",
        )
        streamed = await eventually(
            lambda: pg.fetch(
                "SELECT DISTINCT venue FROM venue_liquidations WHERE origin = 'ws' ORDER BY venue"
            ),
            lambda rows: len(rows) == 2,
            timeout=30,
            what="Bybit and OKX rows from their websockets",
        )
    assert [r["venue"] for r in venues] == ["binance", "bybit", "okx"]
    assert [r["venue"] for r in streamed] == ["bybit", "okx"]
