"""Bybit and OKX rows, the liquidations view and the per-venue ledger (migration 0008) through
the real writer against real Postgres: exact rows, dedup, dead letters, repairs, spill."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from collector.config import WriterConfig
from collector.metrics import Metrics
from collector.model import MarketLiquidation, RepairRecord, WriteItem
from collector.sink import spill
from collector.sink.columns import VL_COLUMNS, VL_RENAMED, vl_record
from collector.sink.partitions import ensure_venue_partitions
from collector.sink.writer import Writer
from collector.venues import SAMPLING_POLICIES, Venue, VenueLiquidation
from tests.factories import (
    NOW,
    bybit_liquidation,
    liquidation,
    okx_detail,
    okx_liquidations,
    okx_rest_liquidations,
    session,
)

FAST = WriterConfig(
    queue_max=1000,
    batch_max_rows=100,
    batch_max_age_s=0.01,
    retry_initial_s=0.01,
    retry_max_s=0.05,
    writers=1,
)
REST_SOURCE = "rest:okx:liquidation-orders"
OKX_STREAM = "liquidation-orders:SWAP"


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
async def writer(pg_dsn: str) -> AsyncIterator[Writer]:
    """A running one-lane writer on the test's database; stopped after the test."""
    w = Writer(lambda: asyncpg.connect(pg_dsn), FAST, Metrics())
    task = asyncio.create_task(w.run())
    yield w
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def put_all(writer: Writer, items: list[Any]) -> None:
    for item in items:
        await writer.put(item)
    await writer.flush()


