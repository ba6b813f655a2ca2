"""Bybit and OKX end to end: the daemon against their emulators on loopback and a real
PostgreSQL, rows exact in venue_liquidations, and an OKX gap repaired from REST with the
ledger saying so."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext

import asyncpg

from collector.config import BybitConfig, OkxConfig, VenuesConfig
from collector.emulator import Emulator, EmulatorOptions
from collector.emulator.bybit import BybitEmulator, BybitOptions, make_bybit_liquidation
from collector.emulator.okx import OkxEmulator, OkxOptions, make_okx_detail
from collector.sources.venue_ledger import last_session_end
from collector.venues import Venue
from tests.daemon import eventually, make_config, running

D = Decimal
SWAP = "liquidation-orders:SWAP"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_bybit_and_okx_rows_and_an_okx_gap_repaired_in_the_ledger(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A Bybit and an OKX liquidation are stored exactly; a liquidation OKX pushed while the
    collector was reconnecting is stored once from REST, and coverage_gaps shows that gap as
    repaired from `rest:okx:liquidation-orders`."""
    async with (
        Emulator(EmulatorOptions()) as binance,
        BybitEmulator(BybitOptions(linear_symbols=("BTCUSDT",), inverse_symbols=())) as bybit,
        OkxEmulator(OkxOptions()) as okx,
    ):
        config = dataclasses.replace(
            make_config(binance, pg_dsn),
            venues=VenuesConfig(enabled=("bybit", "okx")),
            bybit=BybitConfig(ws_url=bybit.ws_url, rest_url=bybit.rest_url, categories=("linear",)),
            okx=OkxConfig(
                ws_url=okx.ws_url, rest_url=okx.rest_url, inst_types=("SWAP",),
                reconnect_initial_s=0.1, reconnect_max_s=0.2, reconnect_jitter_s=0.0,
            ),
        )  # fmt: skip
        async with running(config):
            await bybit.ws.wait_until(lambda: bool(bybit.connections)
                                      and bool(bybit.connections[0].topics))  # fmt: skip
            await okx.ws.wait_until(lambda: bool(okx.connections)
                                    and bool(okx.connections[0].topics))  # fmt: skip
            t_bybit = now_ms()
            await bybit.publish(
                "linear", [make_bybit_liquidation("BTCUSDT", "Sell", "0.25", "64000", t_bybit)]
            )
            sessions = "SELECT count(*) FROM ws_sessions WHERE venue = 'okx'"
            # The start-up repair (up to the first session's subscription) is recorded first, so
            # what is published next lies after it: the stream alone carries it.
            await eventually(lambda: pg.fetchval("SELECT count(*) FROM coverage_repairs"))
            await okx.publish(
                "ETH-USDT-SWAP", [make_okx_detail("buy", "net", "5", "3200", now_ms())]
            )
            await eventually(
                lambda: pg.fetchval("SELECT count(*) FROM venue_liquidations"), lambda n: n == 2
            )
            # Reconnects are refused until the missed liquidation is published, so the repair
            # (which runs once the next session is up) always has it to read back, however
            # slowly this test runs.
            okx.fail_upgrades(1_000_000)
            okx.close_connections()
            await eventually(
                lambda: pg.fetchval(
                    "SELECT count(*) FROM ws_sessions WHERE venue = 'okx' AND closed_at IS NOT NULL"
                )
            )
            missed = make_okx_detail("sell", "long", "7", "65100", now_ms() + 1)
            await okx.publish("BTC-USDT-SWAP", [missed], stream=False)
            okx.fail_upgrades(0)
            await eventually(lambda: pg.fetchval(sessions), lambda n: n == 2)
            await eventually(
                lambda: pg.fetchval("SELECT count(*) FROM coverage_repairs"), lambda n: n == 2
            )
            await eventually(
                lambda: pg.fetchval("SELECT count(*) FROM venue_liquidations"), lambda n: n == 3
            )
        rows = await pg.fetch(
            "SELECT venue, market, symbol, base_asset, liquidated_side, price, qty, notional_usd,"
            " origin FROM venue_liquidations ORDER BY venue, symbol"
        )
        first, second = await pg.fetch(
            "SELECT closed_at, last_alive_at, subscribed_at FROM ws_sessions"
            " WHERE venue = 'okx' ORDER BY opened_at"
        )
        gaps = await pg.fetch(
            "SELECT gap_start, gap_end, repaired, repair_sources FROM coverage_gaps('okx', $1, $2,"
            " $3)",
            [SWAP], first["subscribed_at"], second["subscribed_at"],
        )  # fmt: skip
    assert [tuple(r) for r in rows] == [
        ("bybit", "linear", "BTCUSDT", "BTC", "SHORT", D("64000"), D("0.25"), D("16000.00"), "ws"),
        ("okx", "SWAP", "BTC-USDT-SWAP", "BTC", "LONG", D("65100"), D("0.07"), D("4557.00"),
         "rest"),
        ("okx", "SWAP", "ETH-USDT-SWAP", "ETH", "SHORT", D("3200"), D("0.5"), D("1600.0"), "ws"),
    ]  # fmt: skip
    # The ledger counts the first session live until it closed; the repair read back from its
    # last read (a little earlier), so the whole gap is repaired.
    assert first["last_alive_at"] <= first["closed_at"]
    assert [tuple(g) for g in gaps] == [
        (first["closed_at"], second["subscribed_at"], True, ["rest:okx:liquidation-orders"])
    ]


