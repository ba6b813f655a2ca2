"""Server-time offsets, one per API family (docs/binance.md §2.3).

`timestamp` must be below serverTime + 1000 ms and within recvWindow of it, so the local clock
is never trusted: offset = serverTime - midpoint(send, receive) of the time request itself (its
wait for weight excluded), refreshed periodically and after a -1021. papi has no time endpoint,
so it borrows fapi's clock (§2.1 ⚠).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import structlog

from collector.config import BinanceConfig
from collector.exceptions import CollectorError
from collector.metrics import Metrics
from collector.retry import CLOCK_SYNC_RETRY, Backoff, Policy, sleep_or_stop

log = structlog.get_logger(__name__)

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


# Fetches (serverTime in ms, our wall clock in ms halfway through the exchange) from (family,
# path); supplied by the client so this module does no I/O.
FetchTime = Callable[[str, str], Awaitable[tuple[int, float]]]


@dataclass(slots=True)
class _Offset:
    offset_ms: float = 0.0
    synced_at: float | None = None  # monotonic, of the last good sync
    is_stale: bool = True  # no good sync yet, or the last attempt failed
    backoff: Backoff = field(default_factory=CLOCK_SYNC_RETRY.backoff)  # between failed syncs
    retry_at: float = 0.0  # monotonic: no new attempt before this after a failure


class ClockStopped(CollectorError):
    """Stop was requested while waiting for a time sync."""


class ServerClocks:
    """Per-family offsets between Binance's clock and ours.

    Families that read the same time endpoint share one offset (papi borrows fapi's), and each
    offset is measured by one request at a time however many pollers need it. A failed sync
    leaves the offset stale: requests of that family wait for a good one (`ready`), retried with
    backoff, rather than being sent with a timestamp known to be wrong.
    """

    def __init__(
        self,
        metrics: Metrics,
        refresh_s: float,
        *,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000,
        monotonic: Callable[[], float] = time.monotonic,
        retry: Policy = CLOCK_SYNC_RETRY,
    ) -> None:
        self.metrics = metrics
        self.refresh_s = refresh_s
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._retry = retry
        self._offsets: dict[str, _Offset] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _state(self, family: str) -> _Offset:
        path = TIME_ENDPOINTS[family][1]
        if path not in self._offsets:
            self._offsets[path] = _Offset(backoff=self._retry.backoff())
        return self._offsets[path]

    def offset_ms(self, family: str) -> float:
        """The current offset of `family` (0 before the first sync)."""
        return self._state(family).offset_ms

    def needs_sync(self, family: str) -> bool:
        """True before the first good sync, after a failed one, and once the offset is older
        than `refresh_s`."""
        state = self._state(family)
        synced = state.synced_at
        return state.is_stale or synced is None or self._monotonic() - synced > self.refresh_s

    async def ready(self, family: str, fetch: FetchTime, stop: asyncio.Event) -> None:
        """Return once `family` has a fresh offset, syncing (with backoff after failures) as
        needed; raise ClockStopped if `stop` is set first. Errors of `fetch` are counted in the
        offset's state and retried, never raised."""
        while self.needs_sync(family):
            if stop.is_set():
                raise ClockStopped(family)
            state = self._state(family)
            wait_s = state.retry_at - self._monotonic()
            if wait_s > 0:
                if await sleep_or_stop(wait_s, stop):
                    raise ClockStopped(family)
                continue
            try:
                await self.sync(family, fetch, unless_since=state.synced_at)
            except (CollectorError, OSError, TimeoutError, aiohttp.ClientError) as exc:
                if stop.is_set():
                    raise ClockStopped(family) from None
                retry_in_s = max(0.0, state.retry_at - self._monotonic())
                log.warning("rest.clock_sync_failed", family=family, error=str(exc)[:200],
                            retry_in_s=round(retry_in_s, 2))  # fmt: skip

    async def sync(
        self, family: str, fetch: FetchTime, *, unless_since: float | None = None
    ) -> None:
        """Measure `family`'s offset now. With `unless_since` (a monotonic time), skip when
        another task already synced after it (several requests hit -1021 together, or several
        pollers found the offset due). A failure marks the offset stale and re-raises."""
        lock = self._locks.setdefault(TIME_ENDPOINTS[family][1], asyncio.Lock())
        async with lock:
            state = self._state(family)
            synced = state.synced_at
            if unless_since is not None and (
                (synced is not None and synced > unless_since and not state.is_stale)
                or (state.is_stale and state.retry_at > self._monotonic())
            ):
                return  # synced since, or failed since and backing off
            host_family, path = TIME_ENDPOINTS[family]
            try:
                server_ms, midpoint_ms = await fetch(host_family, path)
            except BaseException:
                state.is_stale = True
                state.retry_at = self._monotonic() + state.backoff.next_delay()
                raise
            state.offset_ms = server_ms - midpoint_ms
            state.synced_at = self._monotonic()
            state.is_stale = False
            state.backoff.reset()
            for name, (_host, time_path) in TIME_ENDPOINTS.items():
                if time_path == path:
                    self.metrics.rest_clock_offset.labels(name).set(state.offset_ms / 1000)

    def rejected(self, family: str, sent_at: float) -> None:
        """Binance rejected (-1021) a timestamp of `family` sent at monotonic `sent_at`: the
        offset it was made with is no longer trusted. Rejections of requests signed before the
        latest sync say nothing new, so a burst of them costs one resync."""
        state = self._state(family)
        if state.synced_at is None or state.synced_at <= sent_at:
            state.is_stale = True

    def timestamp_ms(self, family: str) -> int:
        """The `timestamp` to send to `family` now."""
        return int(self._wall_ms() + self.offset_ms(family)) - SAFETY_MS

    def now_ms(self, family: str) -> int:
        """Binance's current time as seen through `family`'s offset (for windows)."""
        return int(self._wall_ms() + self.offset_ms(family))

    def wall_ms(self) -> float:
        """Our wall clock in ms (the one offsets are added to)."""
        return self._wall_ms()

    def monotonic(self) -> float:
        """The clock `unless_since` is measured on."""
        return self._monotonic()
