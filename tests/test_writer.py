"""The writer against a real Postgres: exact rows, duplicates, bad rows, retries, barriers."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import timedelta
from decimal import Decimal
from typing import NamedTuple

import asyncpg
import pytest

from collector.config import WriterConfig
from collector.metrics import Metrics
from collector.model import DeadLetter, MarketLiquidation, SessionRecord
from collector.retry import is_transient
from collector.sink.columns import (
    INSERT_ML_JSON,
    INSERT_ML_ONE,
    ML_COLUMNS,
    ML_NOT_STORED,
    ml_json,
    ml_record,
)
from collector.sink.commit import JSON_MAX_ROWS
from collector.sink.flush import FlushPolicy
from collector.sink.partitions import ensure_partitions
from collector.sink.writer import Writer
from tests.daemon import eventually, metric_value
from tests.factories import NOW, liquidation, session

FAST = WriterConfig(
    queue_max=1000,
    batch_max_rows=100,
    batch_max_age_s=0.01,
    retry_initial_s=0.01,
    retry_max_s=0.05,
    writers=1,
)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metric_value(metrics.registry, name, **(labels or {}))


async def start(writer: Writer) -> asyncio.Task[None]:
    return asyncio.create_task(writer.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_rows_land_exactly_once_with_duplicates_counted(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Two copies of each event become one row each; the copies are counted as duplicates."""
    metrics = Metrics()
    writer = Writer(lambda: asyncpg.connect(pg_dsn), FAST, metrics)
    task = await start(writer)
    rows = [liquidation(i) for i in range(5)]
    for row in rows + rows:
        await writer.put(row)
    await writer.flush()
    # The same events again in a later batch, past the in-memory window, hit the database key.
    writer._recent = type(writer._recent)(10)  # a fresh window, as after a restart
    for row in rows:
        await writer.put(row)
    await writer.flush()
    await stop(task)
    got = await pg.fetch(
        "SELECT symbol, price, avg_price, filled_qty, notional_usd, market, liquidated_side, "
        "trade_time FROM market_liquidations ORDER BY trade_time"
    )
    assert [tuple(r) for r in got] == [
        (
            "BTCUSDT",
            Decimal(9910),
            Decimal(9910),
            Decimal("0.014"),
            Decimal("138.740"),
            "UM",
            "LONG",
            r.trade_time,
        )
        for r in rows
    ]
    assert sample(metrics, "collector_rows_inserted_total", {"table": "market_liquidations"}) == 5
    assert sample(metrics, "collector_duplicates_total", {"layer": "memory"}) == 5
    assert sample(metrics, "collector_duplicates_total", {"layer": "database"}) == 5


