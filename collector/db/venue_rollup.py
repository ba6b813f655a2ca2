"""Keeps the other venues' rollups (`venue_liquidations_1m`/`_1h`/`_1d`, migration 0014) current.

The same scheme as Binance's (`collector.db.rollup`): triggers mark every minute whose
`venue_liquidations` rows change, and this task recomputes the marked minutes on a schedule
through `venue_rollup_refresh_dirty()`. It is a separate task with its own SQL functions and
advisory lock, so Binance's refresh and this one never wait on each other; readers
(`venue_liquidation_totals()`, `liquidation_totals_by_venue()`) stay exact while it lags.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
import structlog

from collector.retry import is_transient, rollup_retry, sleep_or_stop

log = structlog.get_logger(__name__)

DEFAULT_MAX_MINUTES = 10_000


async def refresh_venue_pending(
    pool: asyncpg.Pool, *, max_minutes: int = DEFAULT_MAX_MINUTES
) -> int | None:
    """Recompute up to `max_minutes` marked minutes, oldest first, in one transaction.

    Returns the minutes recomputed (0: nothing marked), or None while another session runs a pass.
    """
    async with pool.acquire() as conn:
        count: int | None = await conn.fetchval(
            "SELECT venue_rollup_refresh_dirty($1)", max_minutes
        )
    return count


async def venue_pending_minutes(pool: asyncpg.Pool) -> int:
    """How many minutes are marked and not yet recomputed."""
    async with pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT count(DISTINCT bucket) FROM venue_rollup_dirty")
    return count


async def rebuild_venues(pool: asyncpg.Pool, from_at: datetime, to_at: datetime) -> int:
    """Recompute every minute in [from_at, to_at) from `venue_liquidations`; return the minutes."""
    async with pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT venue_rollup_refresh($1, $2)", from_at, to_at)
    return count


async def run_venue_rollups(
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    *,
    interval_s: float = 30.0,
    max_minutes: int = DEFAULT_MAX_MINUTES,
) -> None:
    """Refresh marked minutes every `interval_s` until `stop` is set (a full pass: at once again).

    A transient database failure is retried with backoff; anything else propagates.
    """
    backoff = rollup_retry(interval_s).backoff()
    while not stop.is_set():
        started = time.monotonic()
        try:
            count = await refresh_venue_pending(pool, max_minutes=max_minutes)
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = backoff.next_delay()
            log.warning("venue_rollup.refresh_failed", error=repr(exc), retry_in_s=round(delay, 2))
            await sleep_or_stop(delay, stop)
            continue
        backoff.reset()
        seconds = round(time.monotonic() - started, 3)
        if count == max_minutes:
            log.info("venue_rollup.backlog", minutes=count, seconds=seconds)
            await asyncio.sleep(0)
            continue
        if count:
            log.debug("venue_rollup.refreshed", minutes=count, seconds=seconds)
        await sleep_or_stop(interval_s, stop)
