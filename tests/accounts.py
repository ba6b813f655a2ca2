"""Account components run by tests on a test's clock (plain helpers, no fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from collector.config import Config
from collector.metrics import Metrics
from collector.rest.accounts import build_account_components
from tests.clocks import SharedClock


@contextlib.asynccontextmanager
async def running_accounts(
    config: Config, pool: asyncpg.Pool, metrics: Metrics, clock: SharedClock
) -> AsyncIterator[None]:
    """The account components of `config`, whose weight minutes and wall clock are `clock`,
    stopped on leaving whatever happened inside (a failed wait leaks no session)."""
    stop = asyncio.Event()
    components = build_account_components(config, pool, metrics, clock=clock)
    tasks = [asyncio.create_task(component(stop)) for component in components.values()]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
