"""Keeps the dashboards' rollups (`market_liquidations_1m`/`_1h`, migration 0004) current.

The database marks every minute whose base rows change (triggers, in the writer's own
transaction); this task recomputes the marked minutes on a schedule. It needs no watermark or
overlap window: late rows and COIN-M notional filled in later by exchangeInfo mark their minutes
like any other change. Readers stay exact while it lags, since `liquidation_totals()` recomputes
still-marked minutes from the base table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
import structlog

from collector.retry import is_transient, rollup_retry, sleep_or_stop

log = structlog.get_logger(__name__)

DEFAULT_MAX_MINUTES = 10_000


async def refresh_pending(
    pool: asyncpg.Pool, *, max_minutes: int = DEFAULT_MAX_MINUTES
) -> int | None:
    """Recompute up to `max_minutes` marked minutes, oldest first, in one transaction.

    Returns how many minutes were recomputed (0: nothing was marked), or None when another
    session (a second collector) is running a pass right now, which is not an error.
    """
    async with pool.acquire() as conn:
        count: int | None = await conn.fetchval(
            "SELECT refresh_market_rollup_dirty($1)", max_minutes
        )
    return count


async def pending_minutes(pool: asyncpg.Pool) -> int:
    """How many minutes are marked and not yet recomputed (the rollup task's backlog)."""
    async with pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT count(DISTINCT bucket) FROM market_rollup_dirty")
    return count


async def rebuild(pool: asyncpg.Pool, from_at: datetime, to_at: datetime) -> int:
    """Recompute every minute in [from_at, to_at) from the base table; return the minutes seen.

    For repairs (say, after rows were loaded with triggers disabled). It runs in one
    transaction, a UTC day at a time: each level's buckets of the day deleted and inserted from
    one GROUP BY (migration 0013); the rollup task's passes skip while it runs.
    """
    async with pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT refresh_market_rollup($1, $2)", from_at, to_at)
    return count


async def rebuild_all(pool: asyncpg.Pool) -> int:
    """Rebuild every rollup from the base table (the days its rows span; rollup rows outside
    them removed); return the minutes recomputed."""
    async with pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT rebuild_market_rollup()")
    return count


# One pass over marked minutes: (pool, max_minutes) -> minutes recomputed (None: another
# session runs a pass).
Refresh = Callable[[asyncpg.Pool, int], Awaitable[int | None]]


async def run_rollups(
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    *,
    interval_s: float = 30.0,
    max_minutes: int = DEFAULT_MAX_MINUTES,
) -> None:
    """Refresh Binance's marked minutes every `interval_s` until `stop` is set (see
    `run_refresh_loop`)."""
    await run_refresh_loop(
        "rollup", lambda p, n: refresh_pending(p, max_minutes=n), pool, stop,
        interval_s=interval_s, max_minutes=max_minutes,
    )  # fmt: skip


async def run_refresh_loop(
    name: str,
    refresh: Refresh,
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    *,
    interval_s: float,
    max_minutes: int,
) -> None:
    """Run `refresh(pool, max_minutes)` every `interval_s` until `stop` is set; its log events
    are named `<name>.*`. Binance's rollups and the other venues' (`venue_rollup`) share it.

    A full pass (`max_minutes` recomputed) means a backlog, so the next pass starts at once.
    A transient database failure (connection loss, restart) is retried with backoff inside the
    loop; anything else (a missing migration, a bug) propagates to the supervisor.
    """
    backoff = rollup_retry(interval_s).backoff()
    while not stop.is_set():
        started = time.monotonic()
        try:
            count = await refresh(pool, max_minutes)
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = backoff.next_delay()
            log.warning(f"{name}.refresh_failed", error=repr(exc), retry_in_s=round(delay, 2))
            await sleep_or_stop(delay, stop)
            continue
        backoff.reset()
        seconds = round(time.monotonic() - started, 3)
        if count == max_minutes:
            log.info(f"{name}.backlog", minutes=count, seconds=seconds)
            await asyncio.sleep(0)  # let the stop request and other tasks in between passes
            continue
        if count:
            log.debug(f"{name}.refreshed", minutes=count, seconds=seconds)
        await sleep_or_stop(interval_s, stop)
