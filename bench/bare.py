"""The bare pipeline bench/compare.py measures the collector against: the least a process can do
to store every liquidation frame of one websocket exactly once, with its raw JSON.

aiohttp websocket -> orjson -> bounded asyncio.Queue -> one connection that, per batch (the first
event, then whatever arrives within 25 ms, at most 5,000 rows), COPYs text rows into a
temporary staging table and runs `INSERT ... SELECT ... ON CONFLICT DO NOTHING` (BEGIN, COPY,
INSERT, COMMIT). No ledger, metrics, rollups, parsing to Decimal, dedup window or reconnects.

    python bench/bare.py WS_URL DSN

It creates its table `bare_liquidations` if missing, prints "ready" once subscribed, and on
SIGTERM prints one JSON line: the socket->commit latencies (seconds) of the events committed
since the last SIGUSR1 (or since the start), in the collector's histogram buckets.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import orjson

QUEUE_MAX = 20_000
BATCH_MAX_ROWS = 5_000
BATCH_MAX_AGE_S = 0.025
# collector/metrics.py's _LATENCY_BUCKETS, so both latencies are estimated the same way.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0)  # fmt: skip

_TABLE = """
CREATE TABLE IF NOT EXISTS bare_liquidations (
    trade_time  timestamptz NOT NULL,
    key         bytea       NOT NULL,
    event_time  timestamptz NOT NULL,
    symbol      text        NOT NULL,
    side        text        NOT NULL,
    order_type  text,
    tif         text,
    status      text        NOT NULL,
    orig_qty    numeric     NOT NULL,
    price       numeric     NOT NULL,
    avg_price   numeric     NOT NULL,
    last_qty    numeric,
    filled_qty  numeric     NOT NULL,
    received_at timestamptz NOT NULL,
    raw         jsonb       NOT NULL,
    PRIMARY KEY (trade_time, key)
)
"""
_COLUMNS = ("trade_ms", "key", "event_ms", "symbol", "side", "order_type", "tif", "status",
            "orig_qty", "price", "avg_price", "last_qty", "filled_qty", "received_s",
            "raw")  # fmt: skip
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS bare_staging ("
    + ", ".join(f"{c} {'bytea' if c == 'key' else 'text'}" for c in _COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_INSERT = """
INSERT INTO bare_liquidations
SELECT to_timestamp(trade_ms::bigint / 1000.0), key, to_timestamp(event_ms::bigint / 1000.0),
       symbol, side, order_type, tif, status, orig_qty::numeric, price::numeric,
       avg_price::numeric, last_qty::numeric, filled_qty::numeric,
       to_timestamp(received_s::double precision), raw::jsonb
  FROM bare_staging
ON CONFLICT DO NOTHING
"""


def record(text: str, received: float) -> tuple[Any, ...]:
    """One staging row from one combined-stream frame (`{"stream": ..., "data": {...}}`)."""
    data = orjson.loads(text)["data"]
    o = data["o"]
    return (
        str(o["T"]), hashlib.blake2b(text.encode(), digest_size=16).digest(), str(data["E"]),
        o["s"], o["S"], o.get("o"), o.get("f"), o["X"], o["q"], o["p"], o["ap"], o.get("l"),
        o["z"], repr(received), text,
    )  # fmt: skip


class Latencies:
    """Socket->commit latencies in histogram buckets (cumulative counts by upper bound)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)

    def add(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def as_json(self) -> bytes:
        cumulative, total = {}, 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            total += count
            cumulative[bound] = total
        return orjson.dumps({"buckets": cumulative, "count": total})


async def read(url: str, queue: asyncio.Queue[tuple[float, tuple[Any, ...]]]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        print("ready", flush=True)
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            received = time.monotonic()
            if '"data"' not in msg.data:
                continue  # a control reply
            await queue.put((received, record(msg.data, time.time())))


async def write(
    dsn: str, queue: asyncio.Queue[tuple[float, tuple[Any, ...]]], latencies: list[Latencies]
) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(_TABLE)
    await conn.execute(_STAGING)
    while True:
        received, row = await queue.get()
        times, rows = [received], [row]
        deadline = time.monotonic() + BATCH_MAX_AGE_S
        while len(rows) < BATCH_MAX_ROWS:
            if queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    received, row = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
            else:
                received, row = queue.get_nowait()
            times.append(received)
            rows.append(row)
        async with conn.transaction():
            await conn.copy_records_to_table("bare_staging", records=rows, columns=_COLUMNS)
            await conn.execute(_INSERT)
        committed = time.monotonic()
        histogram = latencies[0]
        for t in times:
            histogram.add(committed - t)


async def main(url: str, dsn: str) -> None:
    queue: asyncio.Queue[tuple[float, tuple[Any, ...]]] = asyncio.Queue(QUEUE_MAX)
    latencies = [Latencies()]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: latencies.__setitem__(0, Latencies()))
    tasks = [
        asyncio.create_task(read(url, queue)),
        asyncio.create_task(write(dsn, queue, latencies)),
    ]
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
    for task in (*tasks, stopping):
        task.cancel()
    for task in done:
        if task is not stopping and task.exception():
            raise task.exception()  # type: ignore[misc]
    sys.stdout.buffer.write(latencies[0].as_json() + b"\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
