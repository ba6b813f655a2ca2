"""Request-weight budgets, one per Binance limit pool (docs/binance.md §3).

fapi and dapi share one 2400/min IP budget since the 2026 merge; papi has its own (limit not
documented, assumed 2400); every sapi endpoint has an independent 12000/min. This process uses at
most `share` of each limit, because other processes may share the egress IP, and never more
than what is left of the limit for the whole IP. Weight is charged *before* a request from the
documented weights; the used-weight headers, which count every process on the IP, correct the
IP's count. A 429 stops one pool; a 418 stops every pool.

Binance counts weight per minute, so a budget spent in a burst stalls until the next minute. A
pool therefore releases its allowance over the minute: a quarter at once, the rest evenly up to
50 s into the minute, so a busy pool waits seconds, not the rest of the minute, and never more
than the allowance is spent in any minute. Time comes from an injected clock (Unix seconds);
waits are slept in slices, so a clock that jumps (a test's, or a corrected one) is seen soon.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.metrics import Metrics
from collector.retry import sleep_or_stop

FAPI_DAPI_POOL = "fapi_dapi"
PAPI_POOL = "papi"
# Documented limits per minute (§3.1); papi's is unconfirmed, so the lowest plausible is used.
POOL_LIMITS_1M = {FAPI_DAPI_POOL: 2400, PAPI_POOL: 2400}
SAPI_ENDPOINT_LIMIT_1M = 12000
# After a 429 or 418 without Retry-After: the next minute boundary plus up to this much jitter.
_JITTER_S = 3.0
# The part of a minute's allowance available at its start; the rest is released evenly over it.
_BURST_FRACTION = 0.25
# The whole allowance is released this far into the minute, so that the last of it is not lost at
# the boundary and a clock a few seconds off Binance's never spends two allowances in its minute.
_RELEASED_BY_S = 50.0
# The longest single sleep while waiting for weight: the clock is looked at again after it.
_MAX_SLEEP_S = 1.0


def pool_for(family: str, path: str) -> str:
    """The limit pool that a request to `path` on API `family` counts against."""
    if family in ("fapi", "dapi"):
        return FAPI_DAPI_POOL
    if family == "papi":
        return PAPI_POOL
    return f"sapi:{path}"


async def _wait_or_stop(event: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait for `event`; True if `stop` was set first (or is set)."""
    if event.is_set() or stop.is_set():
        return stop.is_set()
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return stop.is_set()


def pool_family(pool: str) -> str:
    """The API family whose server clock pool `pool` counts its minutes on."""
    if pool == FAPI_DAPI_POOL:
        return "fapi"
    if pool == PAPI_POOL:
        return "papi"
    return "sapi"


def request_weight_limit_1m(exchange_info: object) -> int | None:
    """The per-minute REQUEST_WEIGHT limit that an exchangeInfo response announces in
    `rateLimits` (docs/binance.md §3.1), or None when it announces none."""
    if not isinstance(exchange_info, dict):
        return None
    limits = exchange_info.get("rateLimits")
    found = [
        entry["limit"]
        for entry in (limits if isinstance(limits, list) else [])
        if isinstance(entry, dict)
        and entry.get("rateLimitType") == "REQUEST_WEIGHT"
        and entry.get("interval") == "MINUTE"
        and entry.get("intervalNum") == 1
        and isinstance(entry.get("limit"), int)
        and entry["limit"] > 0
    ]
    return min(found) if found else None


def pool_limit_1m(pool: str) -> int:
    """The documented per-minute weight limit of `pool`."""
    return POOL_LIMITS_1M.get(pool, SAPI_ENDPOINT_LIMIT_1M)