async def stored(pg: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await pg.fetch(
        f"SELECT {', '.join(VL_COLUMNS)} FROM venue_liquidations ORDER BY venue, trade_time"
    )
    return [dict(r) for r in rows]


def expected(row: VenueLiquidation) -> dict[str, Any]:
    """The `venue_liquidations` row `row` must become."""
    return {
        "trade_time": row.trade_time,
        "venue": row.venue.value,
        "content_key": row.content_key,
        "market": row.market,
        "symbol": row.symbol,
        "base_asset": row.base_asset,
        "liquidated_side": None if row.liquidated_side is None else row.liquidated_side.value,
        "price": row.price,
        "qty": row.qty,
        "notional_usd": row.notional_usd,
        "received_at": row.received_at,
        "wire": orjson.dumps(dict(row.wire)).decode(),  # (jsonb as text: compared below)
        "raw": row.raw,
        "origin": row.source,
    }


def as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their jsonb texts parsed (jsonb normalises spacing and key order)."""
    return [r | {"wire": orjson.loads(r["wire"]), "raw": orjson.loads(r["raw"])} for r in rows]


async def test_rows_of_every_venue_land_exactly_and_in_the_liquidations_view(
    writer: Writer, pg: asyncpg.Connection
) -> None:
    """A Binance, a Bybit and an OKX row: exact in their tables, and normalised in the view."""
    await pg.execute(
        "INSERT INTO symbols (market, symbol, base_asset, updated_at) VALUES ('UM', 'BTCUSDT', "
        "'BTC', now())"
    )
    binance, bybit, [okx] = liquidation(1), bybit_liquidation(), okx_liquidations()
    await put_all(writer, [binance, bybit, okx])

    assert as_json(await stored(pg)) == as_json([expected(bybit), expected(okx)])
    view = await pg.fetch("SELECT * FROM liquidations ORDER BY venue")
    assert [dict(r) for r in view] == [
        {"venue": "binance", "market": "UM", "symbol": "BTCUSDT", "base_asset": "BTC",
         "liquidated_side": "LONG", "price": D(9910), "qty": D("0.014"),
         "notional_usd": D("138.740"), "trade_time": binance.trade_time, "received_at": NOW},
        {"venue": "bybit", "market": "linear", "symbol": "ROSEUSDT", "base_asset": "ROSE",
         "liquidated_side": "LONG", "price": D("0.04499"), "qty": D(20000),
         "notional_usd": D("899.80000"), "trade_time": bybit.trade_time,
         "received_at": bybit.received_at},
        {"venue": "okx", "market": "SWAP", "symbol": "IOST-USDT-SWAP", "base_asset": "IOST",
         "liquidated_side": "SHORT", "price": D("0.007831"), "qty": D(13000),
         "notional_usd": D("101.803000"), "trade_time": okx.trade_time, "received_at": NOW},
    ]  # fmt: skip
    # Binance's own table is untouched by the others.
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == 1


async def test_binance_cm_rows_have_no_base_quantity_in_the_view(
    writer: Writer, pg: asyncpg.Connection
) -> None:
    """A COIN-M row's quantity is contracts: the view gives no qty (nor, without its symbols
    row, a base asset)."""
    cm: MarketLiquidation = liquidation(2)._replace(market="CM", symbol="BTCUSD_PERP")  # type: ignore[arg-type]
    await put_all(writer, [cm])
    row = await pg.fetchrow("SELECT market, symbol, base_asset, qty FROM liquidations")
    assert tuple(row) == ("CM", "BTCUSD_PERP", None, None)


async def test_a_liquidation_is_one_row_across_puts_connections_and_the_rest_repair(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """The same OKX liquidation put twice, then again after a restart from the stream and
    from REST (spelled "13.0"), is one row: the first origin wins; every copy is counted."""
    metrics = Metrics()
    writer = Writer(lambda: asyncpg.connect(pg_dsn), FAST, metrics)
    task = asyncio.create_task(writer.run())
    try:
        [ws] = okx_liquidations()
        await put_all(writer, [ws, ws])
        writer._recent = type(writer._recent)(10)  # a fresh window, as after a restart
        [rest] = okx_rest_liquidations(okx_detail(sz="13.0"))
        assert rest.content_key == ws.content_key
        await put_all(writer, [rest, ws])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert as_json(await stored(pg)) == as_json([expected(ws)])
    assert sample(metrics, "collector_rows_inserted_total", {"table": "venue_liquidations"}) == 1
    assert sample(metrics, "collector_duplicates_total", {"layer": "memory"}) == 2
    assert sample(metrics, "collector_duplicates_total", {"layer": "database"}) == 1
    # Socket -> commit latency: the stream's copy that reached a batch, not the REST one.
    assert sample(metrics, "collector_socket_to_commit_seconds_count") == 1


async def test_a_rest_row_first_keeps_origin_rest(writer: Writer, pg: asyncpg.Connection) -> None:
    """A liquidation only the repair saw is stored with origin rest."""
    [rest] = okx_rest_liquidations(okx_detail(ts_ms=1_795_003_100_000))
    await put_all(writer, [rest])
    assert await pg.fetchval("SELECT origin FROM venue_liquidations") == "rest"


async def test_a_venue_row_postgres_rejects_is_dead_lettered_and_the_rest_commit(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """An OKX row the database refuses (a NUL in its frame: jsonb rejects it) lands in
    dead_letters; the Bybit and OKX rows beside it, and a Binance row, commit."""
    metrics = Metrics()
    writer = Writer(lambda: asyncpg.connect(pg_dsn), FAST, metrics)
    task = asyncio.create_task(writer.run())
    good = okx_liquidations(okx_detail(1_795_003_200_010), okx_detail(1_795_003_200_020))
    [other] = okx_liquidations(okx_detail(1_795_003_200_030))
    bad = dataclasses.replace(other, raw='{"arg":"\\u0000"}')
    try:
        await put_all(writer, [good[0], bad, bybit_liquidation(), good[1], liquidation(1)])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(r["venue"], r["trade_time"]) for r in await stored(pg)] == [
        ("bybit", bybit_liquidation().trade_time),
        ("okx", good[0].trade_time),
        ("okx", good[1].trade_time),
    ]
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == 1
    dead = await pg.fetch("SELECT source, reason, raw, kept FROM dead_letters")
    assert [(d["source"], d["reason"], bytes(d["raw"]), d["kept"]) for d in dead] == [
        ("okx/ws", "db_rejected", bad.raw.encode(), False)
    ]
    assert sample(metrics, "collector_write_errors_total", {"kind": "data"}) == 1
    assert sample(metrics, "collector_dead_letters_total", {"reason": "db_rejected"}) == 1
    assert sample(metrics, "collector_rows_inserted_total", {"table": "venue_liquidations"}) == 3


async def test_sessions_are_recorded_with_their_venue(
    writer: Writer, pg: asyncpg.Connection
) -> None:
    """An OKX session's ledger row says okx; a Binance one (no venue given) says binance."""
    okx = session(connection="okx/public#0", host="ws.okx.com", route="", venue=Venue.OKX,
                  url="wss://ws.okx.com:8443/ws/v5/public", streams=(OKX_STREAM,))  # fmt: skip
    binance = session()
    await put_all(writer, [okx, binance])
    rows = await pg.fetch("SELECT session_id, venue, streams FROM ws_sessions ORDER BY venue")
    assert [tuple(r) for r in rows] == [
        (binance.session_id, "binance", ["!forceOrder@arr"]),
        (okx.session_id, "okx", [OKX_STREAM]),
    ]


