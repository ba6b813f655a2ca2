"""The rollups of migration 0004 and `collector.db.rollup`: exact totals, late rows, COIN-M notional
filled in later, deletes, the mark-versioning that survives a concurrent writer, and the task."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from bench import yeardata
from collector.config import WriterConfig
from collector.db.rollup import pending_minutes, rebuild, refresh_pending, run_rollups
from collector.emulator import Emulator, EmulatorOptions, make_force_order_event
from collector.metrics import Metrics
from collector.model import Market
from collector.runtime import Component, Runtime
from collector.sink.writer import Writer
from collector.sources.catalog import SymbolInfo
from collector.sources.exchange_info import store_symbols
from tests import factories
from tests.daemon import eventually, make_config, running, subscribed

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
D = Decimal

_INSERT = """
INSERT INTO market_liquidations (trade_time, content_key, event_time, symbol, market, side,
    liquidated_side, status, orig_qty, price, avg_price, filled_qty, notional_usd, received_at,
    source_host, source_route, source_stream, raw)
VALUES ($1, $2, $1, $3, $4, $5, $6, 'FILLED', $7, $8, $8, $7, $9, $1, 'fstream', 'market',
        '!forceOrder@arr', '{}')
"""


async def insert(
    conn: asyncpg.Connection,
    at: datetime,
    symbol: str,
    liquidated_side: str,
    qty: str,
    price: str,
    notional: str | None,
    market: str = "UM",
) -> None:
    """Insert one base row (a SELL force order closes a LONG)."""
    side = "SELL" if liquidated_side == "LONG" else "BUY"
    await conn.execute(
        _INSERT, at, uuid.uuid4().bytes, symbol, market, side, liquidated_side, D(qty), D(price),
        None if notional is None else D(notional),
    )  # fmt: skip


async def minute_rows(conn: asyncpg.Connection, table: str) -> list[tuple[object, ...]]:
    """Every rollup row of `table`, as plain tuples in key order."""
    rows = await conn.fetch(
        f"SELECT bucket, market, symbol, liquidated_side, events, filled_qty, notional_usd, "
        f"notional_unknown, max_notional_usd FROM {table} ORDER BY 1, 2, 3, 4"
    )
    return [tuple(r) for r in rows]


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test's fresh database."""
    p = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=3)
    try:
        yield p
    finally:
        await p.close()