class WeightPool:
    """One limit pool's minute counters. Pure logic over an injected clock (`time.time`).

    `used` is what this process charged this minute, held to its share of the limit;
    `ip_used` is what Binance counted for the whole IP (every process behind it), from the
    used-weight headers plus this process's charges since, held to the whole limit.
    """

    def __init__(
        self,
        name: str,
        limit_1m: int,
        share: float,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.limit_1m = limit_1m
        self.share = share
        self.allowed_1m = max(1, int(limit_1m * share))
        self.used = 0
        self.ip_used = 0
        self.blocked_until = 0.0
        self._minute = -1
        self._clock = clock
        self._rng = rng or random.Random()

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute = minute
            self.used = self.ip_used = 0

    def next_minute_delay(self) -> float:
        """Seconds to the next minute boundary plus jitter (when Binance's counter resets)."""
        now = self._clock()
        return (int(now // 60) + 1) * 60 - now + self._rng.random() * _JITTER_S

    def released(self, now: float) -> float:
        """How much of this minute's allowance may have been spent by `now`."""
        progress = min(1.0, (now - int(now // 60) * 60) / _RELEASED_BY_S)
        return self.allowed_1m * (_BURST_FRACTION + (1 - _BURST_FRACTION) * progress)

    def reserve(self, weight: int) -> float:
        """Charge `weight` and return 0.0, or return how long to wait before asking again.

        Within the allowance, the wait is until enough of it is released (seconds); beyond it,
        until the next minute. A request heavier than the whole allowance still goes through on
        a fresh minute.
        """
        now = self._clock()
        if now < self.blocked_until:
            return self.blocked_until - now
        self._roll(now)
        if self.ip_used + weight > self.limit_1m and self.ip_used > 0:
            return self.next_minute_delay()  # the IP's minute is spent, by others too
        needed = self.used + weight
        if needed <= self.released(now) or self.used == 0:
            self.used += weight
            self.ip_used += weight
            return 0.0
        if needed <= self.allowed_1m:
            minute_start = int(now // 60) * 60
            fraction = (needed / self.allowed_1m - _BURST_FRACTION) / (1 - _BURST_FRACTION)
            return max(0.001, minute_start + _RELEASED_BY_S * fraction - now)
        return self.next_minute_delay()

    def observe_used(self, used_1m: int) -> None:
        """Correct the IP's count from `X-MBX-USED-WEIGHT-1M` / `X-SAPI-USED-IP-WEIGHT-1M`."""
        self._roll(self._clock())
        self.ip_used = max(self.ip_used, used_1m)

    def lower_limit(self, limit_1m: int) -> None:
        """The pool's real limit is at most `limit_1m`: never spend more than our share of it."""
        if 0 < limit_1m < self.limit_1m:
            self.limit_1m = limit_1m
            self.allowed_1m = max(1, int(limit_1m * self.share))

    def block(self, seconds: float) -> None:
        """Send nothing on this pool for `seconds` (after a 429)."""
        self.blocked_until = max(self.blocked_until, self._clock() + seconds)


@dataclass(slots=True)
class _Turns:
    """Who may ask a pool next: first in, first out, fresh reads before backfill."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fresh_waiting: int = 0
    no_fresh_waiting: asyncio.Event = field(default_factory=asyncio.Event)


class Budget:
    """Every limit pool of this process, plus the IP-wide ban after a 418.

    Each pool counts on Binance's minute: `clock` is this host's time and `offset_s(pool)` the
    server's lead over it for the API family of that pool (0 until a time sync says otherwise).
    """

    def __init__(
        self,
        share: float,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        offset_s: Callable[[str], float] | None = None,
    ) -> None:
        self.share = share
        self.metrics = metrics
        self.banned_until = 0.0
        self._pools: dict[str, WeightPool] = {}
        self._turns: dict[str, _Turns] = {}
        self._clock = clock
        self._offset_s = offset_s or (lambda _pool: 0.0)
        self._rng = rng or random.Random()
        self._announcements_due: dict[str, float] = {}
        self.announcement_lock = asyncio.Lock()

    def pool(self, name: str) -> WeightPool:
        """The pool called `name`, created (and its limit gauge set) on first use."""
        pool = self._pools.get(name)
        if pool is None:
            clock = functools.partial(self.server_clock, name)
            pool = WeightPool(name, pool_limit_1m(name), self.share, clock=clock, rng=self._rng)
            self._pools[name] = pool
            self.metrics.rest_weight_limit.labels(name).set(pool.allowed_1m)
        return pool

    def server_clock(self, name: str) -> float:
        """Binance's time (Unix seconds) as the API family of pool `name` tells it."""
        return self._clock() + self._offset_s(name)

    def announcement_due(self, name: str) -> bool:
        """Whether pool `name`'s announced limit should be read (again) now."""
        return self._clock() >= self._announcements_due.get(name, 0.0)

    def announce(self, name: str, limit_1m: int | None, next_in_s: float) -> None:
        """Binance announced `limit_1m` (exchangeInfo `rateLimits`) for pool `name`: it replaces
        the documented figure and whatever a 429 taught since the last announcement. None: the
        announcement could not be read; the pool keeps what it knows. Read again in
        `next_in_s`."""
        self._announcements_due[name] = self._clock() + next_in_s
        if limit_1m is None:
            return
        pool = self.pool(name)
        pool.limit_1m = limit_1m
        pool.allowed_1m = max(1, int(limit_1m * self.share))
        self.metrics.rest_weight_limit.labels(name).set(pool.allowed_1m)

    def reserve(self, name: str, weight: int) -> float:
        """Like `WeightPool.reserve`, but every pool waits while the IP is banned (418)."""
        now = self._clock()
        if now < self.banned_until:
            return self.banned_until - now
        pool = self.pool(name)
        delay = pool.reserve(weight)
        self.metrics.rest_weight_used.labels(name).set(pool.ip_used)
        return delay

    async def acquire(
        self, name: str, weight: int, stop: asyncio.Event, *, is_backfill: bool = False
    ) -> bool:
        """Wait until `weight` fits in pool `name` and charge it; False if `stop` came first.

        Requests are served in the order they asked (asyncio.Lock wakes its waiters first in,
        first out), so no poller of a busy pool starves while others keep asking. A backfill
        request (`is_backfill`) also gives way to every fresh one, waiting or arriving: the
        backfill spends only what the recent windows leave.
        """
        turns = self._turns.get(name)
        if turns is None:
            turns = self._turns[name] = _Turns()
            turns.no_fresh_waiting.set()
        if not is_backfill:
            turns.fresh_waiting += 1
            turns.no_fresh_waiting.clear()
        try:
            while not stop.is_set():
                if is_backfill and await _wait_or_stop(turns.no_fresh_waiting, stop):
                    return False
                async with turns.lock:
                    while not stop.is_set() and not (is_backfill and turns.fresh_waiting):
                        delay = self.reserve(name, weight)
                        if delay <= 0:
                            return True
                        await sleep_or_stop(min(delay, _MAX_SLEEP_S), stop)
            return False
        finally:
            if not is_backfill:
                turns.fresh_waiting -= 1
                if not turns.fresh_waiting:
                    turns.no_fresh_waiting.set()

    def observe_used(self, name: str, used_1m: int) -> None:
        """Feed a used-weight header into pool `name`."""
        pool = self.pool(name)
        pool.observe_used(used_1m)
        self.metrics.rest_weight_used.labels(name).set(pool.ip_used)

    def rate_limited(
        self, name: str, retry_after_s: float | None, weight: int = 0, used_1m: int | None = None
    ) -> float:
        """A 429 on pool `name` for a request of `weight`: stop the pool until Retry-After, or
        the next minute with jitter, and lower its limit to what was used before the request.

        Returns the pause. `used_1m` is the used weight the 429 reported for the IP: what was
        used before the refused request is at most the real limit, so from now on this process
        takes its share of that and the following minutes draw no second 429. Without the
        header nothing is learnt (our own count is only part of the IP's). See
        developers.binance.com/docs/binance-spot-api-docs/rest-api/limits: continuing after a
        429 earns a 418 ban.
        """
        pool = self.pool(name)
        delay = retry_after_s if retry_after_s is not None else pool.next_minute_delay()
        pool.block(delay)
        if used_1m is not None:  # without Binance's count, ours says nothing about the limit
            pool.lower_limit(used_1m - weight)
        self.metrics.rest_weight_limit.labels(name).set(pool.allowed_1m)
        self.metrics.rest_rate_limited.labels(name, "429").inc()
        return delay

    def banned(self, name: str, until_unix: float) -> None:
        """A 418 (IP ban): stop every pool until `until_unix`."""
        self.banned_until = max(self.banned_until, until_unix)
        self.metrics.rest_rate_limited.labels(name, "418").inc()

    def clock(self) -> float:
        """The budget's notion of now (Unix seconds)."""
        return self._clock()
