"""Keeps the other venues' rollups (`venue_liquidations_1m`/`_1h`/`_1d`, migration 0014) current.

The same scheme as Binance's (`collector.db.rollup`): triggers mark every minute whose
`venue_liquidations` rows change, and this task recomputes the marked minutes on a schedule
through `venue_rollup_refresh_dirty()`. It is a separate task with its own SQL functions and
advisory lock, so Binance's refresh and this one never wait on each other; readers
(`venue_liquidation_totals()`, `liquidation_totals_by_venue()`) stay exact while it lags.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg

from collector.db.rollup import run_refresh_loop

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
    """Refresh the other venues' marked minutes every `interval_s` until `stop` is set (the
    loop is Binance's: `rollup.run_refresh_loop`)."""
    await run_refresh_loop(
        "venue_rollup", lambda p, n: refresh_venue_pending(p, max_minutes=n), pool, stop,
        interval_s=interval_s, max_minutes=max_minutes,
    )  # fmt: skip
