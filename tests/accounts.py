"""Account components run by tests on a test's clock, and what they stored (plain helpers, no
fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

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


def account_state(metrics: Metrics, account: str, endpoint: str) -> str | None:
    """The state `collector_account_state` shows for one account endpoint: the one state at 1
    (the others at 0), or None while it has no series."""
    values = {
        state: metrics.registry.get_sample_value(
            "collector_account_state", {"account": account, "endpoint": endpoint, "state": state}
        )
        for state in ("ok", "failing", "credentials_rejected")
    }
    if all(v is None for v in values.values()):
        return None
    on = [state for state, v in values.items() if v == 1]
    assert len(on) == 1, values
    assert sum(v or 0 for v in values.values()) == 1, values
    return on[0]


async def stored_keys(pg: asyncpg.Connection) -> set[tuple[Any, ...]]:
    """Every stored account force order as (account, product, symbol, order_id,
    auto_close_type, endpoint)."""
    rows = await pg.fetch("SELECT account, product, symbol, order_id, auto_close_type, endpoint "
                          "FROM account_force_orders")  # fmt: skip
    return {tuple(r) for r in rows}


async def settled(pg: asyncpg.Connection, scopes: int) -> bool:
    """Whether `scopes` scopes finished their backfill and no margin order awaits enrichment."""
    done = await pg.fetchval("SELECT count(*) FROM account_poll_checkpoints "
                             "WHERE backfill_complete")  # fmt: skip
    pending = await pg.fetchval(
        "SELECT count(*) FROM account_force_orders WHERE product = 'margin' "
        "AND enrichment IS NULL AND enrichment_error IS NULL"
    )
    return bool(done == scopes and pending == 0)
