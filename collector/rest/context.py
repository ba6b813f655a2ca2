"""What every scope poller of one account shares (`PollerContext`), and the one way they all
use the database: waiting out an outage with what was fetched kept in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import structlog

from collector.config import AccountConfig, RestConfig
from collector.metrics import Metrics
from collector.rest.client import Credentials, RestClient, RestStopped
from collector.rest.endpoints import OrderLookupSpec
from collector.rest.state import AccountState
from collector.retry import is_transient, poll_database_retry, sleep_or_stop

T = TypeVar("T")


@dataclass(slots=True)
class PollerContext:
    """What every scope poller of one account shares."""

    account: AccountConfig
    credentials: Credentials
    client: RestClient
    pool: asyncpg.Pool
    metrics: Metrics
    rest: RestConfig
    state: AccountState
    lookup: OrderLookupSpec

    async def database(
        self,
        operation: Callable[[], Awaitable[T]],
        stop: asyncio.Event,
        log: structlog.typing.FilteringBoundLogger,
    ) -> T:
        """Run a database operation, waiting out a database that is down or restarting
        (`retry.poll_database_retry`); other errors propagate, and `stop` raises RestStopped."""
        policy = poll_database_retry(self.rest.retry_initial_s, self.rest.retry_max_s)
        backoff = policy.backoff()
        while True:
            try:
                result = await operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                log.warning("account.database_unavailable", error=type(exc).__name__,
                            detail=str(exc)[:200], retry_in_s=round(delay, 3))  # fmt: skip
                if await sleep_or_stop(delay, stop):
                    raise RestStopped("database") from None
                continue
            if backoff.attempt:
                log.info("account.database_available")
            return result
