"""What the run phase supervises follows the configuration, and a feature that is off is not
even imported (its modules are neither loaded nor resident: collector.components)."""

from __future__ import annotations

import subprocess
import sys

import orjson

_PROBE = """
import sys, orjson
import collector.supervisor
from collector.components import components
from collector.config import load_config
from collector.runtime import Runtime

config = load_config(dict(arg.split("=", 1) for arg in sys.argv[1:]))
# Building the components starts nothing: the runtime's parts are only captured.
runtime = Runtime(config, "", None, None, None, None, None, 0)
lazy = ("collector.sources.bybit_ws", "collector.sources.okx_ws", "collector.rest.accounts",
        "collector.out.alerts", "collector.out.broker", "nats")
print(orjson.dumps([sorted(components(runtime)), [m for m in lazy if m in sys.modules]]).decode())
"""


def probe(*environ: str) -> list[list[str]]:
    """[component names, which of the optional modules are imported] in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *environ], check=True, capture_output=True, text=True
    ).stdout
    result: list[list[str]] = orjson.loads(out)
    return result


def test_binance_alone_loads_no_other_venue_nor_the_account_pollers() -> None:
    assert probe("COLLECTOR_VENUES_ENABLED=binance") == [
        ["database_ping", "exchange_info", "rollup", "venue_rollup", "ws"],
        [],
    ]


def test_every_venue_enabled_loads_their_sources_and_nothing_else() -> None:
    assert probe() == [
        ["bybit", "database_ping", "exchange_info", "okx", "rollup", "venue_rollup", "ws"],
        ["collector.sources.bybit_ws", "collector.sources.okx_ws"],
    ]


def test_bybit_alone_runs_no_binance_stream() -> None:
    assert probe("COLLECTOR_VENUES_ENABLED=bybit") == [
        ["bybit", "database_ping", "rollup", "venue_rollup"],
        ["collector.sources.bybit_ws"],
    ]
