"""Server-time offsets, one per API family (docs/binance.md §2.3).

`timestamp` must be below serverTime + 1000 ms and within recvWindow of it, so the local clock
is never trusted: offset = serverTime - midpoint(send, receive), refreshed periodically and after
every -1021. papi has no time endpoint, so it borrows fapi's clock (§2.1 ⚠).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from collector.config import BinanceConfig
from collector.metrics import Metrics

# Sent timestamps are this much behind the estimated server time, to stay clear of the
# "1000 ms ahead" rejection while well inside any recvWindow.
SAFETY_MS = 250

# family -> (family whose host serves the time, path). papi: none of its own (§2.1).
TIME_ENDPOINTS = {
    "fapi": ("fapi", "/fapi/v1/time"),
    "dapi": ("dapi", "/dapi/v1/time"),
    "papi": ("fapi", "/fapi/v1/time"),
    "sapi": ("sapi", "/api/v3/time"),
}


def base_url(config: BinanceConfig, family: str) -> str:
    """The configured base URL of API `family`, without a trailing slash."""
    urls = {
        "fapi": config.fapi_url,
        "dapi": config.dapi_url,
        "papi": config.papi_url,
        "sapi": config.sapi_url,
    }
    return urls[family].rstrip("/")


# Fetches serverTime (ms) from (family, path); supplied by the client so this module stays pure.
FetchTime = Callable[[str, str], Awaitable[int]]


@dataclass(slots=True)
class _Offset:
    offset_ms: float = 0.0
    synced_at: float | None = None  # monotonic


class ServerClocks:
    """Per-family offsets between Binance's clock and ours."""

    def __init__(
        self,
        metrics: Metrics,
        refresh_s: float,
        *,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.refresh_s = refresh_s
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._offsets: dict[str, _Offset] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _state(self, family: str) -> _Offset:
        return self._offsets.setdefault(family, _Offset())

    def offset_ms(self, family: str) -> float:
        """The current offset of `family` (0 before the first sync)."""
        return self._state(family).offset_ms

    def needs_sync(self, family: str) -> bool:
        """True before the first sync and once the offset is older than `refresh_s`."""
        synced = self._state(family).synced_at
        return synced is None or self._monotonic() - synced > self.refresh_s

    async def sync(
        self, family: str, fetch: FetchTime, *, unless_since: float | None = None
    ) -> None:
        """Measure `family`'s offset now. With `unless_since` (a monotonic time), skip when
        another task already synced after it (several requests hit -1021 together)."""
        lock = self._locks.setdefault(family, asyncio.Lock())
        async with lock:
            state = self._state(family)
            synced = state.synced_at
            if unless_since is not None and synced is not None and synced > unless_since:
                return
            host_family, path = TIME_ENDPOINTS[family]
            sent = self._wall_ms()
            server_ms = await fetch(host_family, path)
            received = self._wall_ms()
            state.offset_ms = server_ms - (sent + received) / 2
            state.synced_at = self._monotonic()
            self.metrics.rest_clock_offset.labels(family).set(state.offset_ms / 1000)

    def timestamp_ms(self, family: str) -> int:
        """The `timestamp` to send to `family` now."""
        return int(self._wall_ms() + self.offset_ms(family)) - SAFETY_MS

    def now_ms(self, family: str) -> int:
        """Binance's current time as seen through `family`'s offset (for windows)."""
        return int(self._wall_ms() + self.offset_ms(family))

    def monotonic(self) -> float:
        """The clock `unless_since` is measured on."""
        return self._monotonic()
