"""Pure window planning for the account endpoints (docs/binance.md §4.5): the arithmetic of
limit-style windows, and Binance's rules about which windows it can serve.

Whether Binance's startTime/endTime bounds are inclusive is not documented (⚠), so adjacent
windows share their boundary millisecond: a row at the boundary is fetched twice under inclusive
bounds (the upsert makes that harmless) and once under exclusive ones, never zero times.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.rest.client import RequestRejected

Window = tuple[int, int]

# Stay this far inside a documented retention, so the oldest window never asks for expired data.
RETENTION_MARGIN_MS = 3_600_000
# -1127 "More than %s hours between startTime and endTime": halve the span, down to this.
MIN_WINDOW_MS = 3_600_000
WINDOW_TOO_WIDE = -1127
INVALID_VALUE = -1130
# Other codes with which an endpoint rejects the time range itself, whatever else is sent.
TIME_RANGE_CODES = frozenset({-4166})
_NAMES_A_TIME = re.compile(r"\b(startTime|endTime)\b")


def split_window(window: Window) -> tuple[Window, Window] | None:
    """Halve a window that returned a full page: `[s, m+1]` and `[m, e]`; None when it is too
    narrow to split, i.e. when a half would be the window itself (`end - start` below 3: the
    halves of `(0, 2)` would be `(0, 2)` and `(1, 2)`)."""
    start, end = window
    if end - start < 3:
        return None
    mid = (start + end) // 2
    return (start, mid + 1), (mid, end)


def next_window(cursor_ms: int, now_ms: int, max_span_ms: int) -> Window | None:
    """The next window from `cursor_ms` towards `now_ms`, at most `max_span_ms` wide; None when
    the cursor has reached now."""
    if cursor_ms >= now_ms:
        return None
    return cursor_ms, min(now_ms, cursor_ms + max_span_ms)


def can_only_fail(exc: RequestRejected, window_ms: int) -> bool:
    """Whether Binance rejected the window itself, so asking again can only fail: a span too
    wide (-1127) even at the narrowest window sent, a time it does not serve (-1130 naming
    startTime or endTime, e.g. beyond its retention), or another time-range code. Anything else
    (a 404, another parameter, no code) may be transient or a problem of the endpoint as a
    whole, and is retried with backoff."""
    if exc.code == WINDOW_TOO_WIDE:
        return window_ms <= MIN_WINDOW_MS
    if exc.code == INVALID_VALUE:
        return _NAMES_A_TIME.search(exc.msg) is not None
    return exc.code in TIME_RANGE_CODES
