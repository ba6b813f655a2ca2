"""`collector export`: stored liquidations of a time range into files, one format at a time.

Rows are streamed from a server-side cursor (`PREFETCH_ROWS` at a time) into one open file at
a time; the query orders rows by file, so each file is written once, start to end. Memory is
bounded by the cursor's prefetch plus, for Parquet, one row group (`writers.ROW_GROUP_ROWS` rows);
gzip and the CSV writers buffer at most `writers.WRITE_LINES` lines. Each file is written under a
temporary name in the output directory, fsynced and renamed into place when complete (on a
worker thread, at most `COMMITS_IN_FLIGHT` at once), so a reader, a crash or an interrupted
export never leaves half a file under a real name. Formats: docs/export.md, written by
`writers`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import asyncpg

from collector.files import tardis
from collector.files.writers import (
    AtomicFile,
    CsvFile,
    ExportError,
    FileWriter,
    ParquetFile,
    TardisFile,
)
from collector.venues import Venue

__all__ = ["ExportError", "ExportRequest", "FileSummary", "Format", "export"]

PREFETCH_ROWS: Final = 10_000
"""Rows the server-side cursor fetches per round trip."""
COMMITS_IN_FLIGHT: Final = 8
"""Finished files whose fsync and rename may run on worker threads while the next is written
(an fsync costs 10-70 ms on this machine's disk, about a file's worth of rows)."""
SORT_MEMORY: Final = "64MB"
"""work_mem of the export's transaction: PostgreSQL sorts up to this much in memory."""


class Format(StrEnum):
    """An export format."""

    TARDIS = "tardis"
    CSV = "csv"
    PARQUET = "parquet"


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What to export: trade times in [from_at, to_at), optionally one venue and some symbols.

    `include_unfilled` (tardis only) keeps Binance events whose status is not FILLED, which
    Tardis drops.
    """

    from_at: datetime
    to_at: datetime
    format: Format
    out_dir: Path
    venue: Venue | None = None
    symbols: tuple[str, ...] = ()
    include_unfilled: bool = False


@dataclass(frozen=True, slots=True)
class FileSummary:
    """One written file: where, how many rows, how many bytes on disk."""

    path: Path
    rows: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.path}\t{self.rows} rows\t{self.bytes} bytes"


# Tardis' columns from each venue's stored fields, as tardis-node's mappers derive them:
# Binance price o.p and amount o.z; Bybit p and v; OKX bkPx and sz (docs/export.md).
# Decimals without trailing zeros (trim_scale), as a JavaScript number prints them, but never
# in exponent form; times as exact integer microseconds.
TARDIS_QUERY: Final = """
WITH t AS (
    SELECT CASE m.market WHEN 'UM' THEN 'binance-futures' ELSE 'binance-delivery' END AS exchange,
           m.symbol, m.trade_time, m.received_at, m.content_key AS k, m.liquidated_side,
           m.price, m.filled_qty AS amount
      FROM market_liquidations m
     WHERE m.trade_time >= $1 AND m.trade_time < $2
       AND ($3::text IS NULL OR $3 = 'binance')
       AND ($5::boolean OR m.status = 'FILLED')
    UNION ALL
    SELECT CASE WHEN v.venue = 'bybit' THEN 'bybit'
                WHEN v.market = 'SWAP' THEN 'okex-swap' ELSE 'okex-futures' END,
           v.symbol, v.trade_time, v.received_at, v.content_key, v.liquidated_side, v.price,
           CASE WHEN v.venue = 'bybit' THEN (v.wire->>'v')::numeric
                ELSE (v.wire->>'sz')::numeric END
      FROM venue_liquidations v
     WHERE v.trade_time >= $1 AND v.trade_time < $2
       AND ($3::text IS NULL OR v.venue = $3)
       AND (v.venue = 'bybit' OR v.market IN ('SWAP', 'FUTURES'))
       AND v.liquidated_side IS NOT NULL AND v.price IS NOT NULL
)
SELECT exchange, symbol, (trade_time AT TIME ZONE 'UTC')::date AS day,
       concat_ws(',', exchange, symbol,
                 (extract(epoch FROM trade_time) * 1000000)::bigint,
                 (extract(epoch FROM received_at) * 1000000)::bigint,
                 '', CASE liquidated_side WHEN 'SHORT' THEN 'buy' ELSE 'sell' END,
                 trim_scale(price), trim_scale(amount)) AS line
  FROM t
 WHERE $4::text[] IS NULL OR symbol = ANY($4)
 ORDER BY day, exchange, symbol, trade_time, received_at, k
"""

_RANGE = """
  FROM liquidations
 WHERE trade_time >= $1 AND trade_time < $2
   AND ($3::text IS NULL OR venue = $3)
   AND ($4::text[] IS NULL OR symbol = ANY($4))
 ORDER BY venue, day, trade_time, market, symbol, received_at
