"""The writer's key window (`sink.dedup.RecentKeys`): exact membership, first in first out."""

from __future__ import annotations

from collector.sink.dedup import RecentKeys


def test_the_window_keeps_the_last_size_keys_oldest_out_first() -> None:
    window = RecentKeys(3)
    assert [window.seen(k) for k in (b"a", b"b", b"a", b"c", b"d")] == [
        False, False, True, False, False,
    ]  # fmt: skip
    assert len(window) == 3
    # b"a" was the oldest (a repeat does not refresh it): gone; b"b", b"c", b"d" remain.
    assert [window.seen(k) for k in (b"b", b"c", b"d")] == [True, True, True]
    assert window.seen(b"a") is False
    assert window.seen(b"b") is False  # pushed out by b"a"


def test_a_window_of_zero_remembers_nothing() -> None:
    window = RecentKeys(0)
    assert [window.seen(b"a"), window.seen(b"a")] == [False, False]
    assert len(window) == 0
