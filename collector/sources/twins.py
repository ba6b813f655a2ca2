"""Twin frames: the copies of one frame that the replicas of a shard each receive.

At `redundancy` r every event arrives on r connections, as the same text but for the event
time `E`, which differs between connections (docs/binance.md §1.3). The first copy is decoded
and parsed; `FrameTwins` remembers its `twin_key` (the text without the first `"E":` and its
digits) with the row it became, and a later copy with the same key (a twin) is matched here,
before any decoding, so its connection counts it in its own ledger (at its own receive time)
and the writer never sees it. Matching is by the whole key (a dict keyed by the string: its
hash, then equality), so two frames match only when they differ in nothing but those digits:
then their content keys (which leave `E` out) are equal too, and the writer would have dropped
the second copy anyway. Nothing is dropped here that the content key would have kept.

Bounded: an entry leaves once its r - 1 twins have arrived, so in steady state the window holds
only the frames whose twins are still in flight (the lag between connections times the rate);
when a replica is down its twins never come and the oldest entries are dropped beyond `size`.
A dropped entry costs only the old path: the twin is parsed and the writer's key window (then
the database's unique key) drops it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from collector.model import MarketLiquidation
from collector.sources.binance_parse import Anomaly

# Frames remembered at most, per shard: at 2,000 events/s a second of a twin's lag (twins on
# one host arrive milliseconds apart), and about 2.5 MB when full (a row with its text is about
# 1.2 KB), which it is only while a replica is down.
DEFAULT_SIZE = 2048


# The first event time in a frame: `"E":` and its digits (Binance puts it first in the event).
_EVENT_TIME = re.compile(r'"E":\d+')


def twin_key(text: str) -> str:
    """`text` without its first `"E":<digits>` (the whole text if it has none)."""
    return _EVENT_TIME.sub("", text, count=1)


class Twin(NamedTuple):
    """What the first copy of a frame became: its row and the anomaly kinds found in it."""

    row: MarketLiquidation
    anomalies: Sequence[Anomaly]


class FrameTwins:
    """Recent frames of one shard (shared by its replicas) awaiting their twins."""

    def __init__(self, copies: int, size: int = DEFAULT_SIZE) -> None:
        # Each frame arrives `copies` times; an entry waits for `copies - 1` twins.
        self._twins_per_frame = max(copies - 1, 0)
        self._size = size
        # twin key -> (first copy, twins still expected)
        self._pending: dict[str, tuple[Twin, int]] = {}
        self.twins = 0  # twins matched (for tests and the bench)

    def __len__(self) -> int:
        return len(self._pending)

    def remember(self, key: str, twin: Twin) -> None:
        """Remember the first copy of the frame of `key` (`twin_key`), parsed into `twin`."""
        if self._twins_per_frame == 0:
            return
        pending = self._pending
        pending[key] = (twin, self._twins_per_frame)
        if len(pending) > self._size:
            del pending[next(iter(pending))]

    def take(self, key: str) -> Twin | None:
        """The first copy of the frame of `key` if this is one of its twins (then counted),
        else None."""
        entry = self._pending.get(key)
        if entry is None:
            return None
        twin, expected = entry
        if expected <= 1:
            del self._pending[key]
        else:
            self._pending[key] = (twin, expected - 1)
        self.twins += 1
        return twin
