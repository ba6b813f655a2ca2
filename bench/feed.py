"""The live feed under load: --subscribers SSE streams while rows commit at --rate events/s.

Prints the feed process's CPU (the collector's side: the feed reader and every stream, in a
process of its own), per subscriber against a run with none, and the commit -> client latency
(p50/p99 over every subscriber's copy of every row: from the INSERT's COMMIT returning to the
frame read by the client). Rows commit in 25 ms batches, as the writer's do. Figures, not
assertions. Runs on a throwaway stock PostgreSQL cluster of its own (bench/cluster.py), because
the feed waits for the whole cluster's snapshot xmin: on a shared server, any other writing
transaction (another suite's DROP DATABASE, a migration) holds rows back and the p99 measures
that. --dsn uses an existing server instead (one where it may create and drop a database).

    PYTHONPATH=. .venv/bin/python bench/feed.py [--subscribers 100] [--rate 200] [--seconds 20]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench.cluster import stock_cluster
from collector.db.migrate import migrate
from collector.out.events import iso
from tests.factories import liquidation
from tests.feed_harness import insert, served

_CLIENT_PROCESSES = 4


def with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def serve(dsn: str, urls: Connection) -> None:
    """The collector's side: a feed and its API, until killed; sends its URL on `urls`."""

    async def main() -> None:
        async with served(dsn, max_subscribers=1000, heartbeat_s=15.0) as s:
            urls.send(s.url)
            await asyncio.Event().wait()

    asyncio.run(main())


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def subscriber(url: str, received: list[tuple[str, float]]) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/liquidations/stream") as r:
        buffer = b""
        async for chunk in r.content.iter_any():
            now = time.time()
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                if frame.startswith(b"id:"):
                    at = frame.index(b'"trade_time":"') + 14  # cheap: clients share a core
                    received.append((frame[at : at + 27].decode(), now))


def clients(url: str, count: int, pipe: Connection) -> None:
    """`count` subscribers in a process of their own (one process cannot read 20,000 frames/s
    on this machine); when told how many rows were committed, waits for all of them (at most
    30 s more) and sends back what it read."""

    async def main() -> None:
        received: list[tuple[str, float]] = []
        tasks = [asyncio.create_task(subscriber(url, received)) for _ in range(count)]
        expected = await asyncio.to_thread(pipe.recv)
        deadline = time.monotonic() + 30
        while len(received) < expected * count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # a benchmark's pause for stragglers
        for t in tasks:
            t.cancel()
        pipe.send(received)

    asyncio.run(main())


async def streams_open(url: str, subscribers: int) -> None:
    """Until the feed's /metrics counts `subscribers` open streams."""
    want = f"collector_feed_subscribers {float(subscribers)}"
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/metrics") as r:
                if want in await r.text():
                    return
            await asyncio.sleep(0.1)


async def run(
    dsn: str, subscribers: int, rate: int, seconds: float, first: int
) -> tuple[float, list[float]]:
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    proc = spawn.Process(target=serve, args=(dsn, theirs))
    proc.start()
    readers: list[tuple[Any, Connection]] = []
    try:
        url = await asyncio.to_thread(ours.recv)
        shares = [subscribers // _CLIENT_PROCESSES + (i < subscribers % _CLIENT_PROCESSES)
                  for i in range(_CLIENT_PROCESSES)]  # fmt: skip
        for count in [c for c in shares if c]:
            mine, its = spawn.Pipe()
            reader = spawn.Process(target=clients, args=(url, count, its))
            reader.start()
            readers.append((reader, mine))
        await streams_open(url, subscribers)
        committed: dict[str, float] = {}
        conn = await asyncpg.connect(dsn)
        per_batch = max(1, rate // 40)
        started_cpu, started = cpu_s(proc.pid), time.monotonic()
        n = 0  # rows `first + n` (each run its own, so none is a duplicate)
        while time.monotonic() - started < seconds:
            rows = [liquidation(first + n + i) for i in range(per_batch)]
            await insert(conn, *rows)
            at = time.time()
            for row in rows:
                committed[iso(row.trade_time)] = at
            n += per_batch
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()) or 0.025)
        elapsed = time.monotonic() - started  # CPU is per second of rows, their delivery included
        await conn.close()
        received: list[tuple[str, float]] = []
        for _, pipe in readers:
            pipe.send(n)
        for _, pipe in readers:
            received += await asyncio.to_thread(pipe.recv)
        used = cpu_s(proc.pid) - started_cpu
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
            ended = [x for x in (await r.text()).splitlines() if x.startswith("collector_feed_d")]
        print("streams ended:", ", ".join(x for x in ended if "_total" in x) or "none")
        # Rows of an earlier run can come too: they were not final (below xmin) when this
        # feed started, because some transaction of the cluster was still open.
        return used / elapsed, [at - committed[k] for k, at in received if k in committed]
    finally:
        for reader, _ in readers:
            reader.kill()
            reader.join()
        proc.kill()
        proc.join()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dsn", default=None, help="an existing server (default: a throwaway)")
    args = parser.parse_args()
    if args.dsn is not None:
        await measure(args, args.dsn)
        return
    with stock_cluster() as cluster:
        await measure(args, cluster.dsn)


async def measure(args: argparse.Namespace, admin_dsn: str) -> None:
    name = f"bench_feed_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_db(admin_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        idle, _ = await run(dsn, 0, args.rate, args.seconds, 0)
        busy, lat = await run(dsn, args.subscribers, args.rate, args.seconds, 10_000_000)
        lat.sort()
        print(f"{args.rate} events/s, {args.seconds:g} s; feed process CPU: {idle:.1%} with no"
              f" subscriber, {busy:.1%} with {args.subscribers}")  # fmt: skip
        print(f"CPU per subscriber: {(busy - idle) / args.subscribers * 100:.3f}% of a core")
        p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99)]
        print(f"commit -> client latency over {len(lat)} deliveries"
              f" (of {args.rate * args.seconds:g} x {args.subscribers}):"
              f" p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")  # fmt: skip
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
