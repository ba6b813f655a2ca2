"""What the feed's committed-order cursor costs the writer per row, three ways.

  baseline  migrations up to 0008 (no cursor);
  columns   0009: `committed_xid xid8` and `seq` defaults on the tables, an index on both, and
            a statement trigger that sends one NOTIFY per INSERT;
  outbox    0008 plus an outbox table written by a statement trigger from its transition table
            (one outbox row per liquidation) and the same NOTIFY.

Each variant gets a fresh database and commits --batches batches of --rows Binance rows the way
the writer does (COPY into `ml_staging`, `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, one
transaction per batch, the real `collector.sink.columns` statements). Figures, not assertions.

    PYTHONPATH=. .venv/bin/python bench/feed_writer_cost.py [--rows 500] [--batches 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from collector.sink.columns import CONNECTION_DDL, INSERT_ML, ML_COLUMNS, ml_record
from tests.factories import liquidation

ROOT = Path(__file__).resolve().parent.parent
OUTBOX = """
CREATE TABLE liquidation_outbox (
    committed_xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq bigserial NOT NULL,
    venue text NOT NULL, trade_time timestamptz NOT NULL, content_key bytea NOT NULL,
    PRIMARY KEY (committed_xid, seq));
CREATE FUNCTION outbox_ml() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO liquidation_outbox (venue, trade_time, content_key)
    SELECT 'binance', n.trade_time, n.content_key FROM new_rows n;
    PERFORM pg_notify('collector_liquidations', pg_current_xact_id()::text);
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_ml AFTER INSERT ON market_liquidations
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_ml();
"""


def with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def variant(admin_dsn: str, name: str, rows: int, batches: int) -> list[float]:
    db = f"bench_feed_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    try:
        conn = await asyncpg.connect(with_db(admin_dsn, db))
        files = sorted((ROOT / "migrations").glob("*.sql"))
        for f in files:
            if f.name.startswith("0009") and name != "columns":
                continue
            await conn.execute(f.read_text())
        if name == "outbox":
            await conn.execute(OUTBOX)
        await conn.execute(CONNECTION_DDL)
        per_row: list[float] = []
        n = 0
        for _ in range(batches):
            records = [ml_record(liquidation(n + i)) for i in range(rows)]
            n += rows
            started = time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table("ml_staging", records=records, columns=ML_COLUMNS)
                await conn.execute(INSERT_ML)
            per_row.append((time.perf_counter() - started) / rows * 1e6)
        await conn.close()
        return per_row
    finally:
        await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    dsn = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    for round_ in range(2):  # interleaved twice: the machine is shared
        for name in ("baseline", "columns", "outbox"):
            us = await variant(dsn, name, args.rows, args.batches)
            us = us[len(us) // 10 :]  # warm-up left out
            print(
                f"round {round_} {name:9s} {statistics.median(us):6.2f} us/row median, "
                f"{statistics.mean(us):6.2f} mean ({args.rows}-row batches)"
            )


if __name__ == "__main__":
    asyncio.run(main())
