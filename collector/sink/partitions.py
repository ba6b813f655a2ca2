"""Monthly partitions of `market_liquidations` and `venue_liquidations`, created ahead of the
rows that need them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# How often a writer makes sure the partitions exist: a month starts at most every 28 days, and
# the partitions are made two months ahead, so a check every six hours is never late.
CHECK_EVERY_S = 6 * 3600.0


async def ensure_partitions(conn: asyncpg.Connection, now: datetime | None = None) -> int:
    """Create the monthly partitions from last month to two months ahead; return how many."""
    start = (now or datetime.now(UTC)).replace(day=1)
    created: int = await conn.fetchval(
        "SELECT collector_ensure_monthly_partitions('market_liquidations', "
        "$1::timestamptz - interval '1 month', 4)",
        start,
    )
    if created:
        log.info("writer.partitions_created", count=created)
    return created


async def ensure_venue_partitions(conn: asyncpg.Connection, now: datetime | None = None) -> int:
    """`ensure_partitions` for other venues' rows (`venue_liquidations`); return how many."""
    start = (now or datetime.now(UTC)).replace(day=1)
    created: int = await conn.fetchval(
        "SELECT collector_ensure_monthly_partitions('venue_liquidations', "
        "$1::timestamptz - interval '1 month', 4)",
        start,
    )
    if created:
        log.info("writer.partitions_created", table="venue_liquidations", count=created)
    return created


class PartitionCheck:
    """`ensure_partitions` at most every `CHECK_EVERY_S`, shared by a writer's lanes; a check
    that fails is due again at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._checked_at = -CHECK_EVERY_S

    async def run_if_due(self, conn: asyncpg.Connection) -> None:
        """Check on `conn` when the last check is older than `CHECK_EVERY_S`."""
        now = self._clock()
        if now - self._checked_at <= CHECK_EVERY_S:
            return
        self._checked_at = now
        try:
            await ensure_partitions(conn)
            await ensure_venue_partitions(conn)
        except BaseException:
            self._checked_at = -CHECK_EVERY_S
            raise