def at(minutes: float) -> datetime:
    return NOW + timedelta(minutes=minutes)


async def test_a_sessions_streams_survive_snapshots_committed_out_of_order(
    writer: Writer, pg: asyncpg.Connection
) -> None:
    """A venue session opens with no streams and lists them once subscribed; with two writer
    lanes the opening snapshot can commit after the subscribed one, and later ones add
    streams (a new listing): the row keeps the union, sorted, whatever the order."""
    opened = session(connection="bybit/linear#0", host="linear", route="", venue=Venue.BYBIT,
                     url="wss://stream.bybit.com/v5/public/linear", streams=())  # fmt: skip
    subscribed = dataclasses.replace(
        opened, streams=("allLiquidation.ETHUSDT", "allLiquidation.BTCUSDT"), subscribed_at=at(1)
    )
    listed = dataclasses.replace(subscribed, streams=("allLiquidation.SOLUSDT",))
    for item in (subscribed, opened, listed, opened):
        await put_all(writer, [item])
    streams = await pg.fetchval("SELECT streams FROM ws_sessions")
    assert streams == ["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT", "allLiquidation.SOLUSDT"]


async def test_a_venue_session_covers_from_its_subscription_not_its_open(
    writer: Writer, pg: asyncpg.Connection
) -> None:
    """OKX sends nothing before the subscription is acknowledged: a session opened at 0 and
    subscribed at 2 covers from 2; one never subscribed covers nothing. (Binance's streams are
    on the URL, so its sessions cover from the open.)"""
    subscribed = dataclasses.replace(okx_session(0, 10), subscribed_at=at(2))
    never = dataclasses.replace(okx_session(20, 30), subscribed_at=None)
    await put_all(writer, [subscribed, never])
    gaps = await pg.fetch(
        "SELECT gap_start, gap_end, repaired FROM coverage_gaps('okx', $1, $2, $3)",
        [OKX_STREAM], at(0), at(40),
    )  # fmt: skip
    assert [tuple(g) for g in gaps] == [(at(0), at(2), False), (at(10), at(40), False)]


def okx_repair(rows: int) -> RepairRecord:
    """REST read back 30-40 min of the OKX stream, finding `rows` liquidations there."""
    return RepairRecord(
        venue=Venue.OKX, stream=OKX_STREAM, repaired_from=at(30), repaired_to=at(40),
        source=REST_SOURCE, rows=rows, recorded_at=at(41),
    )  # fmt: skip


