"""Whether the database answers, for `collector_database_up` when nothing is being written.

The writer sets the gauge on each commit (1) and each failed write (0), but with no input (no
Binance connection, a quiet feed) it never writes, and the gauge would stay at its initial 0:
the critical CollectorDatabaseDown alert would fire against a healthy database. This component
pings through the pool (`SELECT 1`, bounded by a timeout) every `interval_s`: 0 when the ping
fails, 1 when it succeeds, unless the writer is failing to commit a batch right now (then it
stays 0 until the writer's own next commit sets it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from collector.metrics import Metrics
from collector.retry import sleep_or_stop

log = structlog.get_logger(__name__)


async def ping(pool: asyncpg.Pool, timeout_s: float) -> None:
    """`SELECT 1` through the pool, acquire included, within `timeout_s`; raises on failure."""
    async with asyncio.timeout(timeout_s), pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def run_database_ping(
    pool: asyncpg.Pool,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    interval_s: float,
    timeout_s: float,
    write_failing: Callable[[], bool] = lambda: False,
) -> None:
    """Ping every `interval_s` (the first at once) until `stop`; see the module docstring."""
    answered: bool | None = None
    while not stop.is_set():
        try:
            await ping(pool, timeout_s)
        except Exception as exc:  # whatever the cause, the database did not answer
            metrics.database_pings.labels("failed").inc()
            metrics.db_up.set(0)
            if answered is not False:
                log.warning("database.ping_failed", error=type(exc).__name__,
                            detail=str(exc)[:200], timeout_s=timeout_s)  # fmt: skip
            answered = False
        else:
            metrics.database_pings.labels("ok").inc()
            if not write_failing():
                metrics.db_up.set(1)
            if answered is False:
                log.info("database.ping_recovered")
            answered = True
        await sleep_or_stop(interval_s, stop)
