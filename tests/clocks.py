"""A clock that a test shares between the emulator and the collector, so minute windows, server
time and bans never depend on the second of the wall clock at which the test happens to run."""

from __future__ import annotations

import time


class SharedClock:
    """Time that flows at the real rate from a chosen start, plus the jumps a test makes.

    `SharedClock.at_minute_start()` begins on a minute boundary, the phase where the least of a
    minute's weight allowance is released: a test that passes from there passes from any phase.
    """

    def __init__(self, start_s: float, *, rate: float = 1.0) -> None:
        self._start_s = start_s
        self._t0 = time.monotonic()
        self._rate = rate

    @classmethod
    def at_minute_start(cls, *, rate: float = 1.0) -> SharedClock:
        """A clock that reads the start of the current wall-clock minute now and then runs at
        `rate` times the real rate (20: a minute's weight window passes in 3 s)."""
        return cls(float(int(time.time()) // 60 * 60), rate=rate)

    def __call__(self) -> float:
        """Now, in Unix seconds (the collector's budget clock)."""
        return self._start_s + (time.monotonic() - self._t0) * self._rate

    def ms(self) -> int:
        """Now, in Unix milliseconds (the emulator's clock and the collector's wall clock)."""
        return int(self() * 1000)

    def jump(self, seconds: float) -> None:
        """Move the clock by `seconds` (forward or back) for everyone who reads it."""
        self._start_s += seconds
