"""The one writer: a bounded queue in, batches committed to Postgres out.

Sources `await writer.put(item)`; a full queue blocks them (backpressure, bounded memory) until
`begin_shutdown()`: from then on `put` never waits, and what the full queue cannot take goes to
an overflow list behind it (bounded by what the sources still read: their sockets' buffers up
to the UNSUBSCRIBE reply), which the drain commits or spills like the queue. The
writer flushes on `batch_max_rows` or `batch_max_age_s`, whichever comes first, writing market
rows through COPY into a temporary staging table and `INSERT ... ON CONFLICT DO NOTHING`, so a
duplicate never costs the rows beside it. A lost connection keeps the batch and retries it with
backoff; a row Postgres rejects (SQLSTATE class 22/23) is isolated and dead-lettered, and the rest
of its batch commits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from collector.config import WriterConfig
from collector.metrics import Metrics
from collector.model import Barrier, DeadLetter, MarketLiquidation, SessionRecord, WriteItem
from collector.retry import Backoff

log = structlog.get_logger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]

# The staging table's columns, in COPY order. Numerics and the raw JSON travel as text and are
# cast by Postgres: asyncpg's binary numeric and jsonb encoders cost about three times the client
# CPU of text (measured: 8.8 vs 3.0 us per row), and the server parses text in C.
ML_STAGING: tuple[tuple[str, str], ...] = (
    ("trade_time", "timestamptz"),
    ("content_key", "bytea"),
    ("event_time", "timestamptz"),
    ("symbol", "text"),
    ("pair", "text"),
    ("symbol_type", "smallint"),
    ("market", "text"),
    ("side", "text"),
    ("liquidated_side", "text"),
    ("order_type", "text"),
    ("time_in_force", "text"),
    ("status", "text"),
    ("orig_qty", "numeric"),
    ("price", "numeric"),
    ("avg_price", "numeric"),
    ("last_filled_qty", "numeric"),
    ("filled_qty", "numeric"),
    ("notional_usd", "numeric"),
    ("received_at", "timestamptz"),
    ("source_host", "text"),
    ("source_route", "text"),
    ("source_stream", "text"),
    ("raw", "jsonb"),
)
ML_COLUMNS = tuple(name for name, _ in ML_STAGING)
_AS_TEXT = {"numeric", "jsonb"}
_STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ml_staging ("
    + ", ".join(f"{n} {'text' if t in _AS_TEXT else t}" for n, t in ML_STAGING)
    + ") ON COMMIT DELETE ROWS"
)
_CASTS = [f"{n}::{t}" if t in _AS_TEXT else n for n, t in ML_STAGING]
DL_COLUMNS = ("received_at", "source", "reason", "detail", "raw", "kept")
# Column lists are module constants, never input.
_INSERT_ML = (
    f"INSERT INTO market_liquidations ({', '.join(ML_COLUMNS)}) "
    f"SELECT {', '.join(_CASTS)} FROM ml_staging ON CONFLICT DO NOTHING"
)
_INSERT_ML_ONE = (
    f"INSERT INTO market_liquidations ({', '.join(ML_COLUMNS)}) VALUES ("
    + ", ".join(
        f"${i + 1}::text::{t}" if t in _AS_TEXT else f"${i + 1}"
        for i, (_, t) in enumerate(ML_STAGING)
    )
    + ") ON CONFLICT DO NOTHING"
)
_UPSERT_SESSION = """
INSERT INTO ws_sessions (session_id, connection, host, route, url, streams, opened_at,
    subscribed_at, first_event_at, last_event_at, last_alive_at, closed_at, close_reason,
    events_received)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (session_id) DO UPDATE SET
    subscribed_at   = coalesce(ws_sessions.subscribed_at, EXCLUDED.subscribed_at),
    first_event_at  = coalesce(ws_sessions.first_event_at, EXCLUDED.first_event_at),
    last_event_at   = greatest(ws_sessions.last_event_at, EXCLUDED.last_event_at),
    last_alive_at   = greatest(ws_sessions.last_alive_at, EXCLUDED.last_alive_at),
    closed_at       = coalesce(ws_sessions.closed_at, EXCLUDED.closed_at),
    close_reason    = coalesce(ws_sessions.close_reason, EXCLUDED.close_reason),
    events_received = greatest(ws_sessions.events_received, EXCLUDED.events_received)
