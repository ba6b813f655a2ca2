"""The daemon's lifecycle, top to bottom: HTTP port bound -> database -> migrations -> HTTP
served -> writer -> sources;
then, on SIGTERM/SIGINT, the ordered drain: stop sources (their sessions close in the ledger;
the writer's `put` no longer waits, so they read up to their UNSUBSCRIBE replies), flush the
writer within the grace period, spill what it could not commit, log where every item went
(committed / spilled / lost), close HTTP and the database. Exit 0 only when nothing was lost.

Every task has an owner. A component that fails unexpectedly is restarted with backoff; a fatal
error (bad config, failed migration, a writer bug) stops the process with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from collector.config import Config, redact_dsn
from collector.db.connection import connect, database_dsn, wait_for_database
from collector.db.migrate import migrate
from collector.db.rollup import run_rollups
from collector.exceptions import ConfigError, MigrationError
from collector.health import Health, listen, serve_http
from collector.metrics import Metrics
from collector.model import MarketLiquidation
from collector.rest.accounts import build_account_components
from collector.retry import Backoff, sleep_or_stop
from collector.sink import spill
from collector.sink.liveness import run_database_ping
from collector.sink.writer import Writer
from collector.sources.binance_parse import reparse_frame
from collector.sources.binance_ws import Shard, run_ws_sources
from collector.sources.catalog import SymbolCatalog
from collector.sources.exchange_info import run_exchange_info

log = structlog.get_logger(__name__)

Component = Callable[[asyncio.Event], Awaitable[None]]
# However late the sources stop, the writer gets at least this long to flush.
_MIN_DRAIN_S = 0.5


@dataclass(slots=True)
class Runtime:
    """What a running daemon exposes to tests and to components added later."""

    config: Config
    dsn: str = field(repr=False)
    pool: asyncpg.Pool
    metrics: Metrics
    health: Health
    writer: Writer
    catalog: SymbolCatalog
    http_port: int
    shards: list[Shard] = field(default_factory=list)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT request a graceful stop; a second one exits at once."""
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            log.warning("supervisor.forced_exit", signal=signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("supervisor.stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)


async def supervise(
    name: str,
    component: Component,
    stop: asyncio.Event,
    metrics: Metrics,
    *,
    initial_backoff_s: float = 1.0,
) -> None:
    """Run `component(stop)` until `stop`; restart it with backoff if it fails unexpectedly.

    ConfigError and MigrationError are fatal and propagate (the process exits non-zero).
    """
    backoff = Backoff(initial_backoff_s, 60.0)
    while not stop.is_set():
        started = time.monotonic()
        try:
            await component(stop)
        except (ConfigError, MigrationError):
            raise
        except Exception:
            metrics.component_restarts.labels(name).inc()
            if time.monotonic() - started > 300:
                backoff.reset()
            delay = backoff.next_delay()
            log.exception("supervisor.component_failed", component=name, restart_in_s=delay)
            await sleep_or_stop(delay, stop)
            continue
        if not stop.is_set():  # a component returned on its own: restart it after a pause
            await sleep_or_stop(backoff.next_delay(), stop)


def stream_state(shards: list[Shard]) -> dict[str, Any]:
    """`/readyz`'s view of the streams: per shard its connections (one per replica, "up" or
    "down") and counts; `state` is `ok` (every shard fully held), `degraded` (every shard has
    a connection up, some fewer than `redundancy`) or `down` (some shard has none)."""
    by_name: dict[str, list[Shard]] = {}
    for shard in shards:
        by_name.setdefault(shard.spec.name, []).append(shard)
    view: dict[str, dict[str, Any]] = {}
    for name, twins in by_name.items():
        connections = ["up" if t.is_up else "down" for t in twins]
        view[name] = {"up": connections.count("up"), "wanted": len(twins),
                      "connections": connections}  # fmt: skip
    if not view or any(not v["up"] for v in view.values()):
        state = "down"
    elif any(v["up"] < v["wanted"] for v in view.values()):
        state = "degraded"
    else:
        state = "ok"
    return {"state": state, "shards": view}


def _add_readiness(runtime: Runtime) -> None:
    health = runtime.health

    async def database() -> None:
        if runtime.writer.is_failing and runtime.writer.queue.qsize() > 0:
            raise RuntimeError("the writer cannot commit")
        async with runtime.pool.acquire(timeout=1.5) as conn:
            await conn.fetchval("SELECT 1")

    async def streams() -> None:
        """Ready while at least one connection of every shard is up (degraded is still ready)."""
        if not runtime.shards:
            raise RuntimeError("no stream connection started yet")
        down = [name for name, s in stream_state(runtime.shards)["shards"].items() if not s["up"]]
        if down:
            raise RuntimeError(f"not connected: {', '.join(down)}")

    async def event_age() -> None:
        limit = runtime.config.http.max_event_age_s
        age = runtime.metrics.event_age_s()
        if limit and age > limit:
            raise RuntimeError(f"no event for {age:.0f} s (limit {limit:.0f} s)")

    health.add("database", database)
    health.add("streams", streams)
    health.describe("streams", lambda: stream_state(runtime.shards))
    health.add("event_age", event_age)


async def run(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Runtime], None] | None = None,
    extra_components: Callable[[Runtime], dict[str, Component]] | None = None,
) -> int:
    """Run the daemon until `stop` (or a signal); return the process exit code."""
    stop = stop or asyncio.Event()
    fatal: list[BaseException] = []
    async with AsyncExitStack() as stack:
        # Bound first, so a port in use stops the start before anything connects or migrates.
        sockets = listen(config.http.host, config.http.port)
        for sock in sockets:
            stack.callback(sock.close)
        dsn = await stack.enter_async_context(database_dsn(config))
        if not await wait_for_database(dsn, config, stop):
            return 0
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
        runner = await stack.enter_async_context(
            serve_http(config.http.host, config.http.port, health, metrics, sockets=sockets)
        )
        port = int(runner.addresses[0][1])
        writer = Writer(lambda: connect(dsn, config), config.writer, metrics)
        runtime = Runtime(config, dsn, pool, metrics, health, writer, SymbolCatalog(), port)
        _add_readiness(runtime)
        writer_task = asyncio.create_task(writer.run(), name="writer")

        def writer_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                fatal.append(task.exception())  # type: ignore[arg-type]
                log.error("supervisor.writer_failed", error=repr(task.exception()))
                stop.set()

        writer_task.add_done_callback(writer_done)
        # Rows a previous run could not commit before it stopped go in before anything new.
        if not await _replay(config.writer.spill_dir, writer, writer_task, runtime.catalog, stop):
            # Stopped (or the writer failed) mid-replay: nothing was received yet, and what the
            # writer holds came from spill files that stay on disk, so nothing is spilled again.
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer_task
            for exc in fatal:
                log.error("supervisor.fatal", error=str(exc))
            return 1 if fatal else 0
        components: dict[str, Component] = {
            "ws": lambda s: run_ws_sources(
                config.binance, writer, metrics, runtime.catalog, s, runtime.shards
            ),
            "exchange_info": lambda s: run_exchange_info(
                config.binance, pool, runtime.catalog, metrics, s
            ),
            "rollup": lambda s: run_rollups(pool, s, interval_s=config.database.rollup_interval_s),
            "database_ping": lambda s: run_database_ping(
                pool,
                metrics,
                s,
                interval_s=config.database.ping_interval_s,
                timeout_s=config.database.ping_timeout_s,
                write_failing=lambda: writer.is_failing,
            ),
        }
        components.update(build_account_components(config, pool, metrics))
        if extra_components is not None:
            components.update(extra_components(runtime))
        log.info("supervisor.started", http_port=port, components=sorted(components),
                 database=redact_dsn(dsn))  # fmt: skip
        if on_ready is not None:
            on_ready(runtime)
        sources = asyncio.create_task(_run_components(components, stop, metrics, fatal))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({sources, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        health.is_draining = True
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
        await _drain(writer, writer_task, remaining)
        spilled, lost = await _spill(writer, config.writer.spill_dir)
        lost += writer.items_dropped
        committed = writer.items_committed - committed_at_stop
        (log.error if lost else log.info)(
            "supervisor.shutdown_accounted",
            committed_during_drain=committed,
            spilled=spilled,
            lost=lost,
        )
        if fatal:
            for exc in fatal:
                log.error("supervisor.fatal", error=str(exc))
            return 1
        return 1 if lost else 0
    return 0  # pragma: no cover  (mypy: the stack above always returns)


async def _run_components(
    components: dict[str, Component],
    stop: asyncio.Event,
    metrics: Metrics,
    fatal: list[BaseException],
) -> None:
    """Supervise every component until `stop`; a fatal error stops them all."""
    try:
        async with asyncio.TaskGroup() as group:
            for name, component in components.items():
                group.create_task(supervise(name, component, stop, metrics), name=name)
    except* (ConfigError, MigrationError) as eg:
        fatal.extend(eg.exceptions)
        stop.set()


async def _replay(
    spill_dir: str,
    writer: Writer,
    writer_task: asyncio.Task[None],
    catalog: SymbolCatalog,
    stop: asyncio.Event,
) -> bool:
    """Replay the spill files until committed; False when `stop` or a failed writer ended it
    first (the files not yet committed stay on disk for the next start)."""

    def reparse(
        raw: str, *, host: str, route: str, stream: str, received_at: datetime
    ) -> MarketLiquidation:
        sizes = catalog.contract_sizes  # as known now: the catalog loads after the replay
        return reparse_frame(
            raw, host=host, route=route, stream=stream, received_at=received_at,
            contract_sizes=sizes,
        )  # fmt: skip

    replaying = asyncio.ensure_future(spill.replay(spill_dir, writer, reparse))
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


async def _drain(writer: Writer, writer_task: asyncio.Task[None], grace_s: float) -> int:
    """Flush what is queued within `grace_s`; return 0 when everything was committed."""
    started = time.monotonic()
    flushed = asyncio.ensure_future(writer.flush())
    try:
        done, _ = await asyncio.wait(
            {flushed, writer_task}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer_task
        flushed.cancel()
    if flushed in done and not flushed.cancelled() and flushed.exception() is None:
        log.info("supervisor.drained", seconds=round(time.monotonic() - started, 3))
        return 0
    log.error(
        "supervisor.drain_incomplete",
        queued=writer.queue.qsize() + writer.overflow_size,
        grace_s=grace_s,
    )
    return 1
