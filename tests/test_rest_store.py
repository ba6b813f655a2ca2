"""The account_force_orders upsert and checkpoints on a real Postgres."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from collector.rest import store
from collector.rest.endpoints import DAPI_FORCE_ORDERS, FAPI_FORCE_ORDERS, Scope
from collector.rest.parse import Enrichment, parse_rows

from .test_rest_parse import DAPI_ROW, FAPI_EXAMPLE, SAPI_EXAMPLE

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)
UM_LIQ = Scope(FAPI_FORCE_ORDERS, "LIQUIDATION", (), "LIQUIDATION")


async def _pool(dsn: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=2)


async def test_insert_repeat_and_later_update_time(pg_dsn: str) -> None:
    """A row is new once, a repeat changes nothing, a later updateTime updates it."""
    pool = await _pool(pg_dsn)
    try:
        cp = store.Checkpoint(1000, 2000, backfill_complete=False)
        rows = parse_rows(FAPI_EXAMPLE, "acct", UM_LIQ).orders
        first = await store.commit_window(pool, "acct", UM_LIQ.spec.path, "LIQUIDATION", rows,
                                          cp, now=T0)  # fmt: skip
        again = await store.commit_window(pool, "acct", UM_LIQ.spec.path, "LIQUIDATION", rows,
                                          cp, now=T1)  # fmt: skip
        later = dict(FAPI_EXAMPLE[0], updateTime=1596107620999, status="EXPIRED")
        changed = parse_rows([later], "acct", UM_LIQ).orders
        third = await store.commit_window(pool, "acct", UM_LIQ.spec.path, "LIQUIDATION",
                                          changed, cp, now=T1)  # fmt: skip
        assert (first, again, third) == (
            store.WriteCounts(new=1),
            store.WriteCounts(unchanged=1),
            store.WriteCounts(updated=1),
        )
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM account_force_orders")
        assert dict(row) | {"raw": None} == {
            "account": "acct", "product": "um", "symbol": "BTCUSDT", "order_id": 6071832819,
            "endpoint": "/fapi/v1/forceOrders", "auto_close_type": "LIQUIDATION",
            "side": "SELL", "position_side": "BOTH", "status": "EXPIRED", "order_type": "LIMIT",
            "orig_type": "LIMIT", "time_in_force": "IOC",
            "client_order_id": "autoclose-1596107620040000020", "price": Decimal("10871.09"),
            "avg_price": Decimal("10913.21000"), "orig_qty": Decimal("0.001"),
            "executed_qty": Decimal("0.001"), "cum_quote": Decimal("10.91321"),
            "cum_base": None, "pair": None, "is_isolated": None,
            "order_time": datetime(2020, 7, 30, 11, 13, 40, 44000, tzinfo=UTC),
            "update_time": datetime(2020, 7, 30, 11, 13, 40, 999000, tzinfo=UTC),
            "notional": Decimal("10.91321"), "notional_asset": "USDT", "enrichment": None,
            "enrichment_error": None, "first_seen_at": T0, "last_seen_at": T1, "raw": None,
        }  # fmt: skip
    finally:
        await pool.close()


async def test_checkpoint_commits_with_rows_and_loads_back(pg_dsn: str) -> None:
    """The checkpoint saved with a window reads back exactly."""
    pool = await _pool(pg_dsn)
    try:
        assert await store.load_checkpoint(pool, "a", "/fapi/v1/forceOrders", "ADL") is None
        cp = store.Checkpoint(1_700_000_000_000, 1_700_000_500_000, backfill_complete=True)
        await store.commit_window(pool, "a", "/fapi/v1/forceOrders", "ADL", [], cp)
        assert await store.load_checkpoint(pool, "a", "/fapi/v1/forceOrders", "ADL") == cp
    finally:
        await pool.close()


async def test_coinm_notional_uses_contract_size_when_known(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """COIN-M notional is executed contracts x contractSize from symbols, NULL if unknown."""
    await pg.execute(
        "INSERT INTO symbols (market, symbol, contract_size, updated_at) "
        "VALUES ('CM', 'BTCUSD_200925', 100, now())"
    )
    scope = Scope(DAPI_FORCE_ORDERS, "LIQUIDATION", (), "LIQUIDATION")
    other = dict(DAPI_ROW, symbol="ETHUSD_200925", orderId=7)
    rows = parse_rows([DAPI_ROW, other], "a", scope).orders
    pool = await _pool(pg_dsn)
    try:
        await store.commit_window(pool, "a", scope.spec.path, "LIQUIDATION", rows,
                                  store.Checkpoint(0, 1, backfill_complete=False))  # fmt: skip
    finally:
        await pool.close()
    got = await pg.fetch("SELECT symbol, notional, notional_asset FROM account_force_orders "
                         "ORDER BY symbol")  # fmt: skip
    assert [tuple(r) for r in got] == [
        ("BTCUSD_200925", Decimal(100), "USD"),
        ("ETHUSD_200925", None, "USD"),
    ]


async def test_enrichment_survives_a_later_margin_row(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """Enrichment fills time/type/client id/status, and a later margin row keeps them."""
    from collector.rest.endpoints import SAPI_FORCE_LIQUIDATION_REC

    scope = Scope(SAPI_FORCE_LIQUIDATION_REC, "cross", (), "LIQUIDATION")
    pool = await _pool(pg_dsn)
    cp = store.Checkpoint(0, 1, backfill_complete=False)
    try:
        rows = parse_rows(SAPI_EXAMPLE, "a", scope).orders
        await store.commit_window(pool, "a", scope.spec.path, "cross", rows, cp)
        assert await store.pending_enrichment(pool, "a", scope.spec.path, 10) == [
            ("BNBBTC", 180015097, True)
        ]
        enrichment = Enrichment(
            order_time=T0, order_type="LIMIT", client_order_id="c1", status="FILLED",
            time_in_force="GTC", raw={"orderId": 180015097, "time": 1767225600000},
        )  # fmt: skip
        await store.store_enrichment(pool, "a", "BNBBTC", 180015097, enrichment)
        later = dict(SAPI_EXAMPLE["rows"][0], updatedTime=1558941374999)
        page = parse_rows({"rows": [later], "total": 1}, "a", scope)
        counts = await store.commit_window(pool, "a", scope.spec.path, "cross", page.orders, cp)
        assert counts == store.WriteCounts(updated=1)
        assert await store.pending_enrichment(pool, "a", scope.spec.path, 10) == []
    finally:
        await pool.close()
    row = await pg.fetchrow(
        "SELECT order_time, order_type, client_order_id, status, update_time, "
        "enrichment->>'time' AS t FROM account_force_orders"
    )
    assert tuple(row) == (
        T0, "LIMIT", "c1", "FILLED",
        datetime(2019, 5, 27, 7, 16, 14, 999000, tzinfo=UTC), "1767225600000",
    )  # fmt: skip


async def test_duplicates_within_a_window_are_written_once(pg_dsn: str) -> None:
    """Overlapping sub-windows return a row twice; the latest version is written once."""
    rows = parse_rows(FAPI_EXAMPLE, "a", UM_LIQ).orders
    newer = dataclasses.replace(rows[0], update_time=T1)
    pool = await _pool(pg_dsn)
    try:
        cp = store.Checkpoint(0, 1, backfill_complete=False)
        both = [rows[0], newer, rows[0]]
        counts = await store.commit_window(pool, "a", UM_LIQ.spec.path, "LIQUIDATION", both, cp)
        assert counts == store.WriteCounts(new=1)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT update_time FROM account_force_orders") == T1
    finally:
        await pool.close()