async def test_raw_payload_round_trips_as_jsonb(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """The raw event is stored as jsonb equal to what was received."""
    writer = Writer(lambda: asyncpg.connect(pg_dsn), FAST, Metrics())
    task = await start(writer)
    row = liquidation(1)
    await writer.put(row)
    await writer.flush()
    await stop(task)
    raw = await pg.fetchval("SELECT raw::text FROM market_liquidations")
    assert raw == (
        '{"E": 1795000000004, "e": "forceOrder", "o": {"S": "SELL", "T": 1795000000001, '
        '"X": "FILLED", "f": "IOC", "l": "0.014", "o": "LIMIT", "p": "9910", "q": "0.014", '
        '"s": "BTCUSDT", "z": "0.014", "ap": "9910"}, "ps": "BTCUSDT", "st": 1}'
    )


async def test_a_row_postgres_rejects_is_dead_lettered_and_the_rest_commit(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A row the database refuses costs only itself: it lands in dead_letters, others commit."""
    metrics = Metrics()
    writer = Writer(lambda: asyncpg.connect(pg_dsn), FAST, metrics)
    task = await start(writer)
    good = [liquidation(i) for i in range(3)]
    # NUL bytes are valid JSON escapes but jsonb rejects \u0000: SQLSTATE 22P05.
    bad = liquidation(99)._replace(raw='{"e":"forceOrder","x":"\\u0000"}')
    for row in [good[0], bad, good[1], good[2]]:
        await writer.put(row)
    await writer.flush()
    await stop(task)
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == 3
    dead = await pg.fetch("SELECT source, reason, raw, kept FROM dead_letters")
    assert [(d["source"], d["reason"], bytes(d["raw"]), d["kept"]) for d in dead] == [
        ("fstream/!forceOrder@arr", "db_rejected", bad.raw.encode(), False)
    ]
    assert sample(metrics, "collector_write_errors_total", {"kind": "data"}) == 1
    assert sample(metrics, "collector_dead_letters_total", {"reason": "db_rejected"}) == 1


@pytest.mark.parametrize(
    ("good_rows", "with_session"),
    [(3, True), (JSON_MAX_ROWS + 50, False), (JSON_MAX_ROWS + 50, True)],
    ids=["small-with-session", "large-alone", "large-with-session"],
)
async def test_a_rejected_row_in_any_kind_of_batch_costs_only_itself(
    pg_dsn: str, pg: asyncpg.Connection, good_rows: int, with_session: bool
) -> None:
    """Whichever way a batch is written (one JSON statement or COPY, alone or in a transaction
    with other items), a row the database refuses is dead-lettered and everything else
    commits."""
    metrics = Metrics()
    config = dataclasses.replace(FAST, batch_max_rows=1000)
    writer = Writer(lambda: asyncpg.connect(pg_dsn), config, metrics)
    good = [liquidation(i) for i in range(good_rows)]
    bad = liquidation(10_000)._replace(raw='{"e":"forceOrder","x":"\\u0000"}')
    items: list[MarketLiquidation | SessionRecord] = [*good[:2], bad, *good[2:]]
    if with_session:
        items.append(session())
    for item in items:  # queued before the writer runs: one batch
        await writer.put(item)
    task = await start(writer)
    await writer.flush()
    await stop(task)
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == good_rows
    dead = await pg.fetch("SELECT reason, raw FROM dead_letters")
    assert [(d["reason"], bytes(d["raw"])) for d in dead] == [("db_rejected", bad.raw.encode())]
    assert await pg.fetchval("SELECT count(*) FROM ws_sessions") == int(with_session)
    assert sample(metrics, "collector_write_errors_total", {"kind": "data"}) == 1


async def test_transient_failure_keeps_the_batch_and_retries(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Connection failures are retried with the batch kept; nothing is lost."""
    metrics = Metrics()
    attempts = 0

    async def flaky_connect() -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise ConnectionRefusedError("database restarting")
        return await asyncpg.connect(pg_dsn)

    writer = Writer(flaky_connect, FAST, metrics)
    task = await start(writer)
    for i in range(10):
        await writer.put(liquidation(i))
    await writer.flush()
    await stop(task)
    assert attempts == 4
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == 10
    assert sample(metrics, "collector_write_errors_total", {"kind": "transient"}) == 3
    assert sample(metrics, "collector_database_up") == 1


async def test_dead_letters_and_sessions_are_written(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """Dead letters keep raw bytes; session snapshots merge into one ledger row."""
    writer = Writer(lambda: asyncpg.connect(pg_dsn), FAST, Metrics())
    task = await start(writer)
    s = session()
    await writer.put(s)
    await writer.put(DeadLetter(NOW, "fstream/market", "malformed_json", "bad", b"\x00{oops"))
    await writer.flush()
    later = NOW + timedelta(seconds=30)
    await writer.put(
        dataclasses.replace(
            s, last_alive_at=later, events_received=7, first_event_at=NOW, last_event_at=later
        )
    )
    await writer.put(
        dataclasses.replace(
            s, closed_at=later, close_reason="shutdown", last_alive_at=later, events_received=7
        )
    )
    await writer.flush()
    await stop(task)
    row = await pg.fetchrow("SELECT * FROM ws_sessions")
    assert (row["events_received"], row["closed_at"], row["close_reason"]) == (7, later, "shutdown")
    assert (row["first_event_at"], row["last_event_at"]) == (NOW, later)
    assert row["streams"] == ["!forceOrder@arr"]
    dead = await pg.fetchrow("SELECT reason, detail, raw FROM dead_letters")
    assert tuple(dead) == ("malformed_json", "bad", b"\x00{oops")


async def test_full_queue_blocks_producers(pg_dsn: str) -> None:
    """With the writer stopped, a full queue makes `put` wait instead of growing memory."""
    config = dataclasses.replace(FAST, queue_max=3)
    writer = Writer(lambda: asyncpg.connect(pg_dsn), config, Metrics())
    for i in range(3):
        await writer.put(liquidation(i))
    blocked = asyncio.create_task(writer.put(liquidation(4)))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert writer.queue.qsize() == 3
    task = await start(writer)
    await asyncio.wait_for(blocked, 5)
    await writer.flush()
    await stop(task)


async def test_partitions_absorb_rows_from_the_default(pg: asyncpg.Connection) -> None:
    """Rows that landed in the default partition move into their month when it is created."""
    await pg.execute(
        "INSERT INTO market_liquidations (trade_time, content_key, event_time, symbol, market, "
        "side, liquidated_side, status, orig_qty, price, avg_price, filled_qty, received_at, "
        "source_host, source_route, source_stream, raw) VALUES ('2031-03-04', '\\x01', "
        "'2031-03-04', 'X', 'UM', 'SELL', 'LONG', 'FILLED', 1, 1, 1, 1, now(), 'f', 'm', 's', '{}')"
    )
    assert await pg.fetchval("SELECT tableoid::regclass::text FROM market_liquidations") == (
        "market_liquidations_default"
    )
    assert await ensure_partitions(pg, NOW.replace(year=2031, month=3)) == 4
    assert await pg.fetchval("SELECT tableoid::regclass::text FROM market_liquidations") == (
        "market_liquidations_p203103"
    )


def test_error_classification() -> None:
    """Connection loss and restarts are transient; rejected data and bad SQL are not."""
    assert is_transient(ConnectionResetError())
    assert is_transient(asyncpg.exceptions.AdminShutdownError("x"))
    assert is_transient(asyncpg.exceptions.CannotConnectNowError("x"))
    assert is_transient(asyncpg.exceptions.InternalClientError("cannot switch to state 15"))
    # ALTER DATABASE ... ALLOW_CONNECTIONS false; a failover to a standby not yet promoted.
    assert is_transient(asyncpg.exceptions.ObjectNotInPrerequisiteStateError("x"))
    assert is_transient(asyncpg.exceptions.ReadOnlySQLTransactionError("x"))
    assert not is_transient(asyncpg.exceptions.UntranslatableCharacterError("x"))
    assert not is_transient(asyncpg.exceptions.UndefinedTableError("x"))


async def test_concurrent_lanes_commit_everything_before_flush_returns(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """With three lanes, flush() returns only after every earlier batch of every lane committed."""
    config = dataclasses.replace(FAST, writers=3, batch_max_rows=7)
    metrics = Metrics()
    writer = Writer(lambda: asyncpg.connect(pg_dsn), config, metrics)
    task = await start(writer)
    for round_ in range(5):
        for i in range(100):
            await writer.put(liquidation(round_ * 100 + i))
        await writer.flush()
        assert await count(pg) == (round_ + 1) * 100
    await stop(task)
    assert sample(metrics, "collector_rows_inserted_total", {"table": "market_liquidations"}) == 500


async def count(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM market_liquidations"))


async def test_flush_never_returns_before_an_earlier_item_commits(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Whatever batches the lanes form, flush() returns only after every earlier item committed."""
    config = dataclasses.replace(FAST, writers=3, batch_max_age_s=0.05, batch_max_rows=4)
    writer = Writer(lambda: asyncpg.connect(pg_dsn), config, Metrics())
    task = await start(writer)
    rng = random.Random(7)
    put = 0
    for _ in range(40):
        for _ in range(rng.randrange(1, 6)):
            await writer.put(liquidation(put))
            put += 1
            for _ in range(rng.randrange(0, 4)):
                await asyncio.sleep(0)  # interleave with the lanes taking items
        await writer.flush()
        assert await count(pg) == put
    await stop(task)


async def test_after_begin_shutdown_put_never_waits_and_the_overflow_keeps_order(
    pg_dsn: str,
) -> None:
    """A `put` waiting on the full queue returns at `begin_shutdown`; later ones return at once;
    `unwritten()` gives the queue then the overflow, in the order put."""
    writer = Writer(
        lambda: asyncpg.connect(pg_dsn), dataclasses.replace(FAST, queue_max=3), Metrics()
    )
    rows = [liquidation(i) for i in range(10)]
    for row in rows[:3]:
        await writer.put(row)
    waiting = asyncio.create_task(writer.put(rows[3]))
    await asyncio.sleep(0)  # one loop turn: the put is parked on the full queue
    assert not waiting.done()
    writer.begin_shutdown()
    await asyncio.wait_for(waiting, 1)
    for row in rows[4:]:
        await writer.put(row)
    assert (writer.queue.qsize(), writer.overflow_size) == (3, 7)
    assert writer.unwritten() == rows
    assert writer.items_dropped == 0


async def test_the_overflow_commits_behind_the_queue_when_the_database_takes_it(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Items in the overflow are committed by the running writer, and `flush()` (queued behind
    them) returns only once all are."""
    writer = Writer(
        lambda: asyncpg.connect(pg_dsn), dataclasses.replace(FAST, queue_max=3), Metrics()
    )
    writer.begin_shutdown()
    for i in range(50):
        await writer.put(liquidation(i))
    assert writer.overflow_size == 47
    task = await start(writer)
    try:
        await asyncio.wait_for(writer.flush(), 10)
    finally:
        await stop(task)
    assert await pg.fetchval("SELECT count(*) FROM market_liquidations") == 50
    assert (writer.items_committed, writer.overflow_size, writer.unwritten()) == (50, 0, [])


async def test_every_market_column_is_the_model_field_of_its_name(pg: asyncpg.Connection) -> None:
    """The writer's columns are the model's fields by name (bar the monotonic receive time) and
    columns of the table; a model with its fields in another order gives the same record."""
    assert set(ML_COLUMNS) == set(MarketLiquidation._fields) - ML_NOT_STORED
    table = await pg.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
        "market_liquidations",
    )
    assert set(ML_COLUMNS) <= {r["column_name"] for r in table}
    row = liquidation(1)._replace(notional_usd=None, source_route="")
    record = dict(zip(ML_COLUMNS, ml_record(row), strict=True))
    as_text = {"orig_qty", "price", "avg_price", "last_filled_qty", "filled_qty", "raw"}
    assert record == {
        name: str(getattr(row, name)) if name in as_text else getattr(row, name)
        for name in ML_COLUMNS
    }
    reordered = NamedTuple(  # type: ignore[misc]
        "Reordered", [(name, object) for name in reversed(MarketLiquidation._fields)]
    )
    assert ml_record(reordered(**row._asdict())) == ml_record(row)  # type: ignore[arg-type]


class FixedClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_flush_deadline_counts_from_the_first_row_off_the_socket() -> None:
    clock = FixedClock(1_000.0)
    policy = FlushPolicy(0.025, 100, clock)
    fresh = liquidation(0)._replace(received_monotonic=999.99)
    assert policy.deadline(fresh) == pytest.approx(1_000.015)
    assert policy.remaining(policy.deadline(fresh)) == pytest.approx(0.015)
    stale = liquidation(1)._replace(received_monotonic=900.0)
    assert policy.remaining(policy.deadline(stale)) < 0
    # No socket time (0), or a time from a clock we do not share (later than now): from now.
    assert policy.deadline(liquidation(2)) == pytest.approx(1_000.025)
    future = liquidation(3)._replace(received_monotonic=2_000.0)
    assert policy.deadline(future) == pytest.approx(1_000.025)
    assert policy.deadline(session()) == pytest.approx(1_000.025)


async def test_a_batch_lingers_until_its_age_or_size_and_one_lane_gathers_it(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """With the clock standing still and a 60 s age, three rows read just now become one batch
    of exactly 3 (the size limit) although two lanes are idle; a row read 61 s ago is flushed
    as soon as it is taken, alone."""
    clock = FixedClock(5_000.0)
    config = dataclasses.replace(FAST, writers=2, batch_max_age_s=60.0, batch_max_rows=3)
    metrics = Metrics()
    writer = Writer(lambda: asyncpg.connect(pg_dsn), config, metrics, clock=clock)
    task = await start(writer)
    for i in range(3):
        await writer.put(liquidation(i)._replace(received_monotonic=clock.now))
        for _ in range(5):
            await asyncio.sleep(0)  # let both lanes take what they can
    await eventually(lambda: count(pg), lambda n: n == 3)
    await writer.put(liquidation(3)._replace(received_monotonic=clock.now - 61.0))
    await eventually(lambda: count(pg), lambda n: n == 4)
    await eventually(
        lambda: asyncio.sleep(0, sample(metrics, "collector_batch_rows_count")), lambda n: n == 2
    )
    assert sample(metrics, "collector_batch_rows_sum") == 4
    assert sample(metrics, "collector_batch_rows_bucket", {"le": "1.0"}) == 1
    await stop(task)


async def test_the_json_statement_stores_exactly_what_a_single_insert_stores(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Every column of a row written by `INSERT_ML_JSON` (small batches) equals the same row
    written by `INSERT_ML_ONE` (parameters one by one): microseconds, NULLs, a 20-digit
    decimal, a key with every byte value, text that JSON must escape."""
    await ensure_partitions(pg)
    row = liquidation(7)._replace(
        received_at=NOW + timedelta(microseconds=123_457),
        symbol='BTC"USDT\\\u00e9\U0001f600',
        pair=None,
        symbol_type=None,
        last_filled_qty=None,
        notional_usd=None,
        orig_qty=Decimal("0.00000001234567890123"),
        raw='{"e":"forceOrder","o":{"s":"\\u00e9 \\"x\\""},  "n": 1.50}',
    )
    keys = (bytes(range(16)), bytes(range(240, 256)))
    await pg.execute(INSERT_ML_JSON, ml_json([row._replace(content_key=keys[0])]))
    await pg.execute(INSERT_ML_ONE, *ml_record(row._replace(content_key=keys[1])))
    stored = [
        dict(await pg.fetchrow("SELECT * FROM market_liquidations WHERE content_key = $1", key))
        for key in keys
    ]
    for record in stored:
        for generated in ("content_key", "committed_xid", "seq"):
            del record[generated]
    assert stored[0] == stored[1]
    assert stored[0]["received_at"] == row.received_at
    assert stored[0]["symbol"] == row.symbol
    assert stored[0]["orig_qty"] == Decimal("0.00000001234567890123")
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM market_liquidations WHERE content_key = $1", keys[0]
        )
        == 1
    )
