"""Durable consumers of the committed rows: a named position (migrations/0012, table
`consumer_cursors`) that survives restarts, and the loop that moves it.

`DurableCursor.run` is a supervised component. It waits for the feed's head to pass its
position (the feed's LISTEN/NOTIFY and poll wake it: no query of its own while idle), reads at
most `batch_rows` final rows after its position with `Feed.read_range`, hands them to its
consumer, and only when the consumer returns (it has acknowledged them: JetStream acked the
publishes, the alerts were claimed and sent) stores the new position. A consumer that raises
`ConsumerUnavailable` (its destination is down) or a transient database error gets the same
batch again after a backoff (`CONSUMER_RETRY`); the feed, the writer and the sources never wait
for it. Anything else propagates: the supervisor restarts the component, which resumes at the
stored position.

Replicas sharing a name share the position: before each batch the stored position is read, and
a replica behind it jumps forward (what is stored was acknowledged, by whichever replica), so a
replica that was cut off from its destination for a while does not resend what the other
already delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from collector.exceptions import CollectorError
from collector.metrics import Metrics
from collector.out.events import Cursor, FeedEvent
from collector.out.feed import Feed
from collector.retry import Policy, is_transient, sleep_or_stop

log = structlog.get_logger(__name__)

Consume = Callable[[list[FeedEvent]], Awaitable[None]]
# A batch the consumer could not hand on: from 0.5 s (a broker restarting is back within
# seconds) doubling up to 30 s, so a destination that is down for long is asked twice a minute.
# A batch that goes through resets it. ([nats] retry_* set the publisher's own Policy.)
CONSUMER_RETRY = Policy(0.5, 30.0)


# Rows counted for the lag gauge at most (a count beyond this says "far behind" well enough).
LAG_CAP = 1_000_000

# Create the position if it is new ($2-$3: where a new consumer starts); then read it.
_CREATE = """INSERT INTO consumer_cursors (name, committed_xid, seq) VALUES ($1, $2::xid8, $3)
 ON CONFLICT (name) DO NOTHING"""
_READ = "SELECT committed_xid AS xid, seq FROM consumer_cursors WHERE name = $1"
# Forward only: a replica behind another never moves the shared position back.
_ADVANCE = """UPDATE consumer_cursors SET committed_xid = $2::xid8, seq = $3, updated_at = now()
 WHERE name = $1 AND (committed_xid, seq) < ($2::xid8, $3)"""
_LAG = """SELECT count(*) FROM (SELECT 1 FROM liquidation_feed
 WHERE (committed_xid, seq) > ($1::xid8, $2) AND (committed_xid, seq) <= ($3::xid8, $4)
 LIMIT $5) behind"""


class ConsumerUnavailable(CollectorError):
    """The consumer's destination cannot take the batch now (a broker down, a timeout): the
    same batch is handed to it again after a backoff. The message must hold no secret."""


class DurableCursor:
    """One named durable consumer of the feed's committed rows."""

    def __init__(
        self,
        name: str,
        feed: Feed,
        consume: Consume,
        metrics: Metrics,
        *,
        batch_rows: int,
        policy: Policy = CONSUMER_RETRY,
    ) -> None:
        self.name = name
        self.feed = feed
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.position: Cursor | None = None  # None until loaded
        self._consume = consume
        self._policy = policy
        metrics.consumer_rows.labels(name)
        metrics.consumer_retries.labels(name)

    async def load(self) -> Cursor:
        """The stored position; a new consumer starts where this process's feed started (the
        rows committed before it was first configured are not its business). Waits for the
        feed's start."""
        await self.feed.started()
        head = self.feed.first_head
        assert head is not None
        pool = self.feed.pool
        await pool.execute(_CREATE, self.name, head.xid, head.seq)
        row = await pool.fetchrow(_READ, self.name)
        assert row is not None  # created above; rows of this table are never deleted
        stored = Cursor(row["xid"], row["seq"])
        self.position = stored if self.position is None else max(self.position, stored)
        return self.position

    async def run(self, stop: asyncio.Event) -> None:
        """Hand every final row after the stored position to the consumer until `stop`."""
        backoff = self._policy.backoff()
        while not stop.is_set():
            try:
                if self.position is None:
                    await self.load()
                assert self.position is not None
                if not await self.feed.moved_past(self.position, stop):
                    return
                done = await self._one_batch()
            except Exception as exc:
                if not isinstance(exc, ConsumerUnavailable) and not is_transient(exc):
                    raise
                self.metrics.consumer_retries.labels(self.name).inc()
                delay = backoff.next_delay()
                log.warning("consumer.retry_scheduled", consumer=self.name,
                            error=str(exc) if isinstance(exc, ConsumerUnavailable)
                            else type(exc).__name__, delay_s=round(delay, 3))  # fmt: skip
                if await sleep_or_stop(delay, stop):
                    return
                continue
            if done:
                backoff.reset()

    async def _one_batch(self) -> bool:
        """Consume the next batch up to the head; True when one was acknowledged."""
        assert self.position is not None
        pool = self.feed.pool
        row = await pool.fetchrow(_READ, self.name)
        if row is not None:  # another replica may be ahead: what it stored was delivered
            self.position = max(self.position, Cursor(row["xid"], row["seq"]))
        head = self.feed.head
        assert head is not None
        if self.position >= head:
            self.metrics.consumer_lag.labels(self.name).set(0)
            return False
        batch = await self.feed.read_range(self.position, head, self.batch_rows)
        if not batch:  # nothing final between (cannot happen below a read head); move on
            self.position = head
            return False
        await self._consume(batch)
        last = batch[-1].cursor
        await pool.execute(_ADVANCE, self.name, last.xid, last.seq)
        self.position = last
        self.metrics.consumer_rows.labels(self.name).inc(len(batch))
        lag = 0
        if len(batch) == self.batch_rows and last < head:
            lag = await pool.fetchval(_LAG, last.xid, last.seq, head.xid, head.seq, LAG_CAP)
        self.metrics.consumer_lag.labels(self.name).set(lag)
        return True