def okx_session(opened: float, closed: float) -> Any:
    return session(
        connection="okx/public#0", host="ws.okx.com", route="", venue=Venue.OKX,
        url="wss://ws.okx.com:8443/ws/v5/public", streams=(OKX_STREAM,),
        opened_at=at(opened), subscribed_at=at(opened), last_alive_at=at(closed),
        closed_at=at(closed), close_reason="server_closed",
    )  # fmt: skip


async def test_okx_gaps_report_the_part_a_repair_read_back(
    writer: Writer, pg: asyncpg.Connection
) -> None:
    """OKX live 0-20 and 40-60 min; REST read back 30-40: coverage_gaps('okx', ...) reports
    20-30 as a gap and 30-40 as repaired from REST; Binance's form sees none of OKX's ledger."""
    repair = okx_repair(rows=3)
    await put_all(writer, [okx_session(0, 20), okx_session(40, 60), repair, repair])

    for streams in (None, [OKX_STREAM]):
        gaps = await pg.fetch(
            "SELECT * FROM coverage_gaps('okx', $1, $2, $3)", streams, at(0), at(60)
        )
        assert [tuple(g) for g in gaps] == [
            (at(20), at(30), False, None),
            (at(30), at(40), True, [REST_SOURCE]),
        ]
    assert [tuple(g) for g in await pg.fetch(
        "SELECT * FROM coverage_gaps($1, $2, $3)", [OKX_STREAM], at(0), at(60)
    )] == [(at(0), at(60))]  # fmt: skip
    intervals = await pg.fetch(
        "SELECT * FROM coverage_intervals('okx', NULL, $1, $2)", at(0), at(60)
    )
    assert [tuple(i) for i in intervals] == [
        (at(0), at(20), False), (at(30), at(40), True), (at(40), at(60), False),
    ]  # fmt: skip
    buckets = await pg.fetch(
        "SELECT * FROM coverage_buckets('okx', NULL, $1, $2, '15 minutes')", at(0), at(60)
    )
    assert [tuple(b) for b in buckets] == [
        (at(0), 900.0, 0.0, 900.0),
        (at(15), 300.0, 0.0, 900.0),
        (at(30), 300.0, 600.0, 900.0),
        (at(45), 900.0, 0.0, 900.0),
    ]
    assert await pg.fetch("SELECT * FROM coverage_gaps('bybit', NULL, $1, $2)", at(0), at(1)) == [
        (at(0), at(1), False, None)
    ]
    [stored_repair] = await pg.fetch(
        "SELECT venue, stream, repaired_from, repaired_to, source, rows, recorded_at "
        "FROM coverage_repairs"
    )
    assert tuple(stored_repair) == (
        "okx", OKX_STREAM, at(30), at(40), REST_SOURCE, 3, at(41)
    )  # fmt: skip


async def test_the_venues_table_holds_each_venues_sampling_policy(pg: asyncpg.Connection) -> None:
    """One row per `Venue`, with the policy `collector.venues.SAMPLING_POLICIES` gives it."""
    rows = await pg.fetch("SELECT venue, sampling_policy FROM venues ORDER BY venue")
    assert {r["venue"]: r["sampling_policy"] for r in rows} == {
        v.value: p.value for v, p in SAMPLING_POLICIES.items()
    }
    assert {r["venue"] for r in rows} == {v.value for v in Venue}


async def test_venue_rows_move_from_the_default_partition_into_their_month(
    writer: Writer, pg: asyncpg.Connection
) -> None:
    """A row years ahead lands in the default partition, then in its month once created."""
    [row] = okx_liquidations(
        okx_detail(ts_ms=int(datetime(2031, 3, 4, tzinfo=UTC).timestamp()) * 1000)
    )
    await put_all(writer, [row])
    where = "SELECT tableoid::regclass::text FROM venue_liquidations"
    assert await pg.fetchval(where) == "venue_liquidations_default"
    assert await ensure_venue_partitions(pg, datetime(2031, 3, 1, tzinfo=UTC)) == 4
    assert await pg.fetchval(where) == "venue_liquidations_p203103"


