"""The daemon runs the Bybit and OKX sources of the enabled venues only, each pointed at its
emulator here (a test never reaches a real exchange)."""

from __future__ import annotations

import dataclasses

import structlog

from collector.config import BybitConfig, OkxConfig, VenuesConfig
from collector.emulator import Emulator, EmulatorOptions
from collector.emulator.bybit import BybitEmulator, BybitOptions
from collector.emulator.okx import OkxEmulator, OkxOptions
from tests.daemon import make_config, running


async def test_enabled_venues_become_components_pointed_at_their_emulators(pg_dsn: str) -> None:
    """With all three venues enabled the daemon supervises `bybit` and `okx` beside Binance's
    components, and both connect to their emulators; with Binance alone they are absent."""
    async with (
        Emulator(EmulatorOptions()) as binance,
        BybitEmulator(BybitOptions(linear_symbols=("BTCUSDT",), inverse_symbols=())) as bybit,
        OkxEmulator(OkxOptions()) as okx,
    ):
        base = make_config(binance, pg_dsn)
        config = dataclasses.replace(
            base,
            venues=VenuesConfig(enabled=("binance", "bybit", "okx")),
            bybit=BybitConfig(ws_url=bybit.ws_url, rest_url=bybit.rest_url, categories=("linear",)),
            # Repair off: until the writer takes RepairRecord (the storage side), it gets none.
            okx=OkxConfig(ws_url=okx.ws_url, rest_url=okx.rest_url, repair=False),
        )
        with structlog.testing.capture_logs() as logs:
            async with running(config):
                await bybit.ws.wait_until(lambda: bool(bybit.connections)
                                          and bool(bybit.connections[0].topics))  # fmt: skip
                await okx.ws.wait_until(lambda: bool(okx.connections)
                                        and len(okx.connections[0].topics) == 3)  # fmt: skip
            async with running(base):
                pass
    started = [e["components"] for e in logs if e["event"] == "supervisor.started"]
    assert started == [
        ["bybit", "database_ping", "exchange_info", "okx", "rollup", "ws"],
        ["database_ping", "exchange_info", "rollup", "ws"],
    ]
