"""The venue rollups of migration 0014 and `collector.db.venue_rollup`: every rollup level and
every reader equal, exactly, the same aggregate computed from scratch over `venue_liquidations`,
before the refresh (marked minutes), after it, and after late updates and deletes."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from collector.db.migrate import migrate
from collector.db.rollup import refresh_pending
from collector.db.venue_rollup import (
    rebuild_venues,
    refresh_venue_pending,
    run_venue_rollups,
    venue_pending_minutes,
)
from tests.conftest import _with_database
from tests.daemon import eventually

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
D = Decimal
ORIGIN = "'2000-01-01 00:00:00+00'"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

_VL = """
INSERT INTO venue_liquidations (trade_time, venue, content_key, market, symbol, base_asset,
    liquidated_side, price, qty, notional_usd, received_at, wire, raw, origin)
VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, NULL, $8, $1, '{}', '{}', 'ws')
"""
# (seconds after T0, venue, market, symbol, liquidated side, price, notional USD)
ROWS = [
    (5, "bybit", "linear", "BTCUSDT", "LONG", "60000", "30000.10"),
    (30, "bybit", "linear", "BTCUSDT", "LONG", "60010", "15002.5"),
    (70, "bybit", "linear", "BTCUSDT", "SHORT", "60100", "60100"),
    (75, "bybit", "inverse", "BTCUSD", "SHORT", "60100", "1000"),
    (80, "okx", "SWAP", "BTC-USDT-SWAP", "LONG", "60050", "600.50"),
    (81, "okx", "MARGIN", "BTC-USDT", None, None, None),  # no side, no notional
    (82, "okx", "MARGIN", "BTC-USDT", None, None, None),
    (3_700, "okx", "SWAP", "BTC-USDT-SWAP", "LONG", "60000", "1.000000001"),
    (86_400 + 10, "bybit", "linear", "ETHUSDT", "SHORT", "3000", "6000"),
]


async def seed(conn: asyncpg.Connection) -> None:
    """The rows above, one statement each (one mark per statement and minute)."""
    for seconds, venue, market, symbol, side, price, notional in ROWS:
        await conn.execute(
            _VL, T0 + timedelta(seconds=seconds), venue, uuid.uuid4().bytes, market, symbol, side,
            price and D(price), notional and D(notional),
        )  # fmt: skip


_KEY = "bucket, venue, market, symbol, liquidated_side"
_VALUES = "events, notional_usd, notional_unknown, max_notional_usd"


async def scratch(conn: asyncpg.Connection, step: str) -> set[tuple[object, ...]]:
    """The aggregate per `step` bucket, from the base table alone."""
    rows = await conn.fetch(
        f"SELECT date_bin('{step}', trade_time, {ORIGIN}) AS bucket, venue, market, symbol,"
        " liquidated_side, count(*) AS events, coalesce(sum(notional_usd), 0) AS notional_usd,"
        " count(*) - count(notional_usd) AS notional_unknown, max(notional_usd) AS max_notional_usd"
        " FROM venue_liquidations GROUP BY 1, 2, 3, 4, 5"
    )
    return {tuple(r) for r in rows}


async def table(conn: asyncpg.Connection, name: str) -> set[tuple[object, ...]]:
    """Every row of rollup table `name`."""
    return {tuple(r) for r in await conn.fetch(f"SELECT {_KEY}, {_VALUES} FROM {name}")}


async def totals(conn: asyncpg.Connection, step: str) -> set[tuple[object, ...]]:
    """venue_liquidation_totals() over three days, per `step`."""
    rows = await conn.fetch(
        f"SELECT {_KEY}, {_VALUES} FROM venue_liquidation_totals($1, $2, $3::text::interval)",
        T0 - timedelta(days=1), T0 + timedelta(days=2), step,
    )  # fmt: skip
    return {tuple(r) for r in rows}


async def check_readers(conn: asyncpg.Connection) -> None:
    """Each reader, at every rollup level, equals the from-scratch aggregate."""
    for step in ("1 minute", "5 minutes", "1 hour", "2 hours", "1 day", "2 days"):
        assert await totals(conn, step) == await scratch(conn, step), step


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test's fresh database."""
    p = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=3)
    try:
        yield p
    finally:
        await p.close()


