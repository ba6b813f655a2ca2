"""Account pollers against the emulator's documented limits: backfill time, 429s, clock jumps.

Prints, for this machine and the collector's budget:
  1. how long a 90-day backfill of a classic and a Portfolio Margin account takes at the default
     weight share, and the weight it spent, per limit pool;
  2. 429s and 418s over a 10-minute run against a limit of 600/min announced by exchangeInfo,
     with one process at weight_share 1.0, then two processes at 0.5 sharing the limit;
  3. -1021 rejections and missed rows after Binance's clock jumps 8 s ahead.

The emulator and the collector share one clock that runs `--speed` times faster than real time,
so ten minutes of Binance's minute windows pass in a minute; every figure is in that clock's
time. Figures, not assertions: this is not a test. Uses $BENCH_DSN (a server where it may create
and drop a database), default postgresql://postgres@127.0.0.1:5432/postgres.

    .venv/bin/python bench/rest_limits.py [--speed 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client import CollectorRegistry

from collector.config import AccountConfig, BinanceConfig, Config, RestConfig, Secret
from collector.db.migrate import migrate
from collector.emulator import core
from collector.emulator.account_rest import AccountOptions, Product, account_api, account_extension
from collector.metrics import Metrics
from collector.rest.accounts import build_account_components

DAY_MS = 86_400_000
# Documented weights (docs/binance.md §3.1) of what the pollers send, by path.
WEIGHTS = {
    "/fapi/v1/forceOrders": 50,
    "/dapi/v1/forceOrders": 50,
    "/papi/v1/um/forceOrders": 50,
    "/papi/v1/cm/forceOrders": 50,
    "/papi/v1/margin/order": 10,
    "/sapi/v1/margin/order": 10,
}
POOLS = {"/fapi/": "fapi+dapi", "/dapi/": "fapi+dapi", "/papi/": "papi"}


class FastClock:
    """Unix seconds from now on, running `speed` times faster than real time."""

    def __init__(self, speed: float) -> None:
        self._start, self._t0, self._speed = time.time(), time.monotonic(), speed

    def __call__(self) -> float:
        return self._start + (time.monotonic() - self._t0) * self._speed

    def ms(self) -> int:
        return int(self() * 1000)


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A migrated database, dropped afterwards."""
    name = f"bench_rest_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    try:
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def accounts(api: Any, now_ms: int, days: int) -> tuple[AccountConfig, ...]:
    """A classic and a PM account, each with `days` of history on every product."""
    api.add_account("classic", "classic", "CLASSICKEY", "classicsecret0123456789")
    api.add_account("pm", "portfolio_margin", "PMKEY", "pmsecret0123456789")
    start = now_ms - (days - 1) * DAY_MS
    for seed, (account, product) in enumerate(
        [
            ("classic", Product.UM),
            ("classic", Product.CM),
            ("classic", Product.MARGIN_CLASSIC),
            ("pm", Product.UM),
            ("pm", Product.CM),
            ("pm", Product.MARGIN_PM),
        ]
    ):
        api.seed_history(account, product, 300, start, now_ms - 60_000, seed)
    return (
        AccountConfig("classic", "classic", Secret("CLASSICKEY"),
                      Secret("classicsecret0123456789"), backfill_days=days),
        AccountConfig("pm", "portfolio_margin", Secret("PMKEY"), Secret("pmsecret0123456789"),
                      backfill_days=days),
    )  # fmt: skip


def config_for(emu: core.Emulator, accts: tuple[AccountConfig, ...], **rest: Any) -> Config:
    binance = BinanceConfig(fapi_url=emu.fapi_url, dapi_url=emu.dapi_url,
                            papi_url=emu.papi_url, sapi_url=emu.sapi_url)  # fmt: skip
    # recvWindow at its maximum: at --speed 10, 5 s of this clock are only 0.5 s of real time.
    settings = {"recv_window_ms": 60_000, "enrich_per_poll": 500} | rest
    return Config(binance=binance, rest=RestConfig(**settings), accounts=accts)


class Pollers:
    """One collector process's account components (its own budget), running until `stop`."""

    def __init__(self, config: Config, pool: asyncpg.Pool, clock: FastClock) -> None:
        self._stop = asyncio.Event()
        components = build_account_components(
            config, pool, Metrics(CollectorRegistry()), clock=clock
        )
        self._tasks = [asyncio.ensure_future(c(self._stop)) for c in components.values()]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def wait_for(pool: asyncpg.Pool, scopes: int, timeout_s: float) -> bool:
    async with asyncio.timeout(timeout_s):
        while True:
            done = await pool.fetchval(
                "SELECT count(*) FROM account_poll_checkpoints WHERE backfill_complete"
            )
            if done == scopes:
                return True
            await asyncio.sleep(0.1)


def spent(api: Any) -> dict[str, int]:
    """Weight spent per pool, from the emulator's request counts and documented weights."""
    out: dict[str, int] = {}
    for path, n in api.stats.requests.items():
        pool = next((p for prefix, p in POOLS.items() if path.startswith(prefix)), "sapi")
        out[pool] = out.get(pool, 0) + n * WEIGHTS.get(path, 1)
    return out


async def backfill(admin_dsn: str, speed: float) -> None:
    clock = FastClock(speed)
    options = AccountOptions(clock=clock.ms, signed_log_size=1)
    async with core.Emulator(
        core.EmulatorOptions(), extensions=[account_extension(options)]
    ) as emu:
        api = account_api(emu)
        accts = accounts(api, clock.ms(), 90)
        async with fresh_database(admin_dsn) as dsn:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
            started = clock()
            pollers = Pollers(config_for(emu, accts, poll_interval_s=60 / speed), pool, clock)
            try:
                # classic: 2 futures x 2 types + cross margin; PM: the same.
                await wait_for(pool, 5 + 5, 3600 / speed)
            finally:
                await pollers.stop()
            took = clock() - started
            rows = await pool.fetchval("SELECT count(*) FROM account_force_orders")
            await pool.close()
    print(f"90-day backfill, classic + PM, weight_share 0.5: {took / 60:.1f} min, {rows} rows, "
          f"weight {spent(api)}, 429s {api.stats.rate_limited_429}, "
          f"418s {api.stats.banned_418}")  # fmt: skip


async def limits(admin_dsn: str, speed: float, processes: int) -> None:
    clock = FastClock(speed)
    options = AccountOptions(clock=clock.ms, signed_log_size=1)
    market = core.EmulatorOptions(weight_limit_1m=600)
    async with core.Emulator(market, extensions=[account_extension(options)]) as emu:
        api = account_api(emu)
        accts = accounts(api, clock.ms(), 30)[:1]
        async with fresh_database(admin_dsn) as dsn:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
            share = 1.0 / processes
            config = config_for(emu, accts, poll_interval_s=1.0, weight_share=share)
            running = [Pollers(config, pool, clock) for _ in range(processes)]
            await asyncio.sleep(600 / speed)  # ten minutes of the shared clock
            for pollers in running:
                await pollers.stop()
            await pool.close()
    print(f"10 min against 600/min, {processes} process(es) at weight_share {share}: "
          f"429s {api.stats.rate_limited_429}, 418s {api.stats.banned_418}, highest weight "
          f"used in a minute {api.stats.max_used_weight['futures']}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=10.0)
    args = parser.parse_args()
    admin = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    await backfill(admin, args.speed)
    await limits(admin, args.speed, 1)
    await limits(admin, args.speed, 2)


if __name__ == "__main__":
    asyncio.run(main())
