"""Supervisor components for the configured accounts: one per account, so an account whose
key fails (or whose poller crashes and is restarted) never stops the others or the streams.

Wiring: `supervisor.run(config, extra_components=account_components)`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import asyncpg
import structlog

from collector.config import AccountConfig, Config
from collector.exceptions import ConfigError
from collector.metrics import Metrics
from collector.rest.budget import Budget, pool_family
from collector.rest.client import Credentials, RestClient
from collector.rest.clock import ServerClocks
from collector.rest.endpoints import order_lookup_for, scopes_for
from collector.rest.pollers import AccountState, PollerContext, ScopePoller
from collector.rest.signing import make_signer

if TYPE_CHECKING:
    from collector.supervisor import Component, Runtime

log = structlog.get_logger(__name__)


async def run_account(
    account: AccountConfig,
    config: Config,
    pool: asyncpg.Pool,
    metrics: Metrics,
    budget: Budget,
    clocks: ServerClocks,
    stop: asyncio.Event,
) -> None:
    """Poll every scope of `account` until `stop`. A key that cannot be loaded marks the
    account unhealthy and idles it (restarting the process after fixing it is the cure)."""
    state = AccountState(account.name, metrics)
    metrics.account_healthy.labels(account.name).set(1)
    try:
        signer = make_signer(account.key_type, account.api_secret, account.name)
    except ConfigError as exc:
        state.auth_failed("key")
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
) -> dict[str, Component]:
    """One component per enabled account, sharing one budget and one set of server clocks.

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
    components: dict[str, Component] = {}
    for account in config.accounts:
        if not account.enabled:
            continue
        components[f"account:{account.name}"] = functools.partial(
            run_account, account, config, pool, metrics, budget, clocks
        )
    return components


def account_components(runtime: Runtime) -> dict[str, Component]:
    """The `extra_components` hook for `supervisor.run`."""
    return build_account_components(runtime.config, runtime.pool, runtime.metrics)
