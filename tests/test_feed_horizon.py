"""The feed's horizon (migration 0015): rows below it are final because every transaction that
writes liquidations holds the feed lock from before its first write. Other transactions on the
server (they never write a liquidation) no longer hold the feed back; a writer still does;
and each of the collector's ways of writing takes the lock before anything else."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from collector.files.importer import import_file
from collector.files.tardis import HEADER
from collector.metrics import Metrics
from collector.model import MarketLiquidation, SessionRecord
from collector.sink.columns import INSERT_ML_ONE, ml_record
from collector.sink.commit import JSON_MAX_ROWS
from collector.sink.writer import Writer
from collector.venues import VenueLiquidation
from tests.factories import bybit_liquidation, liquidation, session
from tests.feed_harness import Stream, ids, served
from tests.test_files import TARDIS_FILES
from tests.test_writer import FAST, start, stop

HORIZON = "SELECT liquidation_feed_horizon()::text::bigint"
XMAX = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
OWN_XID = "SELECT pg_current_xact_id()::text::bigint"


@pytest.fixture
async def other(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_transaction_that_writes_no_liquidation_does_not_hold_the_feed_back(
    pg_dsn: str, pg: asyncpg.Connection, other: asyncpg.Connection
) -> None:
    """A transaction with an id stays open on the server (as another application's, a
    migration's or the rollup refresh's would); a row committed after it is delivered while it
    is still open. Below the cluster's xmin (0009's rule) the feed would wait for it."""
    async with (
        served(pg_dsn) as s,
        aiohttp.ClientSession() as http,
        http.get(f"{s.url}/v1/liquidations/stream") as resp,
    ):
        elsewhere = other.transaction()
        await elsewhere.start()
        await other.execute("CREATE TEMP TABLE unrelated (x int); INSERT INTO unrelated VALUES (1)")
        held = await other.fetchval(OWN_XID)
        async with pg.transaction():
            await pg.execute(INSERT_ML_ONE, *ml_record(liquidation(40)))
            written = await pg.fetchval(OWN_XID)
        assert held < written
        frames = await Stream(resp).events(1)
        still = await other.fetchval("SELECT pg_current_xact_id_if_assigned()::text::bigint")
        await elsewhere.rollback()
    assert still == held
    cursor = await pg.fetchval("SELECT committed_xid::text || '-' || seq FROM market_liquidations")
    assert cursor.startswith(f"{written}-")
    assert ids(frames) == [cursor]


async def test_the_horizon_is_the_oldest_writer_holding_the_feed_lock(
    pg: asyncpg.Connection, other: asyncpg.Connection, pg_dsn: str
) -> None:
    """An older transaction that writes no liquidation is not the horizon; an open writer is,
    from its first INSERT; with no writer open it is the snapshot's xmax."""
    third = await asyncpg.connect(pg_dsn)
    try:
        unrelated = third.transaction()
        await unrelated.start()
        older = await third.fetchval(OWN_XID)
        writer = pg.transaction()
        await writer.start()
        await pg.execute(INSERT_ML_ONE, *ml_record(liquidation(41)))  # the trigger's lock
        written = await pg.fetchval(OWN_XID)
        assert older < written
        # An id that completes after both moves the snapshot's xmax past them (xmax is the
        # latest completed id + 1: ids at or above it are in progress without being listed).
        await other.execute("SELECT pg_current_xact_id()")
        assert await other.fetchval(HORIZON) == written
        await writer.commit()
        horizon, xmax = await other.fetchrow(
            "SELECT liquidation_feed_horizon()::text::bigint,"
            " pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        )
        assert horizon == xmax > written
        await unrelated.rollback()
    finally:
        await third.close()


def warnings_of(messages: list[str], dsn: str) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """A connect() for the writer whose server notices (WARNINGs) go to `messages`."""

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn)
        conn.add_log_listener(lambda _c, m: messages.append(f"{m.severity}: {m.message}"))
        return conn

    return connect


WARNING = (
    "WARNING: collector: market_liquidations written by a transaction that wrote before it"
    " took the feed lock; call liquidation_feed_lock() first, or the live feed may miss these"
    " rows"
)


async def test_a_write_before_the_lock_is_a_warning_naming_the_table(
    pg: asyncpg.Connection,
) -> None:
    """The rule's check can fail: an id taken before the INSERT draws the WARNING (and the
    lock is still taken); after liquidation_feed_lock() the same transaction draws none."""
    messages: list[str] = []
    pg.add_log_listener(lambda _c, m: messages.append(f"{m.severity}: {m.message}"))
    async with pg.transaction():
        await pg.execute("SELECT pg_current_xact_id()")
        await pg.execute(INSERT_ML_ONE, *ml_record(liquidation(42)))
    async with pg.transaction():
        await pg.execute("SELECT liquidation_feed_lock(), pg_current_xact_id()")
        await pg.execute(INSERT_ML_ONE, *ml_record(liquidation(43)))
    assert messages == [WARNING]


@pytest.mark.parametrize(
    "items",
    [
        [liquidation(i) for i in range(3)],
        [liquidation(i) for i in range(JSON_MAX_ROWS + 5)],
        [liquidation(1), session(), bybit_liquidation()],
        [liquidation(1), liquidation(2)._replace(raw='{"x":"\\u0000"}'), session()],
        [liquidation(i) for i in range(JSON_MAX_ROWS + 5)]
        + [liquidation(999)._replace(raw='{"x":"\\u0000"}')],
    ],
    ids=["json-alone", "copy-alone", "mixed", "isolating", "copy-isolating"],
)
async def test_every_way_the_writer_writes_takes_the_lock_first(
    pg_dsn: str,
    pg: asyncpg.Connection,
    items: list[MarketLiquidation | SessionRecord | VenueLiquidation],
) -> None:
    """One JSON statement autocommitted, COPY through the staging table, with other kinds of
    rows, and the rewrite of a batch with a rejected row under savepoints: no WARNING, every row
    stored."""
    messages: list[str] = []
    config = dataclasses.replace(FAST, batch_max_rows=1000)
    writer = Writer(warnings_of(messages, pg_dsn), config, Metrics())
    for item in items:  # queued before the writer runs: one batch
        await writer.put(item)
    task = await start(writer)
    await writer.flush()
    await stop(task)
    good = [i for i in items if isinstance(i, MarketLiquidation) and "\\u0000" not in i.raw]
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == len(good)
    assert messages == []


async def test_an_import_takes_the_lock_before_its_staging_copies(
    pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """`collector import` COPYs into staging tables first (a write): it locks before them."""
    messages: list[str] = []
    pg.add_log_listener(lambda _c, m: messages.append(f"{m.severity}: {m.message}"))
    path = tmp_path / "bybit_liquidations_2026-11-18_ROSEUSDT.csv"
    path.write_text(HEADER + "\n" + TARDIS_FILES[path.name + ".gz"])
    assert (await import_file(pg, path)).stored == 1
    assert messages == []
