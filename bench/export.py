"""Export benchmark: rows/s of `collector export` for tardis, csv and parquet on 1 M rows.

Creates a throwaway database on $BENCH_DSN (a server where it may create and drop one; default
postgresql://postgres@127.0.0.1:5432/postgres), migrates it, generates --rows liquidations in
SQL (60% Binance USD-M, 20% Bybit, 20% OKX SWAP; 20 symbols each, over three UTC days), then
times `collector.files.export.export` (what the command runs) once per format into a temporary
directory, and drops the database. Figures, not assertions: this is not a test.

    .venv/bin/python bench/export.py [--rows 1000000] [--formats tardis,parquet,csv]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from collector.db.migrate import migrate
from collector.files.export import ExportRequest, Format, export

START = datetime(2026, 11, 18, tzinfo=UTC)
SPAN_S = 3 * 86_400

# i-th row: a time spread over three days, one of 20 symbols, alternating sides.
GENERATE_BINANCE = """
INSERT INTO market_liquidations (
    trade_time, content_key, event_time, symbol, market, side, liquidated_side, order_type,
    time_in_force, status, orig_qty, price, avg_price, last_filled_qty, filled_qty,
    notional_usd, received_at, source_host, source_route, source_stream, raw)
SELECT t, decode(md5('b' || i), 'hex'), t, 'SYM' || (i % 20) || 'USDT', 'UM',
       CASE WHEN i % 2 = 0 THEN 'SELL' ELSE 'BUY' END,
       CASE WHEN i % 2 = 0 THEN 'LONG' ELSE 'SHORT' END, 'LIMIT', 'IOC', 'FILLED',
       q, p, p, q, q, q * p, t + interval '3 milliseconds', 'fstream', 'market',
       '!forceOrder@arr', '{}'::jsonb
  FROM (SELECT i, $1::timestamptz + (i * $3::numeric / $2) * interval '1 second' AS t,
               round((1 + i % 997) / 1000.0, 3) AS q, round(100 + (i % 5000) / 10.0, 2) AS p
          FROM generate_series(1, $2) AS i) g
"""
GENERATE_VENUE = """
INSERT INTO venue_liquidations (
    trade_time, venue, content_key, market, symbol, base_asset, liquidated_side, price, qty,
    notional_usd, received_at, wire, raw, origin)
SELECT t, $4, decode(md5($4 || i), 'hex'), $5, s, 'SYM' || (i % 20),
       CASE WHEN i % 2 = 0 THEN 'LONG' ELSE 'SHORT' END, p, q, q * p,
       t + interval '40 milliseconds',
       CASE WHEN $4 = 'bybit'
            THEN jsonb_build_object('T', '0', 's', s, 'S', 'Buy', 'v', q::text, 'p', p::text)
            ELSE jsonb_build_object('instId', s, 'side', 'sell', 'sz', q::text, 'bkPx', p::text)
       END, '{}'::jsonb, 'ws'
  FROM (SELECT i, $1::timestamptz + (i * $3::numeric / $2) * interval '1 second' AS t,
               CASE WHEN $4 = 'bybit' THEN 'SYM' || (i % 20) || 'USDT'
                    ELSE 'SYM' || (i % 20) || '-USDT-SWAP' END AS s,
               round((1 + i % 997) / 10.0, 1) AS q, round(0.5 + (i % 5000) / 10000.0, 5) AS p
          FROM generate_series(1, $2) AS i) g
"""


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def generate(conn: asyncpg.Connection, rows: int) -> None:
    binance, bybit = rows * 6 // 10, rows * 2 // 10
    okx = rows - binance - bybit
    for table in ("market_liquidations", "venue_liquidations"):
        await conn.execute(
            "SELECT collector_ensure_monthly_partitions($1::regclass, $2, 1)", table, START
        )
    await conn.execute(GENERATE_BINANCE, START, binance, SPAN_S)
    await conn.execute(GENERATE_VENUE, START, bybit, SPAN_S, "bybit", "linear")
    await conn.execute(GENERATE_VENUE, START, okx, SPAN_S, "okx", "SWAP")
    await conn.execute("ANALYZE")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="tardis,parquet,csv")
    args = parser.parse_args()
    admin_dsn = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"bench_export_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(with_database(admin_dsn, name))
        try:
            await migrate(conn)
            began = time.perf_counter()
            await generate(conn, args.rows)
            print(f"generated {args.rows:,} rows in {time.perf_counter() - began:.1f} s")
            end = datetime.fromtimestamp(START.timestamp() + SPAN_S + 1, UTC)
            for fmt in args.formats.split(","):
                with tempfile.TemporaryDirectory() as out:
                    request = ExportRequest(START, end, Format(fmt), Path(out))
                    began = time.perf_counter()
                    files = await export(conn, request)
                    seconds = time.perf_counter() - began
                    rows = sum(f.rows for f in files)
                    size = sum(f.bytes for f in files)
                    print(f"{fmt:8} {rows:>9,} rows {len(files):>4} files {size / 1e6:8.1f} MB "
                          f"{seconds:6.1f} s {rows / seconds:>9,.0f} rows/s")  # fmt: skip
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak RSS of this process: {peak_mb:.0f} MB")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
