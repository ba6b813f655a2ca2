"""`collector simulate`'s Binance side: an emulator on fixed or free loopback ports until told
to stop, its URLs and its final counters logged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from collector.emulator.core import Emulator
from collector.emulator.emulator_options import EmulatorOptions
from collector.emulator.ws_state import EmulatorStats

log = structlog.get_logger(__name__)


async def run_simulator(
    options: EmulatorOptions,
    *,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    stop: asyncio.Event,
    on_started: Callable[[Mapping[str, str]], None] | None = None,
) -> None:
    """Run an emulator until `stop` is set; log its base URLs as `emulator.started` and hand
    them to `on_started`.

    `ports` maps host names (fstream, dstream, fapi, dapi, papi, sapi) to fixed ports; missing or
    0 means any free port.
    """
    emulator = Emulator(options)
    await emulator.start(host, ports=ports)
    try:
        log.info("emulator.started", **emulator.urls)
        if on_started is not None:
            on_started(emulator.urls)
        await stop.wait()
    finally:
        await emulator.stop()
        log.info("emulator.stopped", **_stats_fields(emulator.stats))


def _stats_fields(stats: EmulatorStats) -> dict[str, Any]:
    fields = {
        name: getattr(stats, name)
        for name in (
            "events_published",
            "events_generated",
            "events_rate_capped",
            "frames_sent",
            "upgrades",
        )
    }
    fields["disconnects"] = dict(stats.disconnects)
    return fields