async def test_okx_rows_missed_while_the_collector_was_down_are_repaired_at_restart(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Restarted, the collector repairs from the end of the last OKX session in the ledger (its
    close), not from the look-back: a liquidation OKX had while it was down is stored once from
    REST; one from before that close (covered live, not on the stream) is not read back; a row
    the stream stored is not stored again; the ledger shows the downtime repaired from REST."""
    async with (
        Emulator(EmulatorOptions()) as binance,
        OkxEmulator(OkxOptions()) as okx,
    ):
        okx.liquidation_orders_limit.clock = lambda: 0.0  # no 40 / 2 s window in this test
        config = dataclasses.replace(
            make_config(binance, pg_dsn),
            venues=VenuesConfig(enabled=("okx",)),
            okx=OkxConfig(ws_url=okx.ws_url, rest_url=okx.rest_url, inst_types=("SWAP",),
                          reconnect_jitter_s=0.0),
        )  # fmt: skip
        async with running(config):
            await okx.ws.wait_until(lambda: bool(okx.connections)
                                    and bool(okx.connections[0].topics))  # fmt: skip
            await eventually(lambda: pg.fetchval("SELECT count(*) FROM coverage_repairs"))
            streamed = make_okx_detail("buy", "net", "5", "3200", now_ms())
            await okx.publish("ETH-USDT-SWAP", [streamed])  # on the stream and in REST
            await eventually(lambda: pg.fetchval("SELECT count(*) FROM venue_liquidations"))
        first = await pg.fetchrow(
            "SELECT subscribed_at, closed_at FROM ws_sessions WHERE venue = 'okx'"
            " AND close_reason = 'shutdown'"
        )
        closed_at = first["closed_at"]
        close_ms = int(closed_at.timestamp() * 1000)
        before_close = make_okx_detail("buy", "net", "3", "65000", close_ms - 1)
        missed = make_okx_detail("sell", "long", "7", "65100", close_ms + 1)
        await okx.publish("BTC-USDT-SWAP", [before_close, missed], stream=False)

        async with running(config):
            await eventually(
                lambda: pg.fetchval("SELECT count(*) FROM coverage_repairs"), lambda n: n == 2
            )
        rows = await pg.fetch(
            "SELECT symbol, liquidated_side, price, qty, notional_usd, origin, trade_time"
            " FROM venue_liquidations ORDER BY trade_time"
        )
        repairs = await pg.fetch(
            "SELECT stream, repaired_from, repaired_to, source, rows FROM coverage_repairs"
            " ORDER BY id"
        )
        second = await pg.fetchrow(
            "SELECT subscribed_at FROM ws_sessions WHERE venue = 'okx' AND opened_at > $1",
            closed_at,
        )
        gaps = await pg.fetch(
            "SELECT gap_start, gap_end, repaired, repair_sources"
            " FROM coverage_gaps('okx', $1, $2, $3)",
            [SWAP], first["subscribed_at"], second["subscribed_at"],
        )  # fmt: skip
    at = datetime.fromtimestamp
    assert [tuple(r) for r in rows] == [
        ("ETH-USDT-SWAP", "SHORT", D("3200"), D("0.5"), D("1600.0"), "ws",
         at(int(streamed["ts"]) / 1000, UTC)),
        ("BTC-USDT-SWAP", "LONG", D("65100"), D("0.07"), D("4557.00"), "rest",
         at((close_ms + 1) / 1000, UTC)),
    ]  # fmt: skip
    assert tuple(repairs[1]) == (
        SWAP,
        closed_at,
        second["subscribed_at"],
        "rest:okx:liquidation-orders",
        1,
    )
    assert [tuple(g) for g in gaps] == [
        (closed_at, second["subscribed_at"], True, ["rest:okx:liquidation-orders"])
    ]


async def test_the_last_session_end_is_a_close_or_a_crashed_sessions_last_sign_of_life(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """`last_session_end`: the latest end among the venue's subscribed sessions, a session that
    never closed (a crash) counting until its last_alive_at; never-subscribed sessions and other
    venues' do not count; None for a venue with no session."""
    t = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    sessions = [  # (venue, opened, subscribed, last alive, closed)
        ("okx", t, t, t.replace(minute=5), t.replace(minute=5)),
        ("okx", t.replace(minute=6), t.replace(minute=6), t.replace(minute=9), None),  # crashed
        ("okx", t.replace(minute=10), None, t.replace(minute=20), t.replace(minute=20)),
        ("bybit", t, t, t.replace(minute=30), t.replace(minute=30)),
    ]
    for venue, opened, subscribed, alive, closed in sessions:
        await pg.execute(
            "INSERT INTO ws_sessions (session_id, venue, connection, host, route, url, streams,"
            " opened_at, subscribed_at, last_alive_at, closed_at, events_received)"
            " VALUES ($1, $2, $2, 'public', '', 'wss://example', '{x}', $3, $4, $5, $6, 0)",
            uuid.uuid4(), venue, opened, subscribed, alive, closed,
        )  # fmt: skip
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        assert await last_session_end(pool, Venue.OKX) == t.replace(minute=9)
        assert await last_session_end(pool, Venue.BYBIT) == t.replace(minute=30)
        await pg.execute("DELETE FROM ws_sessions")
        assert await last_session_end(pool, Venue.OKX) is None
    finally:
        await pool.close()


async def test_bybit_venue_coverage_is_the_all_symbols_row_in_the_ledger(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Against the database: Bybit's venue-wide coverage (venues.coverage_streams) is the
    `allLiquidation.*` row, so a reconnect shows exactly the gap between the row's close and
    its reopening, even though each symbol's session covered its own stream."""
    async with (
        Emulator(EmulatorOptions()) as binance,
        BybitEmulator(BybitOptions(linear_symbols=("BTCUSDT", "ETHUSDT"),
                                   inverse_symbols=())) as bybit,
    ):  # fmt: skip
        config = dataclasses.replace(
            make_config(binance, pg_dsn),
            venues=VenuesConfig(enabled=("bybit",)),
            bybit=BybitConfig(ws_url=bybit.ws_url, rest_url=bybit.rest_url, categories=("linear",),
                              reconnect_jitter_s=0.0, reconnect_initial_s=0.05),
        )  # fmt: skip
        rows = "SELECT count(*) FROM ws_sessions WHERE connection = 'bybit/all-symbols'"
        async with running(config):
            await eventually(lambda: pg.fetchval(rows))
            assert bybit.close_connections() == 1
            await eventually(lambda: pg.fetchval(rows), lambda n: n == 2)
        first, second = await pg.fetch(
            "SELECT subscribed_at, closed_at, close_reason, streams FROM ws_sessions"
            " WHERE connection = 'bybit/all-symbols' ORDER BY opened_at"
        )
        streams = await pg.fetchval("SELECT coverage_streams FROM venues WHERE venue = 'bybit'")
        gaps = await pg.fetch(
            "SELECT gap_start, gap_end, repaired FROM coverage_gaps('bybit', $1, $2, $3)",
            streams, first["subscribed_at"], second["closed_at"],
        )  # fmt: skip
    assert streams == ["allLiquidation.*"]
    assert (first["close_reason"], second["close_reason"]) == ("server_closed", "shutdown")
    assert [tuple(g) for g in gaps] == [(first["closed_at"], second["subscribed_at"], False)]


def base_qty(usd: str, price: str) -> Decimal:
    """USD face value over price, rounded half up to 18 places (migration 0014)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (D(usd) / D(price)).quantize(D("1e-18"), ROUND_HALF_UP)


async def test_inverse_contracts_have_a_base_qty_in_the_liquidations_base_qty_view(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Bybit inverse (USD size), OKX inverse SWAP (contracts of ctVal USD) from the emulators,
    and a Binance COIN-M row (contracts of contractSize USD): each qty in base units is the USD
    face value over the price, exactly as NUMERIC rounded to 18 places, marked qty_from_usd;
    linear rows keep their wire quantity; `liquidations` itself is unchanged."""
    async with (
        Emulator(EmulatorOptions()) as binance,
        BybitEmulator(BybitOptions(linear_symbols=("BTCUSDT",),
                                   inverse_symbols=("BTCUSD",))) as bybit,
        OkxEmulator(OkxOptions()) as okx,
    ):  # fmt: skip
        config = dataclasses.replace(
            make_config(binance, pg_dsn),
            venues=VenuesConfig(enabled=("bybit", "okx")),
            bybit=BybitConfig(ws_url=bybit.ws_url, rest_url=bybit.rest_url),
            okx=OkxConfig(ws_url=okx.ws_url, rest_url=okx.rest_url, inst_types=("SWAP",),
                          repair=False),
        )  # fmt: skip
        async with running(config):
            await bybit.ws.wait_until(lambda: len(bybit.connections) == 2
                                      and all(c.topics for c in bybit.connections))  # fmt: skip
            await okx.ws.wait_until(lambda: bool(okx.connections)
                                    and bool(okx.connections[0].topics))  # fmt: skip
            t = now_ms()
            await bybit.publish("inverse", [make_bybit_liquidation("BTCUSD", "Buy", "1000",
                                                                   "60000", t)])  # fmt: skip
            await bybit.publish("linear", [make_bybit_liquidation("BTCUSDT", "Sell", "0.25",
                                                                  "64000", t)])  # fmt: skip
            await okx.publish("BTC-USD-SWAP", [make_okx_detail("sell", "net", "3", "64000.5", t)])
            await okx.publish("BTC-USDT-SWAP", [make_okx_detail("buy", "net", "7", "65100", t)])
            await eventually(
                lambda: pg.fetchval("SELECT count(*) FROM venue_liquidations"), lambda n: n == 4
            )
    await pg.execute(
        "INSERT INTO market_liquidations (trade_time, content_key, event_time, symbol, market,"
        " side, liquidated_side, status, orig_qty, price, avg_price, filled_qty, notional_usd,"
        " received_at, source_host, source_route, source_stream, raw) VALUES (now(), $1, now(),"
        " 'BTCUSD_PERP', 'CM', 'SELL', 'LONG', 'FILLED', 7, 59000, 59123.4, 7, 700, now(),"
        " 'dstream', 'market', '!forceOrder@arr', '{}')",
        uuid.uuid4().bytes,
    )  # fmt: skip
    query = (
        "SELECT venue, market, symbol, qty, qty_from_usd, notional_usd, price FROM {}"
        " ORDER BY venue, market, symbol"
    )
    rows = [tuple(r) for r in await pg.fetch(query.format("liquidations_base_qty"))]
    assert rows == [
        ("binance", "CM", "BTCUSD_PERP", base_qty("700", "59123.4"), True, D(700),
         D("59123.4")),
        ("bybit", "inverse", "BTCUSD", base_qty("1000", "60000"), True, D(1000), D(60000)),
        ("bybit", "linear", "BTCUSDT", D("0.25"), False, D("16000.00"), D(64000)),
        ("okx", "SWAP", "BTC-USD-SWAP", base_qty("300", "64000.5"), True, D(300), D("64000.5")),
        ("okx", "SWAP", "BTC-USDT-SWAP", D("0.07"), False, D("4557.00"), D(65100)),
    ]  # fmt: skip
    assert [r[3] for r in rows[:2]] == [D("0.011839643863512586"), D("0.016666666666666667")]
    plain = [r[0] for r in await pg.fetch(
        "SELECT qty FROM liquidations ORDER BY venue, market, symbol"
    )]  # fmt: skip
    assert plain == [None, None, D("0.25"), None, D("0.07")]


async def test_the_daemon_keeps_the_venue_rollups_current(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """The supervisor's `venue_rollup` component refreshes the venue rollups: a Bybit
    liquidation from the emulator is in the hourly rollup by venue, and no mark is left."""
    async with (
        Emulator(EmulatorOptions()) as binance,
        BybitEmulator(BybitOptions(linear_symbols=("BTCUSDT",), inverse_symbols=())) as bybit,
    ):
        base = make_config(binance, pg_dsn)
        config = dataclasses.replace(
            base,
            database=dataclasses.replace(base.database, rollup_interval_s=0.05),
            venues=VenuesConfig(enabled=("bybit",)),
            bybit=BybitConfig(ws_url=bybit.ws_url, rest_url=bybit.rest_url, categories=("linear",)),
        )
        async with running(config):
            await bybit.ws.wait_until(lambda: bool(bybit.connections)
                                      and bool(bybit.connections[0].topics))  # fmt: skip
            await bybit.publish(
                "linear", [make_bybit_liquidation("BTCUSDT", "Buy", "0.5", "64000", now_ms())]
            )
            await eventually(lambda: pg.fetchval("SELECT count(*) FROM venue_liquidations_1h"))
            await eventually(
                lambda: pg.fetchval("SELECT count(*) FROM venue_rollup_dirty"), lambda n: n == 0
            )
        row = await pg.fetchrow(
            "SELECT venue, market, symbol, liquidated_side, events, notional_usd,"
            " notional_unknown, max_notional_usd FROM venue_liquidations_1h"
        )
    assert tuple(row) == ("bybit", "linear", "BTCUSDT", "LONG", 1, D("32000.0"), 0, D("32000.0"))
