"""One batch in one transaction: Binance's market rows by one `INSERT ... SELECT FROM
jsonb_array_elements(...) ON CONFLICT DO NOTHING` (a batch of them alone: autocommitted, one
round trip; a large one through COPY into a staging table and the same insert), other venues' rows
through COPY into a staging table and the same insert, dead letters by COPY, ledger snapshots by
upsert, repairs by insert.

A row Postgres rejects (SQLSTATE class 22/23, `retry.is_data_error`) costs its batch one
rollback: the batch is then written again with a savepoint per kind of row, the failing kind
inserted one by one, the rejected rows dead-lettered, and the rest commit. Every other error
propagates to the writer, which retries or fails.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg
import structlog

from collector.metrics import Metrics
from collector.model import DeadLetter, MarketLiquidation
from collector.retry import is_data_error
from collector.sink.batch import Batch
from collector.sink.columns import (
    DL_COLUMNS,
    FEED_LOCK,
    INSERT_ML,
    INSERT_ML_JSON,
    INSERT_ML_ONE,
    INSERT_REPAIR,
    INSERT_VL,
    INSERT_VL_ONE,
    ML_COLUMNS,
    UPSERT_SESSION,
    VL_COLUMNS,
    dead_letter_record,
    ml_json,
    ml_record,
    repair_args,
    session_args,
    vl_record,
)
from collector.venues import VenueLiquidation

log = structlog.get_logger(__name__)

R = TypeVar("R", bound="_Row")


async def commit_batch(conn: asyncpg.Connection, batch: Batch, metrics: Metrics) -> None:
    """Write `batch` in one transaction on `conn` and count what it did; see the docstring."""
    started = time.monotonic()
    try:
        inserted, rejected, venue_inserted, venue_rejected = await _commit(conn, batch)
    except asyncpg.PostgresError as exc:
        if not is_data_error(exc):
            raise
        # Nothing committed: write the batch again, isolating its market rows.
        inserted, rejected, venue_inserted, venue_rejected = await _commit_isolating(
            conn, batch, metrics
        )
    committed = time.monotonic()
    dead = len(batch.dead_letters) + len(rejected) + len(venue_rejected)
    m = metrics
    m.write_seconds.observe(committed - started)
    m.batch_rows.observe(batch.size)
    if inserted:
        m.rows_inserted.labels("market_liquidations").inc(inserted)
    duplicates = len(batch.liquidations) - inserted - len(rejected)
    if duplicates:
        m.duplicates.labels("database").inc(duplicates)
    if dead:
        m.rows_inserted.labels("dead_letters").inc(dead)
    for d in rejected:
        m.dead_letters.labels(d.reason).inc()
    if batch.venue_rows:
        _count_venue_rows(m, batch.venue_rows, venue_inserted, venue_rejected)
    observe = m.socket_to_commit_seconds.observe
    for row in batch.liquidations:
        if row.received_monotonic:
            observe(committed - row.received_monotonic)
    if batch.venue_rows:
        # Bybit and OKX rows carry their wall-clock receive stamp only (taken as the frame came
        # off the socket); rows read back by a REST repair have no socket latency to report.
        now = datetime.now(UTC)
        for vrow in batch.venue_rows:
            if vrow.source == "ws":
                observe(max(0.0, (now - vrow.received_at).total_seconds()))


_Outcome = tuple[int, list[DeadLetter], int, list[DeadLetter]]


async def _commit(conn: asyncpg.Connection, batch: Batch) -> _Outcome:
    """The batch without savepoints: market rows alone in one autocommitted statement (one
    round trip), anything else in one transaction. A rejected row raises, and nothing commits."""
    alone = not (batch.venue_rows or batch.dead_letters or batch.sessions or batch.repairs)
    if alone and len(batch.liquidations) <= JSON_MAX_ROWS:
        inserted = await _insert_liquidations(conn, batch.liquidations) if batch.liquidations else 0
        return inserted, [], 0, []
    async with conn.transaction():
        await conn.execute(FEED_LOCK)
        inserted = await _insert_liquidations(conn, batch.liquidations) if batch.liquidations else 0
        venue_inserted = await _insert_venue_rows(conn, batch.venue_rows) if batch.venue_rows else 0
        await _write_the_rest(conn, batch, [])
    return inserted, [], venue_inserted, []


async def _commit_isolating(conn: asyncpg.Connection, batch: Batch, metrics: Metrics) -> _Outcome:
    """The batch in one transaction, each kind of row under a savepoint: a rejected row costs its
    kind one savepoint rollback, then they are inserted one by one (the rejected dead-lettered)."""
    inserted, rejected = 0, list[DeadLetter]()
    venue_inserted, venue_rejected = 0, list[DeadLetter]()
    async with conn.transaction():
        await conn.execute(FEED_LOCK)  # in the transaction, not a savepoint that may roll back
        if batch.liquidations:
            inserted, rejected = await _isolating(
                conn, batch.liquidations, _insert_liquidations, INSERT_ML_ONE, ml_record,
                lambda r: f"{r.source_host}/{r.source_stream}", metrics,
            )  # fmt: skip
        if batch.venue_rows:
            venue_inserted, venue_rejected = await _isolating(
                conn, batch.venue_rows, _insert_venue_rows, INSERT_VL_ONE, vl_record,
                lambda r: f"{r.venue}/{r.source}", metrics,
            )  # fmt: skip
        await _write_the_rest(conn, batch, rejected + venue_rejected)
    return inserted, rejected, venue_inserted, venue_rejected


async def _write_the_rest(
    conn: asyncpg.Connection, batch: Batch, rejected: list[DeadLetter]
) -> None:
    """Dead letters (the batch's and `rejected`), session snapshots and repairs."""
    dead = batch.dead_letters + rejected
    if dead:
        await conn.copy_records_to_table(
            "dead_letters", records=[dead_letter_record(d) for d in dead], columns=DL_COLUMNS
        )
    if batch.sessions:
        await conn.executemany(UPSERT_SESSION, [session_args(s) for s in batch.sessions.values()])
    if batch.repairs:
        await conn.executemany(INSERT_REPAIR, [repair_args(r) for r in batch.repairs])


# Up to this many market rows go as one JSON document (one statement: autocommitted when alone
# in the batch); more go through COPY into the staging table, inside a transaction. Round trips
# and client CPU matter for small batches; for large ones COPY's cheaper server side does
# (client + backend us per row: 400 rows 8 + 52 JSON, 18 + 47 COPY; 1,500 rows 8 + 51 against
# 15 + 38).
JSON_MAX_ROWS = 500


async def _insert_liquidations(conn: asyncpg.Connection, rows: Sequence[MarketLiquidation]) -> int:
    """`rows` by one statement (`columns.INSERT_ML_JSON`) or, above `JSON_MAX_ROWS` (in a
    transaction: the staging table empties on commit), by COPY and `columns.INSERT_ML`."""
    if len(rows) <= JSON_MAX_ROWS:
        status = await conn.execute(INSERT_ML_JSON, ml_json(rows))
    else:
        await conn.copy_records_to_table(
            "ml_staging", records=[ml_record(r) for r in rows], columns=ML_COLUMNS
        )
        status = await conn.execute(INSERT_ML)
    return int(status.rsplit(" ", 1)[1])


# -- other venues' rows -------------------------------------------------------------------------
# COPY into their staging table and one insert, as large Binance batches are.


async def _insert_venue_rows(conn: asyncpg.Connection, rows: Sequence[VenueLiquidation]) -> int:
    await conn.copy_records_to_table(
        "vl_staging", records=[vl_record(r) for r in rows], columns=VL_COLUMNS
    )
    status = await conn.execute(INSERT_VL)
    return int(status.rsplit(" ", 1)[1])


class _Row(Protocol):
    """What isolating a rejected row reads of a market or venue row."""

    @property
    def symbol(self) -> str: ...
    @property
    def content_key(self) -> bytes: ...
    @property
    def received_at(self) -> datetime: ...
    @property
    def raw(self) -> str: ...


async def _isolating(
    conn: asyncpg.Connection,
    rows: Sequence[R],
    insert: Callable[[asyncpg.Connection, Sequence[R]], Awaitable[int]],
    insert_one: str,
    values: Callable[[R], list[Any]],
    source: Callable[[R], str],
    metrics: Metrics,
) -> tuple[int, list[DeadLetter]]:
    """`insert` all `rows` under a savepoint; when Postgres rejects one, insert them singly
    (`insert_one` of `values(row)`, each under its own savepoint) so the rejected ones are
    isolated and dead-lettered and the rest inserted. Returns (inserted, rejected)."""
    try:
        async with conn.transaction():
            return await insert(conn, rows), []
    except asyncpg.PostgresError as exc:
        if not is_data_error(exc):
            raise
        metrics.write_errors.labels("data").inc()
    inserted = 0
    rejected: list[DeadLetter] = []
    for row in rows:
        try:
            async with conn.transaction():
                status = await conn.execute(insert_one, *values(row))
            inserted += int(status.rsplit(" ", 1)[1])
        except asyncpg.PostgresError as exc:
            if not is_data_error(exc):
                raise
            log.warning(
                "writer.row_rejected",
                source=source(row),
                symbol=row.symbol,
                key=str(row.content_key),
                sqlstate=exc.sqlstate,
                error=str(exc)[:200],
            )
            rejected.append(
                DeadLetter(
                    received_at=row.received_at,
                    source=source(row),
                    reason="db_rejected",
                    detail=f"{exc.sqlstate}: {exc}"[:1000],
                    raw=row.raw.encode(),
                )
            )
    return inserted, rejected


def _count_venue_rows(
    m: Metrics, rows: Sequence[VenueLiquidation], inserted: int, rejected: list[DeadLetter]
) -> None:
    if inserted:
        m.rows_inserted.labels("venue_liquidations").inc(inserted)
    duplicates = len(rows) - inserted - len(rejected)
    if duplicates:
        m.duplicates.labels("database").inc(duplicates)
    for d in rejected:
        m.dead_letters.labels(d.reason).inc()
