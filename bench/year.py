"""Dashboards and a rollup rebuild over a year of data, on a throwaway stock PostgreSQL 15.

    .venv/bin/python bench/year.py                       # 1 M rows (~3 minutes)
    .venv/bin/python bench/year.py --rows 1000000,10000000

For each size it migrates a fresh database with the project's migrations, generates a year of
liquidations (bench/yeardata.py, loaded with the rollup triggers off, as a restore would), times
a full rebuild of the rollups (`refresh_market_rollup()` from empty, then again with nothing
changed, then `rebuild_market_rollup()`; `--rebuild-only` stops there), records one collector
session covering the year (with a one-hour gap) and the symbols' exchangeInfo, marks the last
two minutes as not yet rolled up (as a live collector leaves them), then runs every Postgres
query of the market dashboard (deploy/grafana/dashboards), with Grafana's macros expanded as
tests/test_dashboards.py expands them, for the last 24 h, 7 d and 365 d: --repeat times each,
printing the first (cold) and the median of the rest (warm), in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import yeardata
from cluster import stock_cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_dashboards import MARKET, View, all_dashboards, expand, postgres_queries

END = datetime(2026, 12, 1, tzinfo=UTC)
START = END - timedelta(days=365)
# Grafana's $__interval for a ~1,000-pixel-wide panel over each range (rounded as Grafana does).
RANGES = (("24 h", timedelta(days=1), "1m"), ("7 d", timedelta(days=7), "10m"),
          ("1 y", timedelta(days=365), "12h"))  # fmt: skip
VALUES = {"market": ["UM", "CM"], "bucket": "auto", "top": "10", "symbol": "BTCUSDT"}


async def migrate(dsn: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "migrate",
        env={**os.environ, "COLLECTOR_DATABASE_DSN": dsn},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode:
        raise SystemExit(f"collector migrate failed: {err.decode()[-2000:]}")


async def timed(conn: asyncpg.Connection, sql: str, *args: object) -> float:
    started = time.perf_counter()
    await conn.fetch(sql, *args)
    return time.perf_counter() - started


async def seed_context(conn: asyncpg.Connection) -> None:
    """A session covering the year but one hour, the symbols, and two marked minutes."""
    gap = START + timedelta(days=200)
    for opened, closed in ((START, gap), (gap + timedelta(hours=1), END)):
        await conn.execute(
            "INSERT INTO ws_sessions (session_id, connection, host, route, url, streams,"
            " opened_at, subscribed_at, first_event_at, last_event_at, last_alive_at, closed_at,"
            " close_reason, events_received) VALUES ($1, 'fstream/market#0', 'fstream', 'market',"
            " 'wss://fstream.binance.com/market/stream?streams=!forceOrder@arr',"
            " ARRAY['!forceOrder@arr'], $2, $2, $2, $3, $3, $3, 'rotation', 0)",
            uuid.uuid4(), opened, closed,
        )  # fmt: skip
    await conn.execute(
        "INSERT INTO symbols (market, symbol, pair, base_asset, quote_asset, margin_asset,"
        " contract_type, contract_size, status, updated_at)"
        " SELECT DISTINCT market, symbol, pair,"
        " regexp_replace(symbol, '(USDT|USDC|USD_PERP)$', ''),"
        " CASE market WHEN 'UM' THEN right(symbol, 4) ELSE 'USD' END, 'USDT', 'PERPETUAL',"
        " CASE market WHEN 'CM' THEN 10 END, 'TRADING', now() FROM market_liquidations"
        " ON CONFLICT DO NOTHING"
    )
    await conn.execute(
        "INSERT INTO market_rollup_dirty (bucket) SELECT DISTINCT date_bin('1 minute', trade_time,"
        " '2000-01-01 00:00:00+00') FROM market_liquidations WHERE trade_time >= $1",
        END - timedelta(minutes=2),
    )


async def one_size(
    cluster_dsn: str, admin: asyncpg.Connection, rows: int, repeat: int, no_dashboards: bool
) -> None:
    name = f"year_{rows}"
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = cluster_dsn.rsplit("/", 1)[0] + f"/{name}"
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await yeardata.generate(conn, rows, START, END)
        await conn.execute("ANALYZE")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        print(f"\n{rows:,} rows over {START:%Y-%m-%d} .. {END:%Y-%m-%d}: generated in "
              f"{time.perf_counter() - started:.0f} s, database {size}", flush=True)  # fmt: skip
        rebuild = "SELECT refresh_market_rollup($1, $2)"
        first = await timed(conn, rebuild, START, END)
        again = await timed(conn, rebuild, START, END)
        minutes = await conn.fetchval("SELECT count(*) FROM market_liquidations_1m")
        hours = await conn.fetchval("SELECT count(*) FROM market_liquidations_1h")
        print(f"rollup rebuild (refresh_market_rollup over the year): {first:.1f} s from empty "
              f"rollups ({minutes:,} minute rows, {hours:,} hour rows), {again:.1f} s again "
              f"with nothing changed", flush=True)  # fmt: skip
        full = await timed(conn, "SELECT rebuild_market_rollup()")
        print(f"full rebuild (rebuild_market_rollup()): {full:.1f} s", flush=True)
        if no_dashboards:
            return
        await seed_context(conn)
        await conn.execute("ANALYZE")
        doc = all_dashboards()[MARKET]
        queries = postgres_queries(doc)
        print(f"\nmarket dashboard, {len(queries)} queries; ms: first run / median of "
              f"{repeat - 1} more")  # fmt: skip
        print("| panel | " + " | ".join(r[0] for r in RANGES) + " |")
        print("|---|" + "---|" * len(RANGES))
        table: dict[str, list[str]] = {q.title: [] for q in queries}
        worst: dict[str, float] = {}
        for _, span, interval in RANGES:
            view = View(END - span, END, interval, VALUES)
            for query in queries:
                sql = expand(query, view, doc)
                runs = [await timed(conn, sql) * 1000 for _ in range(repeat)]
                warm = statistics.median(runs[1:]) if len(runs) > 1 else runs[0]
                table[query.title].append(f"{runs[0]:,.0f} / {warm:,.0f}")
                worst[query.title] = max(worst.get(query.title, 0.0), runs[0])
        for title in sorted(table, key=lambda t: -worst[t]):
            print(f"| {title} | " + " | ".join(table[title]) + " |")
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000000", help="comma-separated dataset sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each query")
    parser.add_argument(
        "--rebuild-only", action="store_true", help="time the rollup rebuilds, not the dashboards"
    )
    args = parser.parse_args()
    with stock_cluster() as cluster:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
              f"{cluster.version}, stock settings (autovacuum on)", flush=True)  # fmt: skip
        admin = await asyncpg.connect(cluster.dsn)
        try:
            for rows in (int(r) for r in args.rows.split(",")):
                await one_size(cluster.dsn, admin, rows, args.repeat, args.rebuild_only)
        finally:
            await admin.close()
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
