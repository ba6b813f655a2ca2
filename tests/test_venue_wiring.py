"""The daemon runs the Bybit and OKX sources of the enabled venues only, each pointed at its
emulator here (a test never reaches a real exchange)."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import structlog

from collector.config import BybitConfig, OkxConfig, VenuesConfig
from collector.emulator import Emulator, EmulatorOptions
from collector.emulator.bybit import BybitEmulator, BybitOptions
from collector.emulator.okx import OkxEmulator, OkxOptions
from tests.daemon import eventually, make_config, running


async def _venues(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return (await response.json())["venues"]


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
            # Repair off: the store's tests cover the records; this test is about the wiring.
            okx=OkxConfig(ws_url=okx.ws_url, rest_url=okx.rest_url, repair=False),
        )
        with structlog.testing.capture_logs() as logs:
            async with running(config) as daemon:
                await bybit.ws.wait_until(lambda: bool(bybit.connections)
                                          and bool(bybit.connections[0].topics))  # fmt: skip
                await okx.ws.wait_until(lambda: bool(okx.connections)
                                        and len(okx.connections[0].topics) == 3)  # fmt: skip
                url = f"http://127.0.0.1:{daemon.runtime.http_port}/readyz"
                state = await eventually(
                    lambda: _venues(url),
                    lambda v: v["bybit"]["linear"]["up"] == 1 and v["okx"]["up"],
                )
            async with running(base):
                pass
    assert state == {
        "bybit": {"linear": {"up": 1, "wanted": 1, "topics": 1, "symbols": 1}},
        "okx": {"up": True, "instruments": 7, "repair": "disabled"},
    }
    started = [e["components"] for e in logs if e["event"] == "supervisor.started"]
    assert started == [
        ["bybit", "database_ping", "exchange_info", "feed", "okx", "rollup", "venue_rollup", "ws"],
        ["database_ping", "exchange_info", "feed", "rollup", "venue_rollup", "ws"],
    ]
