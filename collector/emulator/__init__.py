"""In-repo Binance emulator: WebSocket market streams and REST hosts on loopback.

Tests, benchmarks and the offline demo run the collector against it; it behaves as
docs/binance.md documents Binance. See `core.Emulator` for the scripting surface.
"""

from collector.emulator.core import Emulator
from collector.emulator.emulator_options import EmulatorOptions
from collector.emulator.events import (
    DEFAULT_CM_SYMBOLS,
    DEFAULT_UM_SYMBOLS,
    EventGenerator,
    make_force_order_event,
    synthetic_symbols,
)
from collector.emulator.market_rest import add_route_weight
from collector.emulator.simulate import run_simulator
from collector.emulator.ws_state import ConnectionInfo, EmulatorStats

__all__ = [
    "DEFAULT_CM_SYMBOLS",
    "DEFAULT_UM_SYMBOLS",
    "ConnectionInfo",
    "Emulator",
    "EmulatorOptions",
    "EmulatorStats",
    "EventGenerator",
    "add_route_weight",
    "make_force_order_event",
    "run_simulator",
    "synthetic_symbols",
]
