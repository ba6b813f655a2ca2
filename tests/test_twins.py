"""Twin frames (`sources.twins`): the second copy of a frame at redundancy 2 is matched before
it is parsed, counted in its own connection's ledger and as a duplicate, and never reaches the
writer; the window is bounded and matches whole texts only."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from collector.emulator import Emulator, EmulatorOptions
from collector.metrics import Metrics
from collector.sources.binance_parse import Anomaly
from collector.sources.twins import FrameTwins, Twin, twin_key
from tests.daemon import (
    count_rows,
    eventually,
    exchange_info_loaded,
    make_config,
    metric_value,
    running,
    subscribed,
)
from tests.factories import liquidation, um_event


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metric_value(metrics.registry, name, **(labels or {}))


def twin(tag: str) -> Twin:
    return Twin(liquidation(len(tag)), [Anomaly("unknown_field", tag)])


def test_each_frame_matches_its_twins_once_then_leaves() -> None:
    frames = FrameTwins(copies=3)
    first = twin("a")
    frames.remember('{"a":1}', first)
    assert frames.take('{"a":2}') is None
    assert frames.take('{"a":1}') is first
    assert len(frames) == 1
    assert frames.take('{"a":1}') is first
    assert len(frames) == 0
    assert frames.take('{"a":1}') is None
    assert frames.twins == 2


def test_two_copies_differing_only_in_the_event_time_are_twins() -> None:
    """E differs between connections (docs/binance.md §1.3); any other difference is another
    frame."""
    frame = '{"stream":"!forceOrder@arr","data":{"e":"forceOrder","E":%d,"o":{"q":"%s","T":5}}}'
    frames = FrameTwins(copies=2)
    first = twin("a")
    frames.remember(twin_key(frame % (1_795_000_000_123, "0.014")), first)
    assert frames.take(twin_key(frame % (1_795_000_000_124, "0.015"))) is None
    assert frames.take(twin_key(frame % (1_795_000_000_124, "0.014"))) is first
    assert twin_key(frame % (7, "1")) == (
        '{"stream":"!forceOrder@arr","data":{"e":"forceOrder",,"o":{"q":"1","T":5}}}'
    )
    assert twin_key('{"e":"x"}') == '{"e":"x"}'


def test_the_window_is_bounded_oldest_first_and_off_at_redundancy_one() -> None:
    frames = FrameTwins(copies=2, size=2)
    for text in ("1", "2", "3"):
        frames.remember(text, twin(text))
    assert len(frames) == 2
    assert frames.take("1") is None
    assert frames.take("3") is not None
    single = FrameTwins(copies=1)
    single.remember("1", twin("1"))
    assert (len(single), single.take("1")) == (0, None)


async def test_at_redundancy_two_each_twin_is_counted_and_not_parsed(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """30 events on two connections: 30 rows, each session's ledger counts all 30, the 30 twins
    are matched before parsing (none reaches the writer or the database's key), and the
    unlisted symbol's anomaly is counted once per copy and dead-lettered once."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, redundancy=2)
        async with running(config) as daemon:
            await subscribed(emu, 2)
            await exchange_info_loaded(daemon)
            await emu.publish(um_event("NEWCOINUSDT", 1_795_000_000_000))
            for i in range(1, 30):
                await emu.publish(um_event(trade_time_ms=1_795_000_000_000 + i))
            await eventually(count_rows(pg), lambda n: n == 30)
            shards = daemon.runtime.shards
            frames = shards[0].frames
            assert frames is not None
            assert all(s.frames is frames for s in shards)
            await eventually(lambda: _twins(frames), lambda n: n == 30)
            assert await daemon.shutdown() == 0
        metrics = daemon.runtime.metrics
        assert sample(metrics, "collector_duplicates_total", {"layer": "memory"}) == 30
        assert sample(metrics, "collector_duplicates_total", {"layer": "database"}) == 0
        assert sample(metrics, "collector_payload_anomalies_total", {"kind": "unknown_symbol"}) == 2
    sessions = await pg.fetch(
        "SELECT events_received, first_event_at, last_event_at FROM ws_sessions"
    )
    assert [s["events_received"] for s in sessions] == [30, 30]
    now = datetime.now(UTC)
    assert all(s["first_event_at"] <= s["last_event_at"] <= now for s in sessions)
    assert await count_rows(pg)() == 30
    flagged = await pg.fetch("SELECT reason, detail, kept FROM dead_letters")
    assert [tuple(f) for f in flagged] == [("unknown_symbol", "UM:NEWCOINUSDT", True)]


async def _twins(frames: FrameTwins) -> int:
    return frames.twins
