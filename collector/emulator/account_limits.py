"""Request-weight budgets, IP bans, an injectable clock and scripted faults for the REST emulator.

Pure state machines (no I/O): `account_rest` asks them what to answer. Semantics follow
docs/binance.md §3: per-IP weight per UTC minute, HTTP 429 with code -1003 over the
limit, HTTP 418 and a ban for an IP that keeps sending after 429s (never on `/sapi`), bans that
grow for repeat offenders from 2 minutes up to 3 days.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeVar

Clock = Callable[[], int]
"""Milliseconds since the epoch; the emulator's notion of "now" (the real one by default)."""

MINUTE_MS: Final = 60_000
MAX_BAN_S: Final = 3 * 86_400
"""§3.2: bans "scale in duration for repeat offenders, from 2 minutes to 3 days"."""
_T = TypeVar("_T")
_POLLING_HINT: Final = "Please use the websocket for live updates to avoid polling the API."


def wall_clock_ms() -> int:
    """This machine's wall clock in milliseconds."""
    return time.time_ns() // 1_000_000


class ManualClock:
    """A clock tests move by hand, so minute windows, bans and recvWindows need no sleeping."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        """The current time in ms."""
        return self.now_ms

    def advance(self, ms: int) -> int:
        """Move forward by `ms` (may be negative); return the new time."""
        self.now_ms += ms
        return self.now_ms

    def set(self, now_ms: int) -> None:
        """Jump to `now_ms`."""
        self.now_ms = now_ms


def too_many_requests_msg(limit: int) -> str:
    """The -1003 text of a 429 (§5)."""
    return f"Too many requests; current limit is {limit} requests per minute. {_POLLING_HINT}"


def banned_msg(until_ms: int) -> str:
    """The -1003 text of a 418 (§5); clients parse the epoch out of it."""
    return f"Way too many requests; IP banned until {until_ms}. {_POLLING_HINT}"


class WeightPool:
    """One request-weight budget of the (single, loopback) client IP, reset every UTC minute.

    fapi and dapi share one pool (§3.1, since 2026-06-30); papi has its own; every `/sapi`
    endpoint has an independent one, and those never lead to bans (`can_ban=False`).
    """

    def __init__(self, name: str, limit: int, header: str, *, can_ban: bool) -> None:
        self.name = name
        self.limit = limit
        self.header = header
        self.can_ban = can_ban
        self._minute = -1
        self._used = 0
        self._rejected = 0

    def _roll(self, now_ms: int) -> None:
        minute = now_ms // MINUTE_MS
        if minute != self._minute:
            self._minute, self._used, self._rejected = minute, 0, 0

    def used_at(self, now_ms: int) -> int:
        """Weight used in the minute containing `now_ms`."""
        self._roll(now_ms)
        return self._used

    def add(self, weight: int, now_ms: int) -> int:
        """Count `weight` in the minute containing `now_ms`; return the minute's total."""
        self._roll(now_ms)
        self._used += weight
        return self._used

    def rejected_at(self, now_ms: int) -> int:
        """How many 429s this pool answered in the minute containing `now_ms`."""
        self._roll(now_ms)
        return self._rejected

    def note_rejection(self, now_ms: int) -> None:
        """Record one 429 answered in the minute containing `now_ms`."""
        self._roll(now_ms)
        self._rejected += 1

    def reset(self) -> None:
        """Forget the current minute's usage."""
        self._minute, self._used, self._rejected = -1, 0, 0


class Decision(NamedTuple):
    """What to answer a request: `status` 200 (serve it), 429 or 418; the used weight to report;
    for refusals the `Retry-After` seconds and the -1003 message."""

    status: int
    used: int
    retry_after_s: int = 0
    msg: str = ""


@dataclass(slots=True)
class BanPolicy:
    """When a 429'd IP gets banned, and for how long.

    Once `after_429s` 429s were answered in one minute on a banning pool, the next over-limit
    request draws a 418 and bans the IP for `base_s`, doubling per repeat offence up to `max_s`.
    """

    after_429s: int = 3
    base_s: int = 120
    max_s: int = MAX_BAN_S


class RateLimiter:
    """Admission control over weight pools plus the one IP ban shared by fapi, dapi and papi."""

    def __init__(self, policy: BanPolicy) -> None:
        self.policy = policy
        self.banned_until_ms = 0
        self.offences = 0

    def check(self, pool: WeightPool, weight: int, now_ms: int) -> Decision:
        """Count `weight` on `pool` at `now_ms` and decide the answer (§3.2).

        A banned IP gets 418 on every banning pool without the weight being counted. Over the
        limit: 429 with Retry-After = seconds to the next minute, or 418 plus a (longer) ban when
        the IP already ignored `after_429s` 429s this minute.
        """
        if pool.can_ban and now_ms < self.banned_until_ms:
            remaining = _ceil_s(self.banned_until_ms - now_ms)
            return Decision(418, pool.used_at(now_ms), remaining, banned_msg(self.banned_until_ms))
        used = pool.add(weight, now_ms)
        if used <= pool.limit:
            return Decision(200, used)
        if pool.can_ban and pool.rejected_at(now_ms) >= self.policy.after_429s:
            duration_s = min(self.policy.base_s * 2**self.offences, self.policy.max_s)
            self.offences += 1
            self.banned_until_ms = now_ms + duration_s * 1000
            return Decision(418, used, duration_s, banned_msg(self.banned_until_ms))
        pool.note_rejection(now_ms)
        next_minute_ms = (now_ms // MINUTE_MS + 1) * MINUTE_MS
        return Decision(
            429, used, _ceil_s(next_minute_ms - now_ms), too_many_requests_msg(pool.limit)
        )

    def reset(self) -> None:
        """Lift any ban and forget past offences."""
        self.banned_until_ms = 0
        self.offences = 0


def _ceil_s(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


class Stall(NamedTuple):
    """Hold a response for `seconds`, or until released when `seconds` is None."""

    seconds: float | None


class FaultPlan:
    """Scripted failures per route path (`"*"` matches every route), consumed in FIFO order."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[int]] = {}
        self._stalls: dict[str, deque[Stall]] = {}

    def fail_next(self, path: str, count: int, status: int) -> None:
        """Answer the next `count` requests to `path` with HTTP `status` (a 5xx)."""
        if not 500 <= status <= 599:
            raise ValueError("status must be a 5xx")
        self._failures.setdefault(path, deque()).extend([status] * count)

    def stall_next(self, path: str, count: int, seconds: float | None) -> None:
        """Hold the next `count` responses of `path` (see `Stall`)."""
        self._stalls.setdefault(path, deque()).extend([Stall(seconds)] * count)

    def take_failure(self, path: str) -> int | None:
        """The status to fail this request of `path` with, if one is scripted."""
        return _take(self._failures, path)

    def take_stall(self, path: str) -> Stall | None:
        """The stall to apply to this request of `path`, if one is scripted."""
        return _take(self._stalls, path)

    def clear(self) -> None:
        """Drop every scripted fault not yet consumed."""
        self._failures.clear()
        self._stalls.clear()


def _take(plan: dict[str, deque[_T]], path: str) -> _T | None:
    for key in (path, "*"):
        queue = plan.get(key)
        if queue:
            return queue.popleft()
    return None
