"""Binance forceOrder websocket streams into the sink: every planned shard kept up by replicas.

`plan_shards` (`binance_plan`) spreads the configured streams over connections; each is held by
`redundancy` `Shard`s (replicas) at once, every one its own connection carrying every event,
so that one drop loses nothing (the writer stores each event once); their rotations are
staggered, and a replica silent while its twin receives events is replaced as stale. A `Shard`
owns one such connection (a `binance_session.Connection`): it connects (with capped, jittered
backoff over failed attempts; at once after a confirmed connection ends), rotates
make-before-break ahead of the 24 h cut, and keeps within the per-IP connection-attempt limit.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
import structlog

from collector.config import BinanceConfig
from collector.metrics import Metrics
from collector.model import Sink
from collector.retry import WS_ROTATION_RETRY_S, AttemptBudget, sleep_or_stop, ws_reconnect
from collector.sources.binance_control import ConnectionClosed
from collector.sources.binance_plan import ShardSpec, plan_shards
from collector.sources.binance_session import AnomalyExamples, Connection
from collector.sources.catalog import SymbolCatalog
from collector.sources.twins import FrameTwins

log = structlog.get_logger(__name__)

# `connection_attempts_per_5min` counts over this sliding window, the 5 minutes of the only
# documented connection-attempt limit (Spot's, per IP; docs/binance.md §1.4).
ATTEMPT_WINDOW_S = 300.0
# With twins, a replica is checked for staleness this many times per `stall_after_s`, so a
# stale one is replaced at most a quarter of that window late.
STALE_CHECKS_PER_WINDOW = 4
# How much of a failed connect's cause the warning quotes.
_LOGGED_ERROR_CHARS = 300

Pause = Callable[[float, asyncio.Event], Awaitable[bool]]


class Shard:
    """Keeps one connection of a shard up: reconnects with backoff, rotates before the 24 h
    cut, and replaces its connection when it is stale next to a twin (`twins`: every replica
    of the same `ShardSpec`, this one included)."""

    def __init__(
        self,
        spec: ShardSpec,
        http: aiohttp.ClientSession,
        sink: Sink,
        metrics: Metrics,
        catalog: SymbolCatalog,
        config: BinanceConfig,
        *,
        rng: random.Random | None = None,
        pause: Pause = sleep_or_stop,
        budget: AttemptBudget | None = None,
        replica: int = 0,
    ) -> None:
        self.spec = spec
        self.replica = replica
        self.twins: list[Shard] = [self]
        self._http = http
        self._sink = sink
        self._metrics = metrics
        self._catalog = catalog
        self._config = config
        self._anomalies = AnomalyExamples()
        self.frames: FrameTwins | None = None
        self._rng = rng or random.Random()
        # Waits `delay` seconds unless `stop` is set first (True then); tests record the delays.
        self._pause = pause
        # Shared by the shards of one process: connection attempts per 5 minutes.
        self._budget = budget or AttemptBudget(
            config.connection_attempts_per_5min, ATTEMPT_WINDOW_S
        )
        policy = ws_reconnect(config.reconnect_initial_s, config.reconnect_max_s)
        self.backoff = policy.backoff(self._rng)
        self.current: Connection | None = None
        self.log = log.bind(connection=spec.name, replica=replica)

    @property
    def is_up(self) -> bool:
        """Whether this replica holds an open connection."""
        return self.current is not None and not self.current.closed.is_set()

    def share_with(self, twins: list[Shard]) -> None:
        """Make `twins` (every replica of this shard) this one's twins, sharing one anomaly
        set so that each anomaly is dead-lettered once per shard, not once per replica."""
        self.twins = twins
        self._anomalies = twins[0]._anomalies
        if len(twins) > 1:
            if twins[0].frames is None:
                twins[0].frames = FrameTwins(len(twins))
            self.frames = twins[0].frames

    def _first_rotation_s(self) -> float:
        """When a fresh connection first rotates: replica i of r after
        `rotate_after_s * (1 - i / (2r))`, so the replicas of a shard rotate (and would be cut)
        at different times, `rotate_after_s / (2r)` apart (5 h 45 min at 23 h and r = 2)."""
        redundancy = max(self._config.redundancy, len(self.twins), 1)
        return self._config.rotate_after_s * (1 - self.replica / (2 * redundancy))

    def _is_stale(self, conn: Connection) -> bool:
        """Whether `conn`, waiting on its socket, received no data frame for `stall_after_s`
        while an open twin received an event in that time (silence on all is a quiet market)."""
        window = self._config.stall_after_s
        now = time.monotonic()
        if not conn.is_receiving or now - conn.last_data_monotonic < window:
            return False
        for twin in self.twins:
            other = twin.current
            if twin is self or other is None or other.closed.is_set():
                continue
            if (
                other.last_event_monotonic is not None
                and other.last_event_monotonic >= now - window
            ):
                return True
        return False

    def _new_connection(self) -> Connection:
        return Connection(
            self.spec,
            self._http,
            self._sink,
            self._metrics,
            self._catalog,
            self._config,
            self._anomalies,
            self.replica,
            self.frames,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then close the live session and return.

        A confirmed connection (subscribed, or it delivered an event) that ends for any reason
        is replaced at once, after a jitter of at most `reconnect_jitter_s`: the server cutting
        a good session says nothing about the next attempt. Only consecutive failed attempts
        (connect, upgrade, subscribe, or a session that ended unconfirmed) back off; a
        confirmed connection resets the backoff. A session our own reader failed (a bug) backs
        off too, so a frame that kills every session cannot make us hammer the server.
        """
        try:
            while not stop.is_set():
                conn = self._new_connection()
                try:
                    await conn.open()
                except ConnectionClosed as exc:
                    self._metrics.ws_reconnects.labels(self.spec.host, exc.reason).inc()
                    delay = self.backoff.next_delay()
                    self.log.warning(
                        "ws.connect_failed",
                        reason=exc.reason,
                        error=str(exc.__cause__)[:_LOGGED_ERROR_CHARS] if exc.__cause__ else None,
                        retry_in_s=round(delay, 3),
                    )
                    await self._pause(self._within_budget(delay), stop)
                    continue
                self.current = conn
                if conn.subscribed.is_set():
                    self.backoff.reset()
                ended = await self._hold(conn, stop)
                if ended is None:  # stopping
                    return
                self._metrics.ws_reconnects.labels(self.spec.host, ended.close_reason).inc()
                confirmed = ended.subscribed.is_set() or ended.delivered.is_set()
                if confirmed and ended.close_reason != "reader_failed":
                    self.backoff.reset()
                    delay = self._rng.random() * self._config.reconnect_jitter_s
                else:
                    delay = self.backoff.next_delay()
                delay = self._within_budget(delay)
                self.log.warning(
                    "ws.reconnect_scheduled", reason=ended.close_reason, delay_s=round(delay, 3)
                )
                await self._pause(delay, stop)
        finally:
            if self.current is not None:
                await self.current.close("shutdown")

    def _within_budget(self, delay: float) -> float:
        """`delay`, lengthened if the attempt after it would exceed the attempt budget."""
        now = time.monotonic()
        at = now + delay
        booked = self._budget.reserve(at)
        return delay if booked == at else booked - now

    async def _hold(self, conn: Connection, stop: asyncio.Event) -> Connection | None:
        """Keep `conn` (and its successors after rotation) until it closes or we stop.

        Returns the connection that closed, or None when `stop` was set.
        """
        rotate_at = conn.opened_monotonic + self._first_rotation_s()
        # With twins, look for staleness a few times per `stall_after_s`.
        check_s: float | None = None
        if len(self.twins) > 1:
            check_s = self._config.stall_after_s / STALE_CHECKS_PER_WINDOW
        while True:
            rotate_in = rotate_at - time.monotonic()
            timeout = max(rotate_in, 0) if check_s is None else max(min(rotate_in, check_s), 0)
            stopping: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
            closing: asyncio.Future[bool] = asyncio.ensure_future(conn.closed.wait())
            try:
                await asyncio.wait(
                    {stopping, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
                closing.cancel()
            if stop.is_set():
                return None
            if conn.closed.is_set():
                return conn
            if self._is_stale(conn):
                self.log.warning(
                    "ws.stale",
                    silent_s=round(time.monotonic() - conn.last_data_monotonic, 3),
                    stall_after_s=self._config.stall_after_s,
                )
                # Make before break, as rotation does; the replacement keeps the schedule.
                replacement = await self._rotate(conn, reason="stale")
                if replacement is None:
                    await conn.close("stale")
                    return conn  # `run` counts it and reconnects
                self._metrics.ws_reconnects.labels(self.spec.host, "stale").inc()
                conn = replacement
                continue
            if time.monotonic() < rotate_at:
                continue
            successor = await self._rotate(conn)
            if successor is None:  # the old connection keeps the stream covered; retry soon
                rotate_at = time.monotonic() + WS_ROTATION_RETRY_S
            else:
                conn = successor
                rotate_at = conn.opened_monotonic + self._config.rotate_after_s

    async def _rotate(self, old: Connection, *, reason: str = "rotated") -> Connection | None:
        """Make before break: open a new session, wait until it delivers or is subscribed,
        then close the old one (with `reason`). On failure keep the old one (the caller
        decides what then)."""
        new = self._new_connection()
        try:
            await new.open(require_confirmation=True)
        except ConnectionClosed as exc:
            self.log.warning("ws.replacement_failed", reason=exc.reason, replacing=reason)
            return None
        self.current = new
        await old.close(reason)
        if reason == "rotated":
            self._metrics.ws_rotations.labels(self.spec.host).inc()
        self.log.info("ws.replaced", reason=reason)
        return new


def _connections_up(twins: list[Shard]) -> int:
    return sum(twin.is_up for twin in twins)


async def run_ws_sources(
    config: BinanceConfig,
    sink: Sink,
    metrics: Metrics,
    catalog: SymbolCatalog,
    stop: asyncio.Event,
    shards_out: list[Shard] | None = None,
) -> None:
    """Run every shard, each held by `config.redundancy` replicas, until `stop`; each closes
    its session in the ledger on the way out.

    `shards_out` (readiness reads it) is set to this run's replicas, replacing a failed run's.
    """
    async with aiohttp.ClientSession() as http:
        budget = AttemptBudget(config.connection_attempts_per_5min, ATTEMPT_WINDOW_S)
        shards: list[Shard] = []
        for spec in plan_shards(config):
            twins = [
                Shard(spec, http, sink, metrics, catalog, config, budget=budget, replica=i)
                for i in range(config.redundancy)
            ]
            for shard in twins:
                shard.share_with(twins)
            metrics.watch_shard(spec.name, functools.partial(_connections_up, twins), len(twins))
            shards += twins
        if shards_out is not None:
            shards_out[:] = shards
        async with asyncio.TaskGroup() as group:
            for shard in shards:
                group.create_task(shard.run(stop), name=f"shard {shard.spec.name}")