async def test_refresh_builds_exact_minute_and_hour_totals(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Rows in two minutes become exact per-minute, -hour and -day totals; no mark remains."""
    await insert(pg, T0 + timedelta(seconds=5), "BTCUSDT", "LONG", "0.5", "60000", "30000.10")
    await insert(pg, T0 + timedelta(seconds=30), "BTCUSDT", "LONG", "0.25", "60010", "15002.5")
    await insert(pg, T0 + timedelta(seconds=70), "BTCUSDT", "SHORT", "1", "60100", "60100")
    assert await pending_minutes(pool) == 2

    assert await refresh_pending(pool) == 2

    assert await minute_rows(pg, "market_liquidations_1m") == [
        (T0, "UM", "BTCUSDT", "LONG", 2, D("0.75"), D("45002.60"), 0, D("30000.10")),
        (T0 + timedelta(minutes=1), "UM", "BTCUSDT", "SHORT", 1, D("1"), D("60100"), 0, D("60100")),
    ]
    assert await minute_rows(pg, "market_liquidations_1h") == [
        (T0, "UM", "BTCUSDT", "LONG", 2, D("0.75"), D("45002.60"), 0, D("30000.10")),
        (T0, "UM", "BTCUSDT", "SHORT", 1, D("1"), D("60100"), 0, D("60100")),
    ]
    day = datetime(2026, 3, 2, tzinfo=UTC)
    assert await minute_rows(pg, "market_liquidations_1d") == [
        (day, "UM", "BTCUSDT", "LONG", 2, D("0.75"), D("45002.60"), 0, D("30000.10")),
        (day, "UM", "BTCUSDT", "SHORT", 1, D("1"), D("60100"), 0, D("60100")),
    ]
    assert await pending_minutes(pool) == 0
    assert await refresh_pending(pool) == 0


async def test_totals_are_exact_before_and_after_the_refresh(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """liquidation_totals() sums exactly both from marked minutes and from refreshed rollups."""
    await insert(pg, T0 + timedelta(minutes=3), "ETHUSDT", "SHORT", "2", "3000", "6000")
    await insert(pg, T0 + timedelta(minutes=61), "ETHUSDT", "SHORT", "1", "3001", "3001")
    query = """SELECT bucket, sum(notional_usd), sum(events)::int
                 FROM liquidation_totals($1, $2, $3::text::interval) GROUP BY 1 ORDER BY 1"""
    expected_hours = [(T0, D("6000"), 1), (T0 + timedelta(hours=1), D("3001"), 1)]
    expected_day = [(datetime(2026, 3, 2, tzinfo=UTC), D("9001"), 2)]
    await insert(pg, T0 + timedelta(days=1), "ETHUSDT", "LONG", "1", "3100", "3100")
    for _ in range(2):
        hours = await pg.fetch(query, T0, T0 + timedelta(hours=2), "1 hour")
        day = await pg.fetch(query, T0, T0 + timedelta(hours=2), "1 day")
        two_days = await pg.fetch(query, T0, T0 + timedelta(days=2), "2 days")
        minutes = await pg.fetch(query, T0, T0 + timedelta(hours=2), "5 minutes")
        assert [tuple(r) for r in hours] == expected_hours
        assert [tuple(r) for r in day] == expected_day
        assert [tuple(r) for r in two_days] == [  # 2-day buckets count from 2000-01-01
            (datetime(2026, 3, 1, tzinfo=UTC), D("9001"), 2),
            (datetime(2026, 3, 3, tzinfo=UTC), D("3100"), 1),
        ]
        assert [tuple(r) for r in minutes] == [
            (T0, D("6000"), 1), (T0 + timedelta(minutes=60), D("3001"), 1),
        ]  # fmt: skip
        await refresh_pending(pool)


async def test_late_row_in_an_old_minute_reaches_the_rollup(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A row arriving days after its minute was rolled up is added to that minute and its hour."""
    old = T0 - timedelta(days=3)
    await insert(pg, old + timedelta(seconds=1), "SOLUSDT", "LONG", "10", "100", "1000")
    await refresh_pending(pool)
    await insert(pg, old + timedelta(seconds=59), "SOLUSDT", "LONG", "5", "99", "495")

    assert await refresh_pending(pool) == 1

    row = await pg.fetchrow(
        "SELECT events, notional_usd, max_notional_usd "
        "FROM market_liquidations_1h WHERE bucket = $1",
        old,
    )
    assert tuple(row) == (2, D("1495"), D("1000"))


async def test_coin_m_notional_filled_by_exchange_info_reaches_the_rollup(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A COIN-M row without notional counts as unknown until exchangeInfo fills it, then as USD."""
    await insert(pg, T0, "BTCUSD_PERP", "LONG", "7", "60000", None, market="CM")
    await refresh_pending(pool)
    assert (await minute_rows(pg, "market_liquidations_1m"))[0][4:] == (1, D("7"), D("0"), 1, None)

    info = SymbolInfo(Market.CM, "BTCUSD_PERP", "BTCUSD", "BTC", "USD", "BTC", "PERPETUAL",
                      D("100"), "TRADING")  # fmt: skip
    assert await store_symbols(pool, [info]) == 1
    assert await refresh_pending(pool) == 1

    filled = (1, D("7"), D("700"), 0, D("700"))
    assert (await minute_rows(pg, "market_liquidations_1m"))[0][4:] == filled
    assert (await minute_rows(pg, "market_liquidations_1h"))[0][4:] == filled


async def test_deleted_rows_leave_the_rollup(pg: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    """Deleting a minute's only rows removes that minute's and hour's rollup rows."""
    await insert(pg, T0, "XRPUSDT", "SHORT", "100", "0.5", "50")
    await refresh_pending(pool)
    await pg.execute("DELETE FROM market_liquidations WHERE symbol = 'XRPUSDT'")

    assert await refresh_pending(pool) == 1

    assert await minute_rows(pg, "market_liquidations_1m") == []
    assert await minute_rows(pg, "market_liquidations_1h") == []
    assert await minute_rows(pg, "market_liquidations_1d") == []


async def test_the_writers_batch_insert_marks_its_minutes(
    pg: asyncpg.Connection, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """Rows committed by the real Writer (COPY staging, INSERT ... SELECT) mark their minutes."""
    writer = Writer(lambda: asyncpg.connect(pg_dsn), WriterConfig(), Metrics())
    task = asyncio.create_task(writer.run())
    try:
        # Trade times 11:06:41, 11:06:42 and 11:07:01 UTC: two minutes of one hour.
        for offset_ms in (1000, 2000, 21000):
            await writer.put(factories.liquidation(offset_ms, qty="2", avg_price="600"))
        await writer.flush()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert await pending_minutes(pool) == 2
    await refresh_pending(pool)
    hour = await pg.fetchrow("SELECT bucket, events, notional_usd FROM market_liquidations_1h")
    assert tuple(hour) == (datetime(2026, 11, 18, 11, tzinfo=UTC), 3, D("3600"))


async def test_a_mark_committed_after_the_refresh_read_survives_it(
    pg: asyncpg.Connection, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """A row committed after a refresh read the marks keeps its minute marked for the next pass."""
    await insert(pg, T0, "ADAUSDT", "LONG", "10", "1", "10")
    other = await asyncpg.connect(pg_dsn)
    try:
        tx = other.transaction()
        await tx.start()
        await insert(other, T0 + timedelta(seconds=30), "ADAUSDT", "LONG", "20", "1", "20")
        assert await refresh_pending(pool) == 1  # neither sees nor waits for the open writer
        await tx.commit()
    finally:
        await other.close()

    assert await pending_minutes(pool) == 1
    assert await refresh_pending(pool) == 1
    row = await pg.fetchrow("SELECT events, notional_usd FROM market_liquidations_1m")
    assert tuple(row) == (2, D("30"))


async def test_concurrent_writers_do_not_wait_on_each_others_marks(
    pg: asyncpg.Connection, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """Two open transactions insert into the same minute without blocking; both rows count."""
    first, second = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        await insert(first, T0 + timedelta(seconds=1), "SOLUSDT", "SHORT", "1", "100", "100")
        await asyncio.wait_for(
            insert(second, T0 + timedelta(seconds=2), "SOLUSDT", "SHORT", "2", "100", "200"), 5
        )
        await tx2.commit()
        await tx1.commit()
    finally:
        await first.close()
        await second.close()

    assert await pending_minutes(pool) == 1
    assert await refresh_pending(pool) == 1
    row = await pg.fetchrow("SELECT events, notional_usd FROM market_liquidations_1m")
    assert tuple(row) == (2, D("300"))


async def test_a_second_refresher_backs_off_while_one_runs(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """refresh_pending() returns None while another session holds the refresh lock."""
    await insert(pg, T0, "DOGEUSDT", "SHORT", "1000", "0.1", "100")
    async with pg.transaction():
        await pg.execute("SELECT refresh_market_rollup_dirty(0)")  # takes the lock, changes nothing
        assert await refresh_pending(pool) is None
    assert await refresh_pending(pool) == 1


async def test_rebuild_recomputes_a_range_from_the_base_table(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """rebuild() restores rollup rows that were lost, over a range spanning two days."""
    await insert(pg, T0, "LTCUSDT", "LONG", "1", "80", "80")
    await insert(pg, T0 + timedelta(days=1), "LTCUSDT", "LONG", "2", "80", "160")
    await refresh_pending(pool)
    await pg.execute("DELETE FROM market_liquidations_1m; DELETE FROM market_liquidations_1h;"
                     "DELETE FROM market_liquidations_1d")  # fmt: skip

    assert await rebuild(pool, T0, T0 + timedelta(days=1, minutes=1)) == 24 * 60 + 1

    rows = await pg.fetch("SELECT bucket, notional_usd FROM market_liquidations_1h ORDER BY 1")
    assert [tuple(r) for r in rows] == [(T0, D("80")), (T0 + timedelta(days=1), D("160"))]
    days = await pg.fetch("SELECT bucket, notional_usd FROM market_liquidations_1d ORDER BY 1")
    assert [tuple(r) for r in days] == [
        (datetime(2026, 3, 2, tzinfo=UTC), D("80")), (datetime(2026, 3, 3, tzinfo=UTC), D("160")),
    ]  # fmt: skip


async def test_run_rollups_refreshes_until_stopped(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """The task clears every marked minute and returns promptly once stop is set."""
    for minute in range(3):
        await insert(pg, T0 + timedelta(minutes=minute), "BTCUSDT", "LONG", "1", "1", "1")
    stop = asyncio.Event()
    task = asyncio.create_task(run_rollups(pool, stop, interval_s=3600, max_minutes=2))

    async def drained() -> bool:
        return await pending_minutes(pool) == 0

    await eventually(drained, timeout=5)
    stop.set()
    async with asyncio.timeout(5):
        await task
    assert await pg.fetchval("SELECT sum(events) FROM market_liquidations_1m") == 3


async def test_run_rollups_raises_when_the_schema_is_missing(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A missing refresh function is a bug, not a transient failure: the task raises."""
    await pg.execute("DROP FUNCTION refresh_market_rollup_dirty(integer)")

    with pytest.raises(asyncpg.UndefinedFunctionError):
        await run_rollups(pool, asyncio.Event(), interval_s=0.01)


async def test_daemon_with_the_rollup_component_keeps_the_rollup_current(
    pg: asyncpg.Connection, pg_dsn: str
) -> None:
    """Wired as a supervisor component, the task rolls up a liquidation the stream delivered."""

    def rollup(runtime: Runtime) -> dict[str, Component]:
        return {"rollup": lambda s: run_rollups(runtime.pool, s, interval_s=0.05)}

    async with (
        Emulator(EmulatorOptions()) as emu,
        running(make_config(emu, pg_dsn), extra_components=rollup) as daemon,
    ):
        await subscribed(emu, host="fstream")
        event = make_force_order_event(
            "ETHUSDT", "BUY", "2", "3000", "3000", 1_795_000_000_000, 1_795_000_000_001
        )
        assert await emu.publish(event) >= 1

        async def rolled_up() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM market_liquidations_1h"))

        await eventually(rolled_up, timeout=10)
        assert await daemon.shutdown() == 0
    row = await pg.fetchrow(
        "SELECT symbol, liquidated_side, events, notional_usd FROM market_liquidations_1h"
    )
    assert tuple(row) == ("ETHUSDT", "SHORT", 1, D("6000"))  # a BUY force order closes a short
    assert await pg.fetchval("SELECT count(*) FROM market_rollup_dirty") == 0


async def test_a_rebuild_equals_the_incremental_rollup_on_a_generated_dataset(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Over three generated days (bursts; then deletes and notional changes in refreshed minutes;
    all marked by the triggers and refreshed pass by pass), rebuild() from empty rollups gives
    the same rows."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    end = start + timedelta(days=3)
    await yeardata.generate(pg, 6_000, start, end, seed=7, with_triggers=True)
    while await refresh_pending(pool, max_minutes=500):
        pass
    await pg.execute("DELETE FROM market_liquidations WHERE get_byte(content_key, 0) < 8")
    await pg.execute(
        "UPDATE market_liquidations SET notional_usd = NULL "
        "WHERE market = 'CM' AND get_byte(content_key, 1) < 64"
    )
    while await refresh_pending(pool, max_minutes=500):
        pass
    tables = ("market_liquidations_1m", "market_liquidations_1h", "market_liquidations_1d")
    incremental = [await minute_rows(pg, t) for t in tables]
    assert len(incremental[0]) > 1_000  # many minutes, several symbols per busy minute
    assert sum(r[7] for r in incremental[2]) > 0  # and some unknown notionals

    await pg.execute("DELETE FROM market_liquidations_1m; DELETE FROM market_liquidations_1h;"
                     "DELETE FROM market_liquidations_1d")  # fmt: skip
    assert await rebuild(pool, start, end) == 3 * 24 * 60

    assert [await minute_rows(pg, t) for t in tables] == incremental
    totals = await pg.fetchrow(
        "SELECT count(*), sum(filled_qty), sum(notional_usd) FROM market_liquidations"
    )
    day_totals = await pg.fetchrow(
        "SELECT sum(events), sum(filled_qty), sum(notional_usd) FROM market_liquidations_1d"
    )
    assert tuple(day_totals) == tuple(totals)


_FROM_SCRATCH = """
SELECT date_bin($1::text::interval, trade_time, '2000-01-01 00:00:00+00') AS bucket, market, symbol,
       liquidated_side, count(*) AS events, sum(filled_qty), coalesce(sum(notional_usd), 0),
       count(*) - count(notional_usd), max(notional_usd)
  FROM market_liquidations GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""


async def from_scratch(conn: asyncpg.Connection, width: str) -> list[tuple[object, ...]]:
    """The rollup of `width` ('1 minute', '1 hour', '1 day') aggregated straight from the base."""
    return [tuple(r) for r in await conn.fetch(_FROM_SCRATCH, width)]


async def test_a_full_rebuild_equals_an_aggregate_from_scratch_and_drops_stale_rows(
    pg: asyncpg.Connection,
) -> None:
    """rebuild_market_rollup() over three generated days (with some notionals unknown) gives,
    at each level, exactly the GROUP BY of the base table, and removes rollup rows left outside
    the rows' range (a day whose rows are gone)."""
    start = datetime(2026, 3, 1, 7, 13, tzinfo=UTC)  # mid-day, mid-hour
    end = start + timedelta(days=3)
    await yeardata.generate(pg, 6_000, start, end, seed=11)
    await pg.execute(
        "UPDATE market_liquidations SET notional_usd = NULL "
        "WHERE market = 'CM' AND get_byte(content_key, 1) < 64"
    )
    stale = datetime(2026, 2, 20, 5, tzinfo=UTC)
    await insert(pg, stale, "LTCUSDT", "LONG", "1", "80", "80")
    await pg.execute("SELECT refresh_market_rollup($1, $2)", stale, stale + timedelta(minutes=1))
    await pg.execute("DELETE FROM market_liquidations WHERE trade_time = $1", stale)

    minutes = await pg.fetchval("SELECT rebuild_market_rollup()")

    assert minutes == 4 * 24 * 60  # 2026-03-01 .. 2026-03-05 (the last row's day), whole days
    for table, width in (("1m", "1 minute"), ("1h", "1 hour"), ("1d", "1 day")):
        expected = await from_scratch(pg, width)
        assert await minute_rows(pg, f"market_liquidations_{table}") == expected
    assert sum(r[7] for r in await minute_rows(pg, "market_liquidations_1d")) > 0  # type: ignore[misc]
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM market_liquidations_1d WHERE bucket < $1",
            start.replace(hour=0, minute=0),
        )
        == 0
    )


async def test_a_range_refresh_from_mid_hour_keeps_the_rest_of_its_hour_and_day(
    pg: asyncpg.Connection,
) -> None:
    """refresh_market_rollup() over [10:30, 11:00) recomputes those minutes and whole hour and
    day from the minutes outside the range, which it leaves as they were."""
    for minute in (5, 35, 65):
        await insert(pg, T0 + timedelta(minutes=minute), "BTCUSDT", "LONG", "1", "10", "10")
    assert await pg.fetchval("SELECT rebuild_market_rollup()") == 24 * 60
    await insert(pg, T0 + timedelta(minutes=40), "BTCUSDT", "LONG", "2", "10", "20")

    lo = T0 + timedelta(minutes=30)
    assert (
        await pg.fetchval("SELECT refresh_market_rollup($1, $2)", lo, lo + timedelta(minutes=30))
        == 30
    )

    hours = await pg.fetch(
        "SELECT bucket, events, notional_usd FROM market_liquidations_1h ORDER BY 1"
    )
    assert [tuple(r) for r in hours] == [(T0, 3, D("40")), (T0 + timedelta(hours=1), 1, D("10"))]
    day = await pg.fetch("SELECT events, notional_usd FROM market_liquidations_1d")
    assert [tuple(r) for r in day] == [(4, D("50"))]
    for table, width in (("1m", "1 minute"), ("1h", "1 hour"), ("1d", "1 day")):
        assert await minute_rows(pg, f"market_liquidations_{table}") == await from_scratch(
            pg, width
        )
