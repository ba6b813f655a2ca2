"""What the rollup marking costs PostgreSQL per inserted row, by batch size.

    .venv/bin/python bench/trigger_cost.py [--rows 20000] [--rounds 3]

On a throwaway stock PostgreSQL 15 (bench/cluster.py) with the project's migrations, it inserts
rows into market_liquidations in batches of 1, 10, 100 and 1,000 rows, one transaction per batch
(BEGIN, INSERT ... SELECT ... ON CONFLICT DO NOTHING from a prepared table, COMMIT: the
writer's statement without its COPY), with the rollup's statement trigger (transition table,
`market_rollup_dirty` insert) enabled and disabled, interleaved over --rounds. Trade times
advance 1 ms per row, so a batch spans what it would at 1,000 events/s. It prints the backend's
CPU (user + system, /proc/<pid>/stat) per row for both, and the difference: the marking's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from datetime import UTC, datetime, timedelta

import asyncpg
import yeardata
from cluster import stock_cluster
from e2e import cpu_seconds

BATCHES = (1, 10, 100, 1000)
_COLUMNS = (
    "content_key, event_time, symbol, pair, symbol_type, market, side, liquidated_side, "
    "order_type, time_in_force, status, orig_qty, price, avg_price, last_filled_qty, filled_qty, "
    "notional_usd, received_at, source_host, source_route, source_stream, raw"
)


async def prepare(conn: asyncpg.Connection, rows: int) -> None:
    """`src`: `rows` generated rows numbered n = 1.., to insert from."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    await yeardata.generate(conn, rows, start, start + timedelta(days=1))
    await conn.execute(
        f"CREATE TABLE src AS SELECT row_number() OVER (ORDER BY trade_time) AS n, {_COLUMNS} "
        "FROM market_liquidations"
    )
    await conn.execute("CREATE UNIQUE INDEX ON src (n)")
    await conn.execute("TRUNCATE market_liquidations")
    await conn.execute("ANALYZE")


async def run(conn: asyncpg.Connection, batch: int, rows: int, offset: int) -> float:
    """Backend CPU seconds per row for inserting `rows` rows in batches of `batch`."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    # Each run writes new trade times (offset), so no row conflicts with an earlier run's.
    insert = await conn.prepare(
        f"INSERT INTO market_liquidations (trade_time, {_COLUMNS}) "
        f"SELECT timestamptz '2026-11-02 00:00+00' + ($3::bigint + n) * interval '1 ms', "
        f"{_COLUMNS} FROM src WHERE n BETWEEN $1 AND $2 ON CONFLICT DO NOTHING"
    )
    before = cpu_seconds(pid)
    for lo in range(1, rows + 1, batch):
        async with conn.transaction():
            await insert.fetch(lo, min(lo + batch - 1, rows), offset)
    return (cpu_seconds(pid) - before) / rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with stock_cluster() as cluster:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
              f"{cluster.version}, stock settings", flush=True)  # fmt: skip
        admin = await asyncpg.connect(cluster.dsn)
        await admin.execute("CREATE DATABASE triggers")
        await admin.close()
        dsn = cluster.database_dsn("triggers")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "migrate",
            env={**os.environ, "COLLECTOR_DATABASE_DSN": dsn},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await proc.wait():
            raise SystemExit("collector migrate failed")
        conn = await asyncpg.connect(dsn)
        await prepare(conn, args.rows)
        results: dict[tuple[int, bool], list[float]] = {}
        offset = 0
        for round_ in range(args.rounds):
            for batch in BATCHES:
                for marked in (round_ % 2 == 0, round_ % 2 == 1):
                    verb = "ENABLE" if marked else "DISABLE"
                    await conn.execute(
                        f"ALTER TABLE market_liquidations {verb} TRIGGER market_rollup_insert"
                    )
                    offset += 10 * args.rows
                    per_row = await run(conn, batch, args.rows, offset)
                    results.setdefault((batch, marked), []).append(per_row * 1e6)
                    await conn.execute("DELETE FROM market_rollup_dirty")
            print(f"round {round_ + 1} done", flush=True)
        await conn.close()
    print(f"\nbackend CPU µs per row (median of {args.rounds}), {args.rows:,} rows per run:\n")
    print("| batch rows | trigger on | trigger off | marking | marking per batch |")
    print("|---|---|---|---|---|")
    for batch in BATCHES:
        on = statistics.median(results[batch, True])
        off = statistics.median(results[batch, False])
        print(f"| {batch:,} | {on:,.1f} | {off:,.1f} | {on - off:,.1f} "
              f"({(on - off) / on:.0%}) | {(on - off) * batch:,.0f} µs |")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