"""
_PARTITION_CHECK_S = 6 * 3600.0
# SQLSTATE classes that mean "this row is bad", not "the database is unwell".
_DATA_CLASSES = ("22", "23")


def is_transient(exc: BaseException) -> bool:
    """True for failures that retrying the same batch later can cure.

    Connection loss, a server restarting or shutting down (57P0x), resource pressure (53),
    serialization failures (40), a database that does not accept connections for now or a lock
    not available (55), a standby not yet promoted after a failover (25006: read-only
    transaction) and timeouts are transient. Rejected data (22, 23) and programming errors
    (42: a missing table, bad SQL) are not.
    """
    # InternalClientError: asyncpg's protocol state after the server vanished mid-operation
    # (e.g. "cannot switch to state 15; another operation is in progress" on ROLLBACK).
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] in ("08", "40", "53", "55", "57", "58", "XX") or sqlstate in (
            "",
            "25006",
        )
    return False


def is_data_error(exc: BaseException) -> bool:
    """True when Postgres rejected the data itself (SQLSTATE class 22 or 23)."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and sqlstate[:2] in _DATA_CLASSES


class RecentKeys:
    """A bounded window of recently seen content keys: saves round trips for obvious repeats.

    The guarantee is the database's unique key; this only filters what it can cheaply.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[Any, None] = OrderedDict()

    def seen(self, key: Any) -> bool:
        """Return True if `key` is in the window; otherwise remember it and return False."""
        if key in self._keys:
            return True
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return False


def _nul_free(text: str) -> str:
    """Postgres text cannot hold NUL; a dead letter's labels may quote input that does."""
    return text.replace("\x00", "\\u0000")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _ml_record(row: MarketLiquidation) -> tuple[Any, ...]:
    """The row in `ML_STAGING` order, numerics as text (the model is already in that order)."""
    return (
        *row[:12],
        str(row.orig_qty),
        str(row.price),
        str(row.avg_price),
        _text(row.last_filled_qty),
        str(row.filled_qty),
        _text(row.notional_usd),
        *row[18:23],
    )


def _session_args(s: SessionRecord) -> tuple[Any, ...]:
    return (
        s.session_id,
        s.connection,
        s.host,
        s.route,
        s.url,
        list(s.streams),
        s.opened_at,
        s.subscribed_at,
        s.first_event_at,
        s.last_event_at,
        s.last_alive_at,
        s.closed_at,
        s.close_reason,
        s.events_received,
    )


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def merge(earlier: SessionRecord, later: SessionRecord) -> SessionRecord:
    """Two snapshots of one session as one, by the same rules as the ledger's upsert."""
    return dataclasses.replace(
        later,
        subscribed_at=earlier.subscribed_at or later.subscribed_at,
        first_event_at=earlier.first_event_at or later.first_event_at,
        last_event_at=_latest(earlier.last_event_at, later.last_event_at),
        last_alive_at=max(earlier.last_alive_at, later.last_alive_at),
        closed_at=earlier.closed_at or later.closed_at,
        close_reason=earlier.close_reason or later.close_reason,
        events_received=max(earlier.events_received, later.events_received),
    )


@dataclass(slots=True)
class Batch:
    """One flush worth of items, split by kind."""

    liquidations: list[MarketLiquidation] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    sessions: dict[Any, SessionRecord] = field(default_factory=dict)
    barriers: list[Barrier] = field(default_factory=list)
    # Other batches in flight when this batch took its barrier: they hold every item queued
    # before the barrier that this batch does not, so the barrier waits for them.
    waits_for: set[int] = field(default_factory=set)
    size: int = 0

    def add(self, item: WriteItem) -> None:
        self.size += 1
        if isinstance(item, MarketLiquidation):
            self.liquidations.append(item)
        elif isinstance(item, DeadLetter):
            self.dead_letters.append(item)
        elif isinstance(item, SessionRecord):
            earlier = self.sessions.get(item.session_id)
            self.sessions[item.session_id] = item if earlier is None else merge(earlier, item)
        else:
            self.barriers.append(item)


