"""Bybit and OKX end to end: the daemon against their emulators on loopback and a real
PostgreSQL, rows exact in venue_liquidations, and an OKX gap repaired from REST with the
ledger saying so."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal

import asyncpg

from collector.config import BybitConfig, OkxConfig, VenuesConfig
from collector.emulator import Emulator, EmulatorOptions
from collector.emulator.bybit import BybitEmulator, BybitOptions, make_bybit_liquidation
from collector.emulator.okx import OkxEmulator, OkxOptions, make_okx_detail
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