"""
_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
# Decimals as PostgreSQL spells them (exact, the stored scale kept), times ISO-8601 UTC.
CSV_QUERY: Final = f"""
SELECT venue AS file_venue, (trade_time AT TIME ZONE 'UTC')::date AS day,
       venue, market, symbol, base_asset, liquidated_side,
       price::text, qty::text, notional_usd::text,
       to_char(trade_time AT TIME ZONE 'UTC', {_ISO}),
       to_char(received_at AT TIME ZONE 'UTC', {_ISO})
{_RANGE}"""
PARQUET_QUERY: Final = f"""
SELECT venue AS file_venue, (trade_time AT TIME ZONE 'UTC')::date AS day,
       venue, market, symbol, base_asset, liquidated_side, price, qty, notional_usd,
       (extract(epoch FROM trade_time) * 1000000)::bigint AS trade_time_us,
       (extract(epoch FROM received_at) * 1000000)::bigint AS received_at_us
{_RANGE}"""  # noqa: S608


def _tardis_name(record: asyncpg.Record) -> str:
    return tardis.file_name(record["exchange"], record["day"], record["symbol"])


def _venue_name(extension: str) -> Callable[[asyncpg.Record], str]:
    def name(record: asyncpg.Record) -> str:
        day: date = record["day"]
        return f"{record['file_venue']}_liquidations_{day.isoformat()}.{extension}"

    return name


class _Plan(NamedTuple):
    query: str
    args: list[Any]
    file_columns: int
    """The leading columns of a row that say which file it belongs to."""
    name_of: Callable[[asyncpg.Record], str]


def _plan(request: ExportRequest) -> _Plan:
    """The query, its arguments and the file of a row, for the request's format."""
    venue = request.venue.value if request.venue is not None else None
    symbols = list(request.symbols) or None
    args: list[Any] = [request.from_at, request.to_at, venue, symbols]
    if request.format is Format.TARDIS:
        return _Plan(TARDIS_QUERY, [*args, request.include_unfilled], 3, _tardis_name)
    if request.format is Format.CSV:
        return _Plan(CSV_QUERY, args, 2, _venue_name("csv.gz"))
    return _Plan(PARQUET_QUERY, args, 2, _venue_name("parquet"))


def _open(fmt: Format, raw: IO[bytes], label: str) -> FileWriter:
    if fmt is Format.TARDIS:
        return TardisFile(raw)
    if fmt is Format.CSV:
        return CsvFile(raw)
    return ParquetFile(raw, label)


async def export(
    conn: asyncpg.Connection,
    request: ExportRequest,
    on_file: Callable[[FileSummary], None] = lambda _: None,
    on_progress: Callable[[int], None] = lambda _: None,
) -> list[FileSummary]:
    """Write the request's rows into files in `request.out_dir` (created if missing); return
    one summary per file, in the order written (`on_file` hears each as it is renamed into
    place, `on_progress` the running row count every `PREFETCH_ROWS` rows).

    A range without rows writes no file. Raises `ExportError` when a value cannot be written
    exactly (Parquet); files completed before it stay, the one in progress is removed.
    """
    plan = _plan(request)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    written: list[FileSummary] = []
    # Files written but not yet fsynced and renamed (at most COMMITS_IN_FLIGHT, in order).
    committing: deque[tuple[AtomicFile, int, asyncio.Future[int]]] = deque()
    current: tuple[tuple[Any, ...], FileWriter, AtomicFile] | None = None
    total = 0

    async def settle(keep: int) -> None:
        while len(committing) > keep:
            file, rows, size = committing[0]
            summary = FileSummary(file.path, rows, await size)
            committing.popleft()
            written.append(summary)
            on_file(summary)

    async def finish() -> None:
        nonlocal current
        if current is not None:
            _, writer, file = current
            writer.close()  # may raise (a value Parquet cannot hold): `current` is discarded
            current = None
            committing.append((file, writer.rows, asyncio.ensure_future(
                asyncio.to_thread(file.commit))))  # fmt: skip
            await settle(COMMITS_IN_FLIGHT)

    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            # The sort by file is the query's one big cost: let it run in memory.
            await conn.execute(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
            async for record in conn.cursor(plan.query, *plan.args, prefetch=PREFETCH_ROWS):
                key = record[: plan.file_columns]
                if current is None or current[0] != key:
                    await finish()
                    name = plan.name_of(record)
                    file = AtomicFile(request.out_dir / name)
                    current = (key, _open(request.format, file.raw, name), file)
                current[1].write(record)
                total += 1
                if total % PREFETCH_ROWS == 0:
                    on_progress(total)
        await finish()
        await settle(0)
    except BaseException:
        if current is not None:
            with contextlib.suppress(Exception):
                current[1].abort()
            current[2].discard()
        for _, _, size in committing:  # a commit that is running completes or discards itself
            with contextlib.suppress(Exception):
                await size
        raise
    return written