class _Lane:
    """One database connection and the batch it is writing."""

    def __init__(self) -> None:
        self.conn: asyncpg.Connection | None = None

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


class Writer:
    """Owns the queue and `writers` database connections (lanes); see the module docstring.

    Lanes take batches from the one queue concurrently, so encoding the next batch overlaps
    Postgres inserting the previous one. `flush()` still means "everything queued before this
    call is committed": a barrier waits for every batch that was started before it.
    """

    def __init__(self, connect: Connect, config: WriterConfig, metrics: Metrics) -> None:
        self._connect = connect
        self._config = config
        self._metrics = metrics
        self.queue: asyncio.Queue[WriteItem] = asyncio.Queue(config.queue_max)
        self._recent = RecentKeys(config.dedup_window)
        self._partitions_checked_at = -_PARTITION_CHECK_S
        self._batch_ids = itertools.count()
        # Batches taken from the queue and not yet committed, by id.
        self._inflight: dict[int, Batch] = {}
        self._committed = asyncio.Condition()
        # True from a failed write until the next commit: the liveness ping (sink/liveness.py)
        # does not report the database up, nor /readyz ready, while batches cannot commit.
        self.is_failing = False
        # After `begin_shutdown`: items the full queue could not take, in order, behind it.
        self._overflow: deque[WriteItem] = deque()
        self._shutting_down = asyncio.Event()
        # Items (not barriers) in committed batches, and items whose `put` was cancelled
        # before they were queued (lost: the shutdown accounting reports them).
        self.items_committed = 0
        self.items_dropped = 0
        metrics.queue_capacity.set(config.queue_max)
        metrics.queue_depth.set_function(self.queue.qsize)

    def begin_shutdown(self) -> None:
        """From now on `put` never waits: see the module docstring. Wakes waiting `put`s."""
        self._shutting_down.set()

    @property
    def overflow_size(self) -> int:
        """Items waiting behind the full queue since `begin_shutdown`."""
        return len(self._overflow)

    async def put(self, item: WriteItem, *, release: asyncio.Event | None = None) -> None:
        """Queue one item; waits while the queue is full (backpressure) until shutdown, or
        until `release` is set (a connection closing for rotation drains its socket into the
        overflow rather than lose what it read)."""
        queue = self.queue
        if not self._overflow and not queue.full():
            queue.put_nowait(item)
            return
        if self._shutting_down.is_set() or (release is not None and release.is_set()):
            self._overflow.append(item)
            return
        putting = asyncio.ensure_future(queue.put(item))
        stops = [asyncio.ensure_future(self._shutting_down.wait())]
        if release is not None:
            stops.append(asyncio.ensure_future(release.wait()))
        try:
            await asyncio.wait({putting, *stops}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if not putting.done():  # done: the item is queued after all
                putting.cancel()
                self.items_dropped += 1
                log.warning("writer.put_cancelled", item=type(item).__name__, lost=1)
            raise
        finally:
            for waiter in stops:
                waiter.cancel()
        if not putting.done():
            putting.cancel()
            await asyncio.wait({putting})
        if putting.cancelled():
            self._overflow.append(item)

    def _refill(self) -> None:
        """Move overflow items into the queue while it has room, in order."""
        overflow, queue = self._overflow, self.queue
        while overflow and not queue.full():
            queue.put_nowait(overflow.popleft())

    async def flush(self) -> None:
        """Return once everything queued before this call is committed (or dead-lettered)."""
        barrier = Barrier(asyncio.get_running_loop().create_future())
        await self.put(barrier)
        await barrier.done

    def unwritten(self) -> list[WriteItem]:
        """Everything taken but not committed, then everything still queued (then the overflow),
        in order.

        For the shutdown path after `run` was cancelled with the database unreachable: the
        caller spills these to disk (sink/spill.py) instead of losing them.
        """
        items: list[WriteItem] = []
        for batch_id in sorted(self._inflight):
            batch = self._inflight[batch_id]
            items.extend(batch.sessions.values())
            items.extend(batch.liquidations)
            items.extend(batch.dead_letters)
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if not isinstance(item, Barrier):
                items.append(item)
        while self._overflow:
            item = self._overflow.popleft()
            if not isinstance(item, Barrier):
                items.append(item)
        return items

    async def run(self) -> None:
        """Write batches until cancelled. Cancel only after `flush()` returned to lose nothing."""
        async with asyncio.TaskGroup() as group:
            for i in range(self._config.writers):
                group.create_task(self._run_lane(_Lane()), name=f"writer lane {i}")

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            while True:
                batch_id, batch = await self._next_batch()
                await self._write_with_retry(lane, batch)
                # Only a committed batch leaves `_inflight`: one cancelled or failed mid-write
                # stays there for `unwritten()`.
                async with self._committed:
                    del self._inflight[batch_id]
                    self.items_committed += batch.size - len(batch.barriers)
                    self._committed.notify_all()
                await self._release_barriers(batch)
        finally:
            lane.drop()

    async def _release_barriers(self, batch: Batch) -> None:
        """Resolve the batch's barriers once the batches holding earlier items have committed."""
        if not batch.barriers:
            return
        async with self._committed:
            await self._committed.wait_for(lambda: not batch.waits_for & self._inflight.keys())
        for barrier in batch.barriers:
            if not barrier.done.done():
                barrier.done.set_result(None)

    async def _next_batch(self) -> tuple[int, Batch]:
        batch = Batch()
        batch_id = next(self._batch_ids)
        self._refill()
        batch.add(await self.queue.get())
        self._inflight[batch_id] = batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.batch_max_age_s
        max_rows = self._config.batch_max_rows
        while batch.size < max_rows and not batch.barriers:
            # (A barrier ends the batch; the loop's check below sees it.)
            try:
                batch.add(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                if self._overflow:
                    self._refill()
                    continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.add(await self.queue.get())
            except TimeoutError:
                break
        self._refill()
        if batch.barriers:
            # The barrier was the last item taken: the queue is FIFO, so every item queued
            # before it is in this batch or in a batch in flight right now.
            batch.waits_for = set(self._inflight) - {batch_id}
        return batch_id, batch

    async def _write_with_retry(self, lane: _Lane, batch: Batch) -> None:
        fresh: list[MarketLiquidation] = []
        for row in batch.liquidations:
            if self._recent.seen(row.content_key):
                self._metrics.duplicates.labels("memory").inc()
            else:
                fresh.append(row)
        batch.liquidations = fresh
        backoff = Backoff(self._config.retry_initial_s, self._config.retry_max_s)
        while True:
            try:
                await self._write(lane, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                lost = lane.conn is not None and lane.conn.is_closed()
                if not (is_transient(exc) or lost):
                    raise
                lane.drop()
                self.is_failing = True
                self._metrics.db_up.set(0)
                self._metrics.write_errors.labels("transient").inc()
                delay = backoff.next_delay()
                log.warning(
                    "writer.retry_scheduled",
                    delay_s=round(delay, 3),
                    rows=batch.size,
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                )
                await asyncio.sleep(delay)
                continue
            break
        self.is_failing = False
        self._metrics.db_up.set(1)

    async def _connection(self, lane: _Lane) -> asyncpg.Connection:
        if lane.conn is None or lane.conn.is_closed():
            conn = await self._connect()
            try:
                await conn.execute(_STAGING_DDL)
            except BaseException:
                conn.terminate()
                raise
            lane.conn = conn
        now = time.monotonic()
        if now - self._partitions_checked_at > _PARTITION_CHECK_S:
            self._partitions_checked_at = now
            try:
                await ensure_partitions(lane.conn)
            except BaseException:
                self._partitions_checked_at = -_PARTITION_CHECK_S
                raise
        return lane.conn

    async def _write(self, lane: _Lane, batch: Batch) -> None:
        conn = await self._connection(lane)
        started = time.monotonic()
        inserted = 0
        rejected: list[DeadLetter] = []
        async with conn.transaction():
            if batch.liquidations:
                try:
                    async with conn.transaction():  # a savepoint: a bad row costs only a retry
                        inserted = await self._insert_liquidations(conn, batch.liquidations)
                except asyncpg.PostgresError as exc:
                    if not is_data_error(exc):
                        raise
                    self._metrics.write_errors.labels("data").inc()
                    inserted, rejected = await self._insert_one_by_one(conn, batch.liquidations)
            dead = batch.dead_letters + rejected
            if dead:
                await conn.copy_records_to_table(
                    "dead_letters",
                    records=[
                        (
                            d.received_at,
                            _nul_free(d.source),
                            _nul_free(d.reason),
                            _nul_free(d.detail),
                            d.raw,
                            d.kept,
                        )
                        for d in dead
                    ],
                    columns=DL_COLUMNS,
                )
            if batch.sessions:
                await conn.executemany(
                    _UPSERT_SESSION, [_session_args(s) for s in batch.sessions.values()]
                )
        committed = time.monotonic()
        m = self._metrics
        m.write_seconds.observe(committed - started)
        m.batch_rows.observe(batch.size)
        if inserted:
            m.rows_inserted.labels("market_liquidations").inc(inserted)
        duplicates = len(batch.liquidations) - inserted - len(rejected)
        if duplicates:
            m.duplicates.labels("database").inc(duplicates)
        if dead:
            m.rows_inserted.labels("dead_letters").inc(len(dead))
        for d in rejected:
            m.dead_letters.labels(d.reason).inc()
        observe = m.socket_to_commit_seconds.observe
        for row in batch.liquidations:
            if row.received_monotonic:
                observe(committed - row.received_monotonic)

    async def _insert_liquidations(
        self, conn: asyncpg.Connection, rows: Sequence[MarketLiquidation]
    ) -> int:
        await conn.copy_records_to_table(
            "ml_staging", records=[_ml_record(r) for r in rows], columns=ML_COLUMNS
        )
        status = await conn.execute(_INSERT_ML)
        return int(status.rsplit(" ", 1)[1])

    async def _insert_one_by_one(
        self, conn: asyncpg.Connection, rows: Sequence[MarketLiquidation]
    ) -> tuple[int, list[DeadLetter]]:
        """Insert rows singly so the ones Postgres rejects are isolated and dead-lettered."""
        inserted = 0
        rejected: list[DeadLetter] = []
        for row in rows:
            try:
                async with conn.transaction():
                    status = await conn.execute(_INSERT_ML_ONE, *_ml_record(row))
                inserted += int(status.rsplit(" ", 1)[1])
            except asyncpg.PostgresError as exc:
                if not is_data_error(exc):
                    raise
                log.warning(
                    "writer.row_rejected",
                    symbol=row.symbol,
                    key=str(row.content_key),
                    sqlstate=exc.sqlstate,
                    error=str(exc)[:200],
                )
                rejected.append(
                    DeadLetter(
                        received_at=row.received_at,
                        source=f"{row.source_host}/{row.source_stream}",
                        reason="db_rejected",
                        detail=f"{exc.sqlstate}: {exc}"[:1000],
                        raw=row.raw.encode(),
                    )
                )
        return inserted, rejected


async def ensure_partitions(conn: asyncpg.Connection, now: datetime | None = None) -> int:
    """Create the monthly partitions from last month to two months ahead; return how many."""
    start = (now or datetime.now(UTC)).replace(day=1)
    created: int = await conn.fetchval(
        "SELECT collector_ensure_monthly_partitions('market_liquidations', "
        "$1::timestamptz - interval '1 month', 4)",
        start,
    )
    if created:
        log.info("writer.partitions_created", count=created)
    return created
