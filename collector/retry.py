"""One backoff policy for every retry: jittered, geometric, capped, reset after success.

The shape follows websockets' `backoff()` (initial jitter, growth, then the cap forever).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for successive retries: `initial_s * factor**n`, capped, with full jitter in
    [delay/2, delay]. `reset()` after a success starts over."""

    initial_s: float
    max_s: float
    factor: float = 2.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        delay = min(self.max_s, self.initial_s * self.factor**self.attempt)
        self.attempt += 1
        return delay / 2 + self.rng.random() * delay / 2

    def reset(self) -> None:
        """Start over after a success."""
        self.attempt = 0


class AttemptBudget:
    """At most `limit` attempts in any `window_s`: `reserve(at)` books the earliest slot at or
    after `at` and returns it. Sliding window; the clock is injectable."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._booked: deque[float] = deque()

    def reserve(self, at: float | None = None) -> float:
        """Book one attempt no earlier than `at` (default now); return its time."""
        at = self._clock() if at is None else at
        booked = self._booked
        while booked and booked[0] <= at - self._window_s:
            booked.popleft()
        if len(booked) >= self._limit:
            at = max(at, booked.popleft() + self._window_s)
        booked.append(at)
        return at


async def sleep_or_stop(delay_s: float, stop: asyncio.Event) -> bool:
    """Sleep `delay_s` unless `stop` is set first; return True when stopped."""
    try:
        async with asyncio.timeout(delay_s):
            await stop.wait()
    except TimeoutError:
        return False
    return True
