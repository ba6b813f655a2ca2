"""One batch in one transaction: market rows (Binance's, then other venues') through COPY into
a staging table and `INSERT ... ON CONFLICT DO NOTHING`, dead letters by COPY, ledger snapshots
by upsert, repairs by insert.

A row Postgres rejects (SQLSTATE class 22/23, `retry.is_data_error`) costs its batch one
savepoint rollback: the rows are then inserted one by one, the rejected ones dead-lettered,
and the rest commit. Every other error propagates to the writer, which retries or fails.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
import structlog

from collector.metrics import Metrics
from collector.model import DeadLetter, MarketLiquidation
from collector.retry import is_data_error
from collector.sink.batch import Batch
from collector.sink.columns import (
    DL_COLUMNS,
    INSERT_ML,
    INSERT_ML_ONE,
    INSERT_REPAIR,
    INSERT_VL,
    INSERT_VL_ONE,
    ML_COLUMNS,
    UPSERT_SESSION,
    VL_COLUMNS,
    dead_letter_record,
    ml_record,
    repair_args,
    session_args,
    vl_record,
)
from collector.venues import VenueLiquidation

log = structlog.get_logger(__name__)


async def commit_batch(conn: asyncpg.Connection, batch: Batch, metrics: Metrics) -> None:
    """Write `batch` in one transaction on `conn` and count what it did; see the docstring."""
    started = time.monotonic()
    inserted = 0
    rejected: list[DeadLetter] = []
    async with conn.transaction():
        if batch.liquidations:
            try:
                async with conn.transaction():  # a savepoint: a bad row costs only a retry
                    inserted = await _insert_liquidations(conn, batch.liquidations)
            except asyncpg.PostgresError as exc:
                if not is_data_error(exc):
                    raise
                metrics.write_errors.labels("data").inc()
                inserted, rejected = await _insert_one_by_one(conn, batch.liquidations)
        venue_inserted, venue_rejected = 0, list[DeadLetter]()
        if batch.venue_rows:
            venue_inserted, venue_rejected = await _commit_venue_rows(
                conn, batch.venue_rows, metrics
            )
        dead = batch.dead_letters + rejected + venue_rejected
        if dead:
            await conn.copy_records_to_table(
                "dead_letters", records=[dead_letter_record(d) for d in dead], columns=DL_COLUMNS
            )
        if batch.sessions:
            await conn.executemany(
                UPSERT_SESSION, [session_args(s) for s in batch.sessions.values()]
            )
        if batch.repairs:
            await conn.executemany(INSERT_REPAIR, [repair_args(r) for r in batch.repairs])
    committed = time.monotonic()
    m = metrics
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
    if batch.venue_rows:
        _count_venue_rows(m, batch.venue_rows, venue_inserted, venue_rejected)
    observe = m.socket_to_commit_seconds.observe
    for row in batch.liquidations:
        if row.received_monotonic:
            observe(committed - row.received_monotonic)


async def _insert_liquidations(conn: asyncpg.Connection, rows: Sequence[MarketLiquidation]) -> int:
    await conn.copy_records_to_table(
        "ml_staging", records=[ml_record(r) for r in rows], columns=ML_COLUMNS
    )
    status = await conn.execute(INSERT_ML)
    return int(status.rsplit(" ", 1)[1])


async def _insert_one_by_one(
    conn: asyncpg.Connection, rows: Sequence[MarketLiquidation]
) -> tuple[int, list[DeadLetter]]:
    """Insert rows singly so the ones Postgres rejects are isolated and dead-lettered."""
    inserted = 0
    rejected: list[DeadLetter] = []
    for row in rows:
        try:
            async with conn.transaction():
                status = await conn.execute(INSERT_ML_ONE, *ml_record(row))
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


# -- other venues' rows -------------------------------------------------------------------------
# The same pattern as Binance's rows above, in functions of their own.


async def _commit_venue_rows(
    conn: asyncpg.Connection, rows: Sequence[VenueLiquidation], metrics: Metrics
) -> tuple[int, list[DeadLetter]]:
    """COPY and insert `rows` under a savepoint; on a row Postgres rejects, insert them one by
    one and return the rejected ones as dead letters. Returns (inserted, rejected)."""
    try:
        async with conn.transaction():
            return await _insert_venue_rows(conn, rows), []
    except asyncpg.PostgresError as exc:
        if not is_data_error(exc):
            raise
        metrics.write_errors.labels("data").inc()
        return await _insert_venue_rows_one_by_one(conn, rows)


async def _insert_venue_rows(conn: asyncpg.Connection, rows: Sequence[VenueLiquidation]) -> int:
    await conn.copy_records_to_table(
        "vl_staging", records=[vl_record(r) for r in rows], columns=VL_COLUMNS
    )
    status = await conn.execute(INSERT_VL)
    return int(status.rsplit(" ", 1)[1])


async def _insert_venue_rows_one_by_one(
    conn: asyncpg.Connection, rows: Sequence[VenueLiquidation]
) -> tuple[int, list[DeadLetter]]:
    """Insert rows singly so the ones Postgres rejects are isolated and dead-lettered."""
    inserted = 0
    rejected: list[DeadLetter] = []
    for row in rows:
        try:
            async with conn.transaction():
                status = await conn.execute(INSERT_VL_ONE, *vl_record(row))
            inserted += int(status.rsplit(" ", 1)[1])
        except asyncpg.PostgresError as exc:
            if not is_data_error(exc):
                raise
            log.warning(
                "writer.row_rejected",
                venue=str(row.venue),
                symbol=row.symbol,
                key=str(row.content_key),
                sqlstate=exc.sqlstate,
                error=str(exc)[:200],
            )
            rejected.append(
                DeadLetter(
                    received_at=row.received_at,
                    source=f"{row.venue}/{row.source}",
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
