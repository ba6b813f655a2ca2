"""The test suite's shared helpers: the real daemon run in-process against the emulator and a
real database (`make_config`, `running`), waiting for a condition with a deadline
(`eventually`), and reading a metric through prometheus_client's public API (`metric_value`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, overload

import asyncpg
from prometheus_client import CollectorRegistry

from collector.config import (
    BinanceConfig,
    Config,
    DatabaseConfig,
    HttpConfig,
    Secret,
    VenuesConfig,
    WriterConfig,
)
from collector.emulator import Emulator
from collector.runtime import Component, Runtime
from collector.supervisor import run

T = TypeVar("T")


def make_config(emulator: Emulator, dsn: str, **binance: Any) -> Config:
    """A config pointing at `emulator` and `dsn`, with short delays for tests."""
    b = BinanceConfig(
        fstream_url=emulator.fstream_url,
        dstream_url=emulator.dstream_url,
        fapi_url=emulator.fapi_url,
        dapi_url=emulator.dapi_url,
        papi_url=emulator.papi_url,
        sapi_url=emulator.sapi_url,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
        heartbeat_s=0.2,
        control_messages_per_s=9.0,
        open_timeout_s=3.0,
        # One connection per shard unless a test asks for more: most tests are about what one
        # connection does (the daemon's default is 2; tests/test_ws_redundancy.py uses it).
        redundancy=1,
    )
    return Config(
        database=DatabaseConfig(dsn=Secret(dsn), migrate_on_start=False),
        binance=dataclasses.replace(b, **binance),
        # The emulator is Binance's: Bybit and OKX stay off, so no test reaches a real exchange.
        venues=VenuesConfig(enabled=("binance",)),
        writer=WriterConfig(
            batch_max_age_s=0.01,
            retry_initial_s=0.05,
            retry_max_s=0.2,
            spill_dir=tempfile.mkdtemp(prefix="collector-spill-"),
        ),
        http=HttpConfig(port=0),
        shutdown_grace_s=10.0,
    )


@dataclasses.dataclass
class Daemon:
    """A running daemon: its runtime, its stop event and its task (exit code)."""

    runtime: Runtime
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def shutdown(self) -> int:
        self.stop.set()
        return await asyncio.wait_for(self.task, 20)


@contextlib.asynccontextmanager
async def running(
    config: Config,
    extra_components: Callable[[Runtime], dict[str, Component]] | None = None,
) -> AsyncIterator[Daemon]:
    """Start the daemon; stop it (and check it drained) on exit."""
    stop = asyncio.Event()
    ready: asyncio.Future[Runtime] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run(config, stop=stop, on_ready=ready.set_result, extra_components=extra_components)
    )
    done, _ = await asyncio.wait({ready, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        raise AssertionError(f"daemon exited early: {task.result()}")
    daemon = Daemon(ready.result(), stop, task)
    try:
        yield daemon
    finally:
        if not task.done():
            await daemon.shutdown()


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    what: str = ...,
    *,
    interval_s: float = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    what: str = ...,
    *,
    interval_s: float = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    until: Callable[[Any], object] = bool,
    timeout: float = 10.0,
    what: str = "condition",
    *,
    interval_s: float = 0.02,
) -> Any:
    """Re-run `probe` (a coroutine function or a plain one) every `interval_s` until
    `until(result)` holds (by default: the result is true); fail after `timeout` seconds,
    naming `what` and the last value. For state that raises no event to await: a database
    row, a log line, a metric."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval_s)


def metric_value(registry: CollectorRegistry, name: str, /, **labels: str) -> float:
    """The sample `name` with exactly `labels` (`collector_rows_inserted_total`, table=...),
    read through `registry.get_sample_value`; 0.0 while the series does not exist (a counter
    that has not counted yet)."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def count_rows(
    conn: asyncpg.Connection, table: str = "market_liquidations"
) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))

    return probe


async def subscribed(emulator: Emulator, n: int = 1, *, host: str | None = None) -> None:
    """Wait until `n` connections are open (on `host`) and every open one has its streams."""
    await emulator.wait_for_connections(n, host=host)
    await emulator.wait_until(lambda: all(c.streams for c in emulator.connections))


async def exchange_info_loaded(daemon: Daemon) -> None:
    """Wait until both markets' exchangeInfo reached the daemon's symbol catalog."""
    catalog = daemon.runtime.catalog
    await eventually(lambda: asyncio.sleep(0, catalog.version), lambda v: v >= 2)
