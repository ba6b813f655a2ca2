"""Pure time-window arithmetic for the limit-style endpoints (docs/binance.md §4.5).

Whether Binance's startTime/endTime bounds are inclusive is not documented (⚠), so adjacent
windows share their boundary millisecond: a row at the boundary is fetched twice under inclusive
bounds (the upsert makes that harmless) and once under exclusive ones, never zero times.
"""

from __future__ import annotations

Window = tuple[int, int]


def split_window(window: Window) -> tuple[Window, Window] | None:
    """Halve a window that returned a full page: `[s, m+1]` and `[m, e]`; None when it is too
    narrow to split (fewer than 3 ms)."""
    start, end = window
    if end - start < 2:
        return None
    mid = (start + end) // 2
    return (start, mid + 1), (mid, end)


def next_window(cursor_ms: int, now_ms: int, max_span_ms: int) -> Window | None:
    """The next window from `cursor_ms` towards `now_ms`, at most `max_span_ms` wide; None when
    the cursor has reached now."""
    if cursor_ms >= now_ms:
        return None
    return cursor_ms, min(now_ms, cursor_ms + max_span_ms)
