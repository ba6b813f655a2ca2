"""When a batch is flushed: the linger after its oldest row was read off the socket.

A batch starts with the first item a lane takes and is flushed when it holds `batch_max_rows`
items, or when its first row has been `batch_max_age_s` old since it came off the socket
(`received_monotonic`), whichever comes first. Anchoring the age at the socket, not at the
moment a lane took the row, bounds socket -> flush by the age even when the row waited in the
queue while the lanes were busy: a row that already waited that long is flushed with whatever
is queued behind it, without waiting for more. Items without a socket time (ledger snapshots,
dead letters, rows from files or REST) start the age when taken.

Only one lane gathers at a time (`Writer` holds a lock around it), so rows that arrive together
end in one batch instead of being split between lanes; the other lanes commit meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from collector.model import MarketLiquidation, WriteItem

Clock = Callable[[], float]


class FlushPolicy:
    """`deadline(first, now)`: the clock time at which a batch beginning with `first` is
    flushed (the caller stops waiting for more items then; `max_rows` ends it sooner)."""

    def __init__(self, max_age_s: float, max_rows: int, clock: Clock = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.max_rows = max_rows
        self.clock = clock

    def deadline(self, first: WriteItem, now: float | None = None) -> float:
        if now is None:
            now = self.clock()
        received = first.received_monotonic if type(first) is MarketLiquidation else 0.0
        # 0: no socket time; later than now: a clock we do not share (say, a replayed row).
        start = received if 0.0 < received <= now else now
        return start + self.max_age_s

    def remaining(self, deadline: float) -> float:
        """Seconds left to wait for more items (<= 0: flush now)."""
        return deadline - self.clock()
