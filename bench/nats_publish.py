"""What the NATS JetStream publisher costs: rows/s from the database to JetStream acks, and the
process CPU per row, for a backlog of --rows committed rows (the publisher replays it in
[nats] batch_rows batches, each published pipelined and fully acked before the cursor moves).

A fresh database (migrated), a private nats-server (`/usr/sbin/nats-server`, free loopback
port, temporary store), the real `Feed` and `Publisher`. Figures, not assertions.

    PYTHONPATH=. .venv/bin/python bench/nats_publish.py [--rows 20000] [--batch-rows 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from collector.config import FeedConfig, NatsConfig
from collector.db.migrate import migrate
from collector.metrics import Metrics
from collector.out.broker import Publisher
from collector.out.events import START, Cursor
from collector.out.feed import Feed
from collector.sink.columns import INSERT_ML_ONE, ml_record
from tests.factories import liquidation
from tests.test_nats import NatsServer

ADMIN = os.environ.get("COLLECTOR_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def main(rows: int, batch_rows: int) -> None:
    name = f"bench_nats_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        # The publisher starts where its feed starts: start the feed first, then commit.
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        metrics = Metrics()
        feed = Feed(pool, lambda: asyncpg.connect(dsn), FeedConfig(poll_interval_s=0.2), metrics)
        stop = asyncio.Event()
        feed_task = asyncio.create_task(feed.run(stop))
        await feed.started()
        with tempfile.TemporaryDirectory() as store:
            broker = NatsServer(Path(store))
            await broker.start()
            publisher = Publisher(
                NatsConfig(enabled=True, servers=(broker.url,), stream="BENCH",
                           batch_rows=batch_rows), feed, metrics,
            )  # fmt: skip
            # Commit the backlog first (one transaction), so the figure is the publisher's.
            async with conn.transaction():
                await conn.executemany(
                    INSERT_ML_ONE, [ml_record(liquidation(i)) for i in range(rows)]
                )
            last = await conn.fetchrow(
                "SELECT committed_xid AS xid, seq FROM market_liquidations"
                " ORDER BY committed_xid DESC, seq DESC LIMIT 1"
            )
            end = Cursor(int(last["xid"]), int(last["seq"]))
            # Polled: neither position raises an event a bench could await.
            while feed.head is None or feed.head < end:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            cpu0, t0 = time.process_time(), time.perf_counter()
            task = asyncio.create_task(publisher.run(stop))
            while (publisher.cursor.position or START) < end:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            stop.set()
            await task
            await feed_task
            await broker.stop()
        await pool.close()
        await conn.close()
        print(f"rows={rows} batch_rows={batch_rows}: {rows / wall:,.0f} rows/s, "
              f"{cpu / rows * 1e6:.1f} us CPU per row (read, encode, publish, ack)")  # fmt: skip
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch-rows", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.batch_rows))
