"""The coverage ledger's SQL (migrations 0002, 0006) against real Postgres: what a session
covers, open or closed, live or left behind by a dead process."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import asyncpg

STREAMS = ["!forceOrder@arr"]


async def add_session(
    pg: asyncpg.Connection,
    opened_ago: timedelta,
    alive_ago: timedelta,
    closed_ago: timedelta | None = None,
) -> None:
    """One ledger row, its times given as intervals before now()."""
    await pg.execute(
        "INSERT INTO ws_sessions (session_id, connection, host, route, url, streams, opened_at, "
        "last_alive_at, closed_at) VALUES ($1, 'fstream/market#0', 'fstream', 'market', 'ws://x', "
        "$2, now() - $3::interval, now() - $4::interval, now() - $5::interval)",
        uuid.uuid4(),
        STREAMS,
        opened_ago,
        alive_ago,
        closed_ago,
    )


async def gaps(pg: asyncpg.Connection, since: timedelta) -> list[tuple[datetime, datetime]]:
    rows = await pg.fetch(
        "SELECT gap_start, gap_end FROM coverage_gaps($1, now() - $2::interval, now())",
        STREAMS,
        since,
    )
    return [(r["gap_start"], r["gap_end"]) for r in rows]


async def test_an_open_live_session_covers_up_to_now(pg: asyncpg.Connection) -> None:
    """A session marked alive 4 s ago (between heartbeats) leaves no gap ending at now()."""
    async with pg.transaction():  # one now() throughout
        await add_session(pg, timedelta(minutes=1), timedelta(seconds=4))
        assert await gaps(pg, timedelta(minutes=1)) == []
        intervals = await pg.fetch(
            "SELECT covered_start, covered_end, now() AS now "
            "FROM coverage_intervals($1, now() - interval '1 minute', now())",
            STREAMS,
        )
        assert [(r["covered_start"], r["covered_end"]) for r in intervals] == [
            (intervals[0]["now"] - timedelta(minutes=1), intervals[0]["now"])
        ]


async def test_a_session_whose_process_died_ends_at_its_last_mark(pg: asyncpg.Connection) -> None:
    """An open session last marked 10 min ago covers only up to that mark; the rest is a gap."""
    async with pg.transaction():
        await add_session(pg, timedelta(hours=1), timedelta(minutes=10))
        now, mark = await pg.fetchrow("SELECT now(), now() - interval '10 minutes'")
        assert await gaps(pg, timedelta(hours=2)) == [
            (now - timedelta(hours=2), now - timedelta(hours=1)),
            (mark, now),
        ]


async def test_liveness_grace_bounds_an_open_session(pg: asyncpg.Connection) -> None:
    """29 s since the mark is still live (covers to now); 31 s is not (covers to the mark)."""
    async with pg.transaction():
        await add_session(pg, timedelta(minutes=5), timedelta(seconds=29))
        assert await gaps(pg, timedelta(minutes=5)) == []
    await pg.execute("DELETE FROM ws_sessions")
    async with pg.transaction():
        await add_session(pg, timedelta(minutes=5), timedelta(seconds=31))
        now, mark = await pg.fetchrow("SELECT now(), now() - interval '31 seconds'")
        assert await gaps(pg, timedelta(minutes=5)) == [(mark, now)]


async def test_a_closed_session_covers_up_to_its_close(pg: asyncpg.Connection) -> None:
    """A closed session ends at closed_at, however recent its last liveness mark."""
    async with pg.transaction():
        await add_session(
            pg, timedelta(minutes=5), timedelta(seconds=2), closed_ago=timedelta(seconds=3)
        )
        now, closed = await pg.fetchrow("SELECT now(), now() - interval '3 seconds'")
        assert await gaps(pg, timedelta(minutes=5)) == [(closed, now)]


async def test_coverage_is_the_union_of_redundant_sessions(pg: asyncpg.Connection) -> None:
    """Two connections of one shard: a gap only where neither covered, not where one did."""
    async with pg.transaction():
        # Replica 0 from -5 min to -2 min, replica 1 from -4 min on (open, live): no gap.
        await add_session(
            pg, timedelta(minutes=5), timedelta(minutes=2), closed_ago=timedelta(minutes=2)
        )
        await add_session(pg, timedelta(minutes=4), timedelta(seconds=2))
        assert await gaps(pg, timedelta(minutes=5)) == []
    await pg.execute("DELETE FROM ws_sessions")
    async with pg.transaction():
        # Replica 0 from -5 min to -3 min, replica 1 from -2 min on: the minute between.
        await add_session(
            pg, timedelta(minutes=5), timedelta(minutes=3), closed_ago=timedelta(minutes=3)
        )
        await add_session(pg, timedelta(minutes=2), timedelta(seconds=2))
        now = await pg.fetchval("SELECT now()")
        assert await gaps(pg, timedelta(minutes=5)) == [
            (now - timedelta(minutes=3), now - timedelta(minutes=2))
        ]