async def test_rollups_equal_the_from_scratch_aggregate(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Before the refresh the readers recompute marked minutes; after it every rollup table
    holds exactly the aggregate of its level, NULL sides as their own group, no mark left."""
    await seed(pg)
    assert await venue_pending_minutes(pool) == 4  # 10:00, 10:01, 11:01, 10:00 next day
    assert await table(pg, "venue_liquidations_1m") == set()
    await check_readers(pg)

    assert await refresh_venue_pending(pool) == 4

    assert await venue_pending_minutes(pool) == 0
    assert await table(pg, "venue_liquidations_1m") == await scratch(pg, "1 minute")
    assert await table(pg, "venue_liquidations_1h") == await scratch(pg, "1 hour")
    assert await table(pg, "venue_liquidations_1d") == await scratch(pg, "1 day")
    await check_readers(pg)
    minute = T0 + timedelta(minutes=1)
    assert await pg.fetch(
        f"SELECT {_KEY}, {_VALUES} FROM venue_liquidations_1m WHERE bucket = $1"
        " ORDER BY venue, market, liquidated_side NULLS FIRST",
        minute,
    ) == [
        (minute, "bybit", "inverse", "BTCUSD", "SHORT", 1, D("1000"), 0, D("1000")),
        (minute, "bybit", "linear", "BTCUSDT", "SHORT", 1, D("60100"), 0, D("60100")),
        (minute, "okx", "MARGIN", "BTC-USDT", None, 2, D(0), 2, None),
        (minute, "okx", "SWAP", "BTC-USDT-SWAP", "LONG", 1, D("600.50"), 0, D("600.50")),
    ]
    assert await refresh_venue_pending(pool) == 0


async def test_late_changes_and_deletes_are_exact_after_the_next_refresh(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A notional filled in later, a deleted row and a new row in a refreshed hour each mark
    their minutes; readers stay exact meanwhile and the next refresh leaves no stale group."""
    await seed(pg)
    await refresh_venue_pending(pool)

    await pg.execute(
        "UPDATE venue_liquidations SET notional_usd = 15000.25 WHERE market = 'MARGIN'"
        " AND trade_time = $1",
        T0 + timedelta(seconds=81),
    )
    await pg.execute("DELETE FROM venue_liquidations WHERE market = 'inverse'")
    await pg.execute(
        _VL, T0 + timedelta(minutes=30), "okx", uuid.uuid4().bytes, "FUTURES",
        "BTC-USD-260327", "SHORT", D("59000"), D("100"),
    )  # fmt: skip
    assert await venue_pending_minutes(pool) == 2  # 10:01 (update and delete), 10:30
    await check_readers(pg)

    assert await refresh_venue_pending(pool) == 2

    for name, step in (("1m", "1 minute"), ("1h", "1 hour"), ("1d", "1 day")):
        assert await table(pg, f"venue_liquidations_{name}") == await scratch(pg, step), name
    assert await pg.fetchval(
        "SELECT count(*) FROM venue_liquidations_1d WHERE market = 'inverse'"
    ) == 0  # fmt: skip
    await check_readers(pg)

    await pg.execute("TRUNCATE venue_liquidations")
    for name in ("1m", "1h", "1d"):
        assert await table(pg, f"venue_liquidations_{name}") == set()
    assert await venue_pending_minutes(pool) == 0


async def test_rebuild_recomputes_a_range_and_the_largest_rows_are_exact(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """rebuild_venues() recomputes every minute of a range from the base table (marks stay for
    the task); largest_venue_liquidations() ranks exactly as a sort of the base table, before
    and after the refresh, with partial hours at both edges and a venue filter."""
    await seed(pg)
    assert await rebuild_venues(pool, T0, T0 + timedelta(hours=2)) == 120
    assert await table(pg, "venue_liquidations_1h") == {
        r for r in await scratch(pg, "1 hour") if r[0] < T0 + timedelta(hours=2)
    }

    async def largest(lo: datetime, hi: datetime, venues: list[str] | None) -> list[object]:
        rows = await pg.fetch(
            "SELECT trade_time, venue, symbol, notional_usd"
            " FROM largest_venue_liquidations($1, $2, 3, $3)",
            lo, hi, venues,
        )  # fmt: skip
        return [tuple(r) for r in rows]

    async def sorted_base(lo: datetime, hi: datetime, venues: list[str] | None) -> list[object]:
        rows = await pg.fetch(
            "SELECT trade_time, venue, symbol, notional_usd FROM venue_liquidations"
            " WHERE trade_time >= $1 AND trade_time < $2 AND notional_usd IS NOT NULL"
            " AND ($3::text[] IS NULL OR venue = ANY ($3))"
            " ORDER BY notional_usd DESC, trade_time DESC LIMIT 3",
            lo, hi, venues,
        )  # fmt: skip
        return [tuple(r) for r in rows]

    ranges = [
        (T0 - timedelta(days=1), T0 + timedelta(days=2), None),
        (T0 + timedelta(seconds=20), T0 + timedelta(days=1, seconds=11), None),
        (T0 - timedelta(days=1), T0 + timedelta(days=2), ["okx"]),
    ]
    for _ in range(2):
        for lo, hi, venues in ranges:
            assert await largest(lo, hi, venues) == await sorted_base(lo, hi, venues)
        await refresh_venue_pending(pool)
    assert await largest(*ranges[0]) == [
        (T0 + timedelta(seconds=70), "bybit", "BTCUSDT", D("60100")),
        (T0 + timedelta(seconds=5), "bybit", "BTCUSDT", D("30000.10")),
        (T0 + timedelta(seconds=30), "bybit", "BTCUSDT", D("15002.5")),
    ]


async def test_totals_by_venue_put_binance_beside_the_others(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """liquidation_totals_by_venue(): Binance's liquidation_totals() as venue 'binance' and the
    venue rollups, each only when its venue is asked for, exact before and after both refreshes."""
    await seed(pg)
    await pg.execute(
        "INSERT INTO market_liquidations (trade_time, content_key, event_time, symbol, market,"
        " side, liquidated_side, status, orig_qty, price, avg_price, filled_qty, notional_usd,"
        " received_at, source_host, source_route, source_stream, raw) VALUES ($1, $2, $1,"
        " 'BTCUSDT', 'UM', 'SELL', 'LONG', 'FILLED', 0.5, 60000, 60000, 0.5, 30000, $1,"
        " 'fstream', 'market', '!forceOrder@arr', '{}')",
        T0 + timedelta(seconds=2), uuid.uuid4().bytes,
    )  # fmt: skip
    query = (
        "SELECT venue, sum(events)::int, sum(notional_usd) FROM liquidation_totals_by_venue("
        "$1, $2, '1 hour', $3) GROUP BY 1 ORDER BY 1"
    )
    lo, hi = T0, T0 + timedelta(hours=2)
    everything = [
        ("binance", 1, D("30000")),
        ("bybit", 4, D("106102.60")),
        ("okx", 4, D("601.500000001")),
    ]
    for _ in range(2):
        assert [tuple(r) for r in await pg.fetch(query, lo, hi, None)] == everything
        assert [tuple(r) for r in await pg.fetch(query, lo, hi, ["okx", "binance"])] == [
            everything[0], everything[2],
        ]  # fmt: skip
        assert [tuple(r) for r in await pg.fetch(query, lo, hi, ["bybit"])] == [everything[1]]
        await refresh_pending(pool)
        await refresh_venue_pending(pool)


async def test_run_venue_rollups_refreshes_until_stopped(
    pg: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """The task refreshes the marked minutes, then stops when asked; a missing schema raises."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_venue_rollups(pool, stop, interval_s=0.02))
    await seed(pg)

    async def refreshed() -> bool:
        return await venue_pending_minutes(pool) == 0

    await eventually(refreshed, timeout=10)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert await table(pg, "venue_liquidations_1h") == await scratch(pg, "1 hour")

    await pg.execute("DROP FUNCTION venue_rollup_refresh_dirty(integer)")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await run_venue_rollups(pool, asyncio.Event(), interval_s=0.01)


async def test_the_migration_builds_the_rollups_of_rows_stored_before_it(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    """A database migrated up to 0011 with venue rows in it: applying 0014 builds their
    rollups at once (no marks needed), equal to the from-scratch aggregate, and points Bybit's
    venue-wide coverage at its all-symbols stream."""
    every = sorted(MIGRATIONS.glob("*.sql"))
    for path in every:
        if path.name < "0012":
            shutil.copy(path, tmp_path / path.name)
    name = f"collector_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_with_database(pg_admin_dsn, name))
        try:
            await migrate(conn, tmp_path)
            await seed(conn)
            await migrate(conn)
            assert await conn.fetchval("SELECT count(*) FROM venue_rollup_dirty") == 0
            for level, step in (("1m", "1 minute"), ("1h", "1 hour"), ("1d", "1 day")):
                assert await table(conn, f"venue_liquidations_{level}") == await scratch(
                    conn, step
                ), level
            assert await conn.fetchval(
                "SELECT coverage_streams FROM venues WHERE venue = 'bybit'"
            ) == ["allLiquidation.*"]  # fmt: skip
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