def test_every_venue_column_is_the_model_field_of_its_name() -> None:
    """Each column is the `VenueLiquidation` field of its name (origin: `source`); decimals
    travel as text and the wire fields as a JSON object."""
    row = bybit_liquidation()
    fields = set(VenueLiquidation.__dataclass_fields__)
    assert {VL_RENAMED.get(c, c) for c in VL_COLUMNS} == fields
    record = dict(zip(VL_COLUMNS, vl_record(row), strict=True))
    assert record == {
        **{c: getattr(row, VL_RENAMED.get(c, c)) for c in VL_COLUMNS},
        "price": "0.04499", "qty": "20000", "notional_usd": "899.80000",
        "wire": orjson.dumps(dict(row.wire)).decode(),
    }  # fmt: skip


def no_reparse(raw: str, **_: Any) -> MarketLiquidation:
    raise AssertionError("venue rows are replayed without a parser")


async def test_venue_rows_repairs_and_sessions_round_trip_through_a_spill_file(
    writer: Writer, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Bybit and OKX rows (a REST one, one with unknown notional), a repair and an OKX session
    come back from disk exactly, without any source's parser, and commit as if never spilled."""
    [okx_unknown] = okx_liquidations(okx_detail(1_795_003_200_040))
    okx_unknown = dataclasses.replace(okx_unknown, qty=None, notional_usd=None, base_asset=None)
    [rest] = okx_rest_liquidations(okx_detail(1_795_003_200_050, sz="13.0"))
    repair = okx_repair(rows=1)
    ledger = okx_session(0, 20)
    items: list[WriteItem] = [bybit_liquidation(), okx_unknown, rest, repair, ledger]
    path = spill.write(str(tmp_path), items)
    assert path is not None
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["kind"] for line in lines] == [
        "venue_liquidation", "venue_liquidation", "venue_liquidation", "repair", "session",
    ]  # fmt: skip
    assert lines[2]["qty"] == "13000.0"  # the decimal's exact text

    assert await spill.replay(str(tmp_path), writer, no_reparse) == 5
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
    rows = [bybit_liquidation(), okx_unknown, rest]
    assert as_json(await stored(pg)) == as_json([expected(r) for r in rows])
    assert await pg.fetchval("SELECT rows FROM coverage_repairs") == 1
    assert await pg.fetchval("SELECT venue FROM ws_sessions") == "okx"


def test_spilled_venue_items_rebuild_equal() -> None:
    """Each spilled venue row and repair rebuilds as an equal object (Decimals and all)."""
    rest = okx_rest_liquidations(okx_detail(sz="13.0"))[0]
    repair = RepairRecord("okx", OKX_STREAM, at(1), at(2), REST_SOURCE, 0, at(3))
    for item in (bybit_liquidation(), rest, repair, okx_session(0, 1)):
        record = spill._record(item)
        assert spill._item(orjson.loads(orjson.dumps(record)), no_reparse) == item


async def test_an_unreadable_spilled_venue_row_is_dead_lettered(
    writer: Writer, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A spilled venue row with a bad decimal or an unknown venue is dead-lettered verbatim
    (spill_unreadable), and the good line beside it commits."""
    good = spill._record(bybit_liquidation())
    assert good is not None
    bad_price = orjson.dumps(good | {"price": "1,5"})
    bad_venue = orjson.dumps(good | {"venue": "kraken"})
    (tmp_path / "spill-1.jsonl").write_bytes(
        b"\n".join([bad_price, orjson.dumps(good), bad_venue]) + b"\n"
    )
    assert await spill.replay(str(tmp_path), writer, no_reparse) == 3
    assert await pg.fetchval("SELECT count(*) FROM venue_liquidations") == 1
    dead = await pg.fetch("SELECT reason, raw FROM dead_letters ORDER BY id")
    assert [(d["reason"], bytes(d["raw"])) for d in dead] == [
        ("spill_unreadable", bad_price),
        ("spill_unreadable", bad_venue),
    ]
