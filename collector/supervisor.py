"""The daemon's lifecycle, top to bottom, in four phases (`run`):

1. start-up: HTTP port bound -> database -> migrations -> pool -> HTTP served (its `/readyz`
   checks are `collector.readiness`) -> writer;
2. replay: what a previous run spilled is committed before anything new (a stop ends it);
3. run: the sources, each supervised, until SIGTERM/SIGINT or a fatal error;
4. drain: stop the sources (their sessions close in the ledger; the writer's `put` no longer
   waits, so they read up to their UNSUBSCRIBE replies), flush the writer within the grace
   period, spill what it could not commit, log where every item went (committed / spilled /
   lost), close HTTP and the database. Exit 0 only when nothing was lost.

Every task has an owner: the phase that awaits it, and the exit stack that cancels and awaits
it if a phase fails. A component that fails unexpectedly is restarted with backoff; a fatal
error (bad config, failed migration, a writer bug) stops the process with a non-zero exit
(`collector.retry` says which errors are which).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from collector.components import components as build_components
from collector.config import Config, redact_dsn
from collector.db.connection import connect, database_dsn, wait_for_database
from collector.db.migrate import migrate
from collector.health import Health, listen, serve_http
from collector.metrics import Metrics
from collector.model import MarketLiquidation
from collector.out.api import Api
from collector.out.feed import Feed
from collector.readiness import add_readiness
from collector.retry import COMPONENT_RESTART, FATAL_ERRORS, sleep_or_stop
from collector.runtime import Component, Runtime
from collector.sink import spill
from collector.sink.writer import Writer
from collector.sources.binance_parse import reparse_frame
from collector.sources.catalog import SymbolCatalog

log = structlog.get_logger(__name__)

# However late the sources stop, the writer gets at least this long to flush.
_MIN_DRAIN_S = 0.5


async def supervise(
    name: str,
    component: Component,
    stop: asyncio.Event,
    metrics: Metrics,
    *,
    initial_backoff_s: float = COMPONENT_RESTART.initial_s,
) -> None:
    """Run `component(stop)` until `stop`; restart it with backoff if it fails unexpectedly
    (`retry.COMPONENT_RESTART`; `initial_backoff_s` for tests).

    Fatal errors (`retry.FATAL_ERRORS`) propagate: the process exits non-zero.
    """
    policy = dataclasses.replace(COMPONENT_RESTART, initial_s=initial_backoff_s)
    backoff = policy.backoff()
    while not stop.is_set():
        started = time.monotonic()
        try:
            await component(stop)
        except FATAL_ERRORS:
            raise
        except Exception:
            metrics.component_restarts.labels(name).inc()
            if policy.healthy_after_s and time.monotonic() - started > policy.healthy_after_s:
                backoff.reset()
            delay = backoff.next_delay()
            log.exception("supervisor.component_failed", component=name, restart_in_s=delay)
            await sleep_or_stop(delay, stop)
            continue
        if not stop.is_set():  # a component returned on its own: restart it after a pause
            await sleep_or_stop(backoff.next_delay(), stop)


@dataclass(slots=True)
class _Lifecycle:
    """What the phases of one `run` share: the runtime, the writer's task, the stop request,
    and the fatal errors met so far (any of them makes the exit code 1)."""

    runtime: Runtime
    writer_task: asyncio.Task[None]
    stop: asyncio.Event
    fatal: list[BaseException]

    def exit_code(self, *, lost: int = 0) -> int:
        """1 when a fatal error was met (each is logged) or an item was lost, else 0."""
        for exc in self.fatal:
            log.error("supervisor.fatal", error=str(exc))
        return 1 if self.fatal or lost else 0


async def run(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Runtime], None] | None = None,
    extra_components: Callable[[Runtime], dict[str, Component]] | None = None,
) -> int:
    """Run the daemon until `stop` (or a signal); return the process exit code."""
    stop = stop or asyncio.Event()
    async with AsyncExitStack() as stack:
        life = await _start_up(config, stack, stop)
        if life is None:  # stopped while waiting for the database
            return 0
        if not await _replay(life):
            # Stopped (or the writer failed) mid-replay: nothing was received yet, and what the
            # writer holds came from spill files that stay on disk, so nothing is spilled again.
            await _cancel(life.writer_task)
            return life.exit_code()
        components = build_components(life.runtime, extra_components)
        log.info("supervisor.started", http_port=life.runtime.http_port,
                 components=sorted(components), database=redact_dsn(life.runtime.dsn))  # fmt: skip
        if on_ready is not None:
            on_ready(life.runtime)
        sources = _owned(stack, _run_components(components, life), "sources")
        await _run_until_stop(life, sources)
        return await _drain(life, sources)
    return 0  # pragma: no cover  (mypy: the stack above always returns)


async def _start_up(
    config: Config, stack: AsyncExitStack, stop: asyncio.Event
) -> _Lifecycle | None:
    """Phase 1: port, database, migrations, pool, HTTP, writer; None when `stop` came while
    the database was awaited. Everything started is closed by `stack`, in reverse order."""
    # Bound first, so a port in use stops the start before anything connects or migrates.
    sockets = listen(config.http.host, config.http.port)
    for sock in sockets:
        stack.callback(sock.close)
    dsn = await stack.enter_async_context(database_dsn(config))
    if not await wait_for_database(dsn, config, stop):
        return None
    if config.database.migrate_on_start:
        conn = await connect(dsn, config)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(
        dsn, min_size=config.database.pool_min_size, max_size=config.database.pool_max_size,
        timeout=config.database.connect_timeout_s,
    )  # fmt: skip
    stack.push_async_callback(pool.close)
    metrics = Metrics()
    health = Health()
    feed = Feed(pool, lambda: connect(dsn, config), config.feed, metrics)
    api = Api(config, feed, pool, metrics)
    runner = await stack.enter_async_context(
        serve_http(config.http.host, config.http.port, health, metrics, sockets=sockets,
                   routes=api.add_routes)
    )  # fmt: skip
    port = int(runner.addresses[0][1])
    writer = Writer(lambda: connect(dsn, config), config.writer, metrics)
    runtime = Runtime(config, dsn, pool, metrics, health, writer, SymbolCatalog(), port)
    if config.http.api_enabled or config.alerts or config.nats.enabled:
        runtime.feed = feed
    # Durable consumers of the committed rows (collector.out.cursor), each imported only when
    # configured (nats-py alone is 3 MB resident).
    if config.alerts:
        from collector.out.alerts import Alerts  # noqa: PLC0415

        runtime.alerts = Alerts(config.alerts, feed, config.feed, metrics)
    if config.nats.enabled:
        from collector.out.broker import Publisher  # noqa: PLC0415

        runtime.nats = Publisher(config.nats, feed, metrics)
    add_readiness(
        health, pool=pool, writer=writer, shards=runtime.shards, metrics=metrics,
        max_event_age_s=config.http.max_event_age_s,
        binance="binance" in config.venues.enabled,
        venues=bool({"bybit", "okx"} & set(config.venues.enabled)),
        bybit=runtime.bybit, okx=runtime.okx,
    )  # fmt: skip
    fatal: list[BaseException] = []

    def writer_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            fatal.append(task.exception())  # type: ignore[arg-type]
            log.error("supervisor.writer_failed", error=repr(task.exception()))
            stop.set()

    writer_task = _owned(stack, writer.run(), "writer")
    writer_task.add_done_callback(writer_done)
    return _Lifecycle(runtime, writer_task, stop, fatal)


async def _replay(life: _Lifecycle) -> bool:
    """Phase 2: replay the spill files until committed, before anything new is received.

    False when `stop` or a failed writer ended it first (the files not yet committed stay on
    disk for the next start)."""
    runtime, stop, writer_task = life.runtime, life.stop, life.writer_task
    spill_dir = runtime.config.writer.spill_dir
    catalog = runtime.catalog

    def reparse(
        raw: str, *, host: str, route: str, stream: str, received_at: datetime
    ) -> MarketLiquidation:
        sizes = catalog.contract_sizes  # as known now: the catalog loads after the replay
        return reparse_frame(
            raw, host=host, route=route, stream=stream, received_at=received_at,
            contract_sizes=sizes,
        )  # fmt: skip

    replaying = asyncio.ensure_future(spill.replay(spill_dir, runtime.writer, reparse))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({replaying, stopping, writer_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not replaying.done():
            replaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replaying
    if replaying.cancelled():
        log.warning(
            "supervisor.replay_interrupted",
            reason="stop" if stop.is_set() and not writer_task.done() else "writer_failed",
            spill_dir=spill_dir,
        )
        return False
    replaying.result()  # an error reading the files is raised here
    return True


async def _run_until_stop(life: _Lifecycle, sources: asyncio.Task[None]) -> None:
    """Phase 3: until `stop` (a signal, a failed writer) or the sources end (a fatal error)."""
    stopping = asyncio.ensure_future(life.stop.wait())
    try:
        await asyncio.wait({sources, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()


async def _run_components(components: dict[str, Component], life: _Lifecycle) -> None:
    """Supervise every component until `stop`; a fatal error stops them all."""
    metrics = life.runtime.metrics
    try:
        async with asyncio.TaskGroup() as group:
            for name, component in components.items():
                group.create_task(supervise(name, component, life.stop, metrics), name=name)
    except* FATAL_ERRORS as eg:
        life.fatal.extend(eg.exceptions)
        life.stop.set()


async def _drain(life: _Lifecycle, sources: asyncio.Task[None]) -> int:
    """Phase 4: stop the sources, flush and stop the writer, spill the rest; the exit code."""
    runtime = life.runtime
    config, writer = runtime.config, runtime.writer
    runtime.health.is_draining = True
    # From here `put` never blocks: the sources read up to their UNSUBSCRIBE replies even
    # when the queue is full, and what the queue cannot take waits in the overflow.
    writer.begin_shutdown()
    committed_at_stop = writer.items_committed
    # The grace period covers the whole shutdown: stopping the sources (each closes its
    # ledger session, which may wait for queue space while the database is down), then
    # the drain. Sources still stuck at the deadline are cancelled; the queue is spilled.
    deadline = time.monotonic() + config.shutdown_grace_s
    done, _ = await asyncio.wait({sources}, timeout=config.shutdown_grace_s)
    if not done:
        log.error("supervisor.sources_stop_timeout", grace_s=config.shutdown_grace_s)
        sources.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sources
    remaining = max(deadline - time.monotonic(), _MIN_DRAIN_S)
    await _flush(writer, life.writer_task, remaining)
    spilled, lost = await _spill(writer, config.writer.spill_dir)
    lost += writer.items_dropped
    committed = writer.items_committed - committed_at_stop
    (log.error if lost else log.info)(
        "supervisor.shutdown_accounted",
        committed_during_drain=committed,
        spilled=spilled,
        lost=lost,
    )
    return life.exit_code(lost=lost)


async def _spill(writer: Writer, spill_dir: str) -> tuple[int, int]:
    """Write what the writer could not commit to a spill file; return (spilled, lost) counts."""
    items = writer.unwritten()
    if not items:
        return 0, 0
    try:
        path = await asyncio.to_thread(spill.write, spill_dir, items)
    except OSError:
        log.exception("supervisor.spill_failed", items=len(items), spill_dir=spill_dir)
        return 0, len(items)
    log.warning("supervisor.spilled", items=len(items), file=str(path) if path else None)
    return len(items), 0


async def _flush(writer: Writer, writer_task: asyncio.Task[None], grace_s: float) -> int:
    """Flush what is queued within `grace_s`, then stop the writer; return 0 when everything
    was committed."""
    started = time.monotonic()
    flushed = asyncio.ensure_future(writer.flush())
    try:
        done, _ = await asyncio.wait(
            {flushed, writer_task}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        await _cancel(writer_task)
        await _cancel(flushed)
    if flushed in done and not flushed.cancelled() and flushed.exception() is None:
        log.info("supervisor.drained", seconds=round(time.monotonic() - started, 3))
        return 0
    log.error(
        "supervisor.drain_incomplete",
        queued=writer.queue.qsize() + writer.overflow_size,
        grace_s=grace_s,
    )
    return 1


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it; what it raised was reported by its owner already."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _owned(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task that `stack` cancels and awaits on exit, unless a phase did so first."""
    task = asyncio.create_task(coro, name=name)
    stack.push_async_callback(_cancel, task)
    return task
