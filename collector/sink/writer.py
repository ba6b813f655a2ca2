"""The one writer: a bounded queue in, batches committed to Postgres out.

Sources `await writer.put(item)`; a full queue blocks them (backpressure, bounded memory) until
`begin_shutdown()`: from then on `put` never waits, and what the full queue cannot take goes to
an overflow list behind it (bounded by what the sources still read: their sockets' buffers up
to the UNSUBSCRIBE reply), which the drain commits or spills like the queue. The
writer flushes on `batch_max_rows` or `batch_max_age_s` (counted from the batch's first row
coming off the socket, `sink.flush`), whichever comes first, writing market
rows through COPY into a temporary staging table and `INSERT ... ON CONFLICT DO NOTHING`, so a
duplicate never costs the rows beside it. A lost connection keeps the batch and retries it with
backoff; a row Postgres rejects (SQLSTATE class 22/23) is isolated and dead-lettered, and the rest
of its batch commits.

This module owns the queue, the lanes and the barriers; a batch's contents are `sink.batch`,
its transaction `sink.commit` (columns by name: `sink.columns`), the key window `sink.dedup`,
the partitions `sink.partitions`, and which failures are retried `collector.retry`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from collector.config import WriterConfig
from collector.metrics import Metrics
from collector.model import Barrier, MarketLiquidation, WriteItem
from collector.retry import is_transient, writer_retry
from collector.sink.batch import Batch
from collector.sink.columns import CONNECTION_DDL
from collector.sink.commit import commit_batch
from collector.sink.dedup import RecentKeys
from collector.sink.flush import Clock, FlushPolicy
from collector.sink.partitions import PartitionCheck
from collector.venues import VenueLiquidation

log = structlog.get_logger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


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

    def __init__(
        self,
        connect: Connect,
        config: WriterConfig,
        metrics: Metrics,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._connect = connect
        self._config = config
        self._metrics = metrics
        self.queue: asyncio.Queue[WriteItem] = asyncio.Queue(config.queue_max)
        self._recent = RecentKeys(config.dedup_window)
        self._partitions = PartitionCheck()
        self._batch_ids = itertools.count()
        # `clock` is the clock of rows' `received_monotonic` (tests inject one).
        self._flush = FlushPolicy(config.batch_max_age_s, config.batch_max_rows, clock)
        # One lane gathers a batch at a time, so what arrives together is not split.
        self._gathering = asyncio.Lock()
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
            items.extend(self._inflight[batch_id].items())
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
        async with self._gathering:
            return await self._gather()

    async def _gather(self) -> tuple[int, Batch]:
        batch = Batch()
        batch_id = next(self._batch_ids)
        self._refill()
        first = await self.queue.get()
        batch.add(first)
        self._inflight[batch_id] = batch
        policy = self._flush
        deadline = policy.deadline(first)
        max_rows = policy.max_rows
        while batch.size < max_rows and not batch.barriers:
            # (A barrier ends the batch; the loop's check below sees it.)
            try:
                batch.add(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                if self._overflow:
                    self._refill()
                    continue
            remaining = policy.remaining(deadline)
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
        if batch.venue_rows:
            self._drop_recent_venue_rows(batch)
        backoff = writer_retry(self._config.retry_initial_s, self._config.retry_max_s).backoff()
        while True:
            try:
                await self._write(lane, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A connection that closed under the write is lost whatever the error says:
                # the batch did not commit, and a new connection may well take it.
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

    def _drop_recent_venue_rows(self, batch: Batch) -> None:
        """Other venues' rows through the same key window as Binance's (their content keys
        include the venue, so keys of two venues never meet)."""
        fresh: list[VenueLiquidation] = []
        for row in batch.venue_rows:
            if self._recent.seen(row.content_key):
                self._metrics.duplicates.labels("memory").inc()
            else:
                fresh.append(row)
        batch.venue_rows = fresh

    async def _connection(self, lane: _Lane) -> asyncpg.Connection:
        if lane.conn is None or lane.conn.is_closed():
            conn = await self._connect()
            try:
                await conn.execute(CONNECTION_DDL)
            except BaseException:
                conn.terminate()
                raise
            lane.conn = conn
        await self._partitions.run_if_due(lane.conn)
        return lane.conn

    async def _write(self, lane: _Lane, batch: Batch) -> None:
        await commit_batch(await self._connection(lane), batch, self._metrics)
