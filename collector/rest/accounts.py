"""Pollers for the configured accounts, one task per account, so an account whose key fails
(or whose poller crashes and is restarted) never stops the others or the streams.

`build_account_components` gives the supervisor one `AccountTask` per enabled account, which
it runs (and restarts) beside the streams.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
import structlog

from collector.config import AccountConfig, Config
from collector.exceptions import ConfigError
from collector.metrics import Metrics
from collector.rest.budget import Budget, pool_family
from collector.rest.client import Credentials, RestClient
from collector.rest.clock import ServerClocks
from collector.rest.context import PollerContext
from collector.rest.endpoints import order_lookup_for, scopes_for
from collector.rest.pollers import ScopePoller
from collector.rest.signing import make_signer
from collector.rest.state import AccountState, Health

log = structlog.get_logger(__name__)

# One account's pollers, run until the stop event is set (a supervisor component).
AccountTask = Callable[[asyncio.Event], Awaitable[None]]


async def run_account(
    account: AccountConfig,
    config: Config,
    pool: asyncpg.Pool,
    metrics: Metrics,
    budget: Budget,
    clocks: ServerClocks,
    stop: asyncio.Event,
) -> None:
    """Poll every scope of `account` until `stop`. A key that cannot be loaded marks every
    endpoint of the account `credentials_rejected` and idles it (restarting the process after
    fixing it is the cure)."""
    state = AccountState(account.name, metrics)
    try:
        signer = make_signer(account.key_type, account.api_secret, account.name)
    except ConfigError as exc:
        for scope in scopes_for(account):
            state.set(scope.spec.path, scope.name, Health.CREDENTIALS_REJECTED)
        # No traceback: it could quote the key material.
        log.error("account.key_unusable", account=account.name, problem=exc.problems[0])  # noqa: TRY400
        await stop.wait()
        return
    credentials = Credentials(account.api_key.reveal(), signer)
    async with aiohttp.ClientSession() as session:
        client = RestClient(session, config.binance, config.rest, budget, clocks, metrics)
        ctx = PollerContext(
            account, credentials, client, pool, metrics, config.rest, state,
            order_lookup_for(account),
        )  # fmt: skip
        async with asyncio.TaskGroup() as group:
            for scope in scopes_for(account):
                poller = ScopePoller(ctx, scope)
                group.create_task(poller.run(stop), name=f"{account.name}:{poller.label}")


def build_account_components(
    config: Config,
    pool: asyncpg.Pool,
    metrics: Metrics,
    *,
    clock: Callable[[], float] = time.time,
) -> dict[str, AccountTask]:
    """One task per enabled account, sharing one budget and one set of server clocks.

    `clock` is this host's time in Unix seconds (tests share theirs with an emulator); the
    budget counts each pool's minutes on Binance's time, this clock plus the measured offset.
    """
    clocks = ServerClocks(metrics, config.rest.time_sync_interval_s, wall_ms=lambda: clock() * 1000)
    budget = Budget(
        config.rest.weight_share,
        metrics,
        clock=clock,
        offset_s=lambda name: clocks.offset_ms(pool_family(name)) / 1000,
    )
    components: dict[str, AccountTask] = {}
    for account in config.accounts:
        if not account.enabled:
            continue
        components[f"account:{account.name}"] = functools.partial(
            run_account, account, config, pool, metrics, budget, clocks
        )
    return components
