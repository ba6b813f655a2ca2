"""End-to-end benchmark: emulator process -> collector process -> PostgreSQL.

Prints, for this machine:
  1. sustained events/s committed with the emulator offering --rate (default 30,000/s),
  2. socket->commit latency p50/p99 at a fixed 2,000 events/s,
  3. peak RSS of the collector process in each phase.

Figures, not assertions: this is not a test. Uses $BENCH_DSN (a server where it may create and
drop a database), default postgresql://postgres@127.0.0.1:5432/postgres.

    .venv/bin/python bench/e2e.py [--rate 30000] [--seconds 20] [--latency-seconds 20]
                                  [--redundancy N]

The collector runs at the default `[binance] redundancy` (2 connections per shard: every event
is received on each and stored once) unless `--redundancy` says otherwise; "received" counts
the copies on all connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg


def free_port_base(count: int = 6) -> int:
    """A base port with `count` consecutive free ports on loopback."""
    for base in range(20000, 60000, 97):
        sockets = []
        try:
            for offset in range(count):
                s = socket.socket()
                s.bind(("127.0.0.1", base + offset))
                sockets.append(s)
        except OSError:
            continue
        else:
            return base
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free ports")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def status_mb(pid: int, field: str) -> float:
    """A memory field of /proc/<pid>/status (VmRSS: resident now, VmHWM: peak), in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_peak_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB."""
    return status_mb(pid, "VmHWM")


_SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$", re.MULTILINE)


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """Metric samples keyed by `name{labels}`."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return {m[1] + (m[2] or ""): float(m[3]) for m in _SAMPLE.finditer(text)}


def quantile(samples: dict[str, float], q: float) -> float:
    """Estimate a quantile of collector_socket_to_commit_seconds by linear interpolation."""
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), v)
        for k, v in samples.items()
        if k.startswith("collector_socket_to_commit_seconds_bucket") and "+Inf" not in k
    )
    total = samples.get("collector_socket_to_commit_seconds_count", 0.0)
    if not total:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * (
                (rank - lower_count) / span if span else 1
            )
        lower_bound, lower_count = bound, count
    return float("inf")


def share_within(samples: dict[str, float], bound: str) -> float:
    total = samples.get("collector_socket_to_commit_seconds_count", 0.0)
    within = samples.get(f'collector_socket_to_commit_seconds_bucket{{le="{bound}"}}', 0.0)
    return within / total if total else float("nan")


@dataclass
class Phase:
    rows_per_s: float
    offered_per_s: float
    p50_ms: float
    p99_ms: float
    within_75ms: float
    rss_mb: float
    max_queue: float
    collector_cpu: float
    emulator_cpu: float
    machine_cpu: float


async def run_phase(
    dsn: str, rate: float, seconds: float, warmup_s: float, redundancy: int | None = None
) -> Phase:
    base = free_port_base(7)
    http_port = base + 6
    python = sys.executable
    emulator = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "collector",
        "simulate",
        "--rate",
        str(rate),
        "--port-base",
        str(base),
        "--venues",
        "binance",  # Binance alone (its six ports; base + 6 is the collector's)
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "COLLECTOR_DATABASE_DSN": dsn,
        "COLLECTOR_VENUES_ENABLED": "binance",  # the emulator serves Binance only
        "COLLECTOR_BINANCE_FSTREAM_URL": f"ws://127.0.0.1:{base}",
        "COLLECTOR_BINANCE_DSTREAM_URL": f"ws://127.0.0.1:{base + 1}",
        "COLLECTOR_BINANCE_FAPI_URL": f"http://127.0.0.1:{base + 2}",
        "COLLECTOR_BINANCE_DAPI_URL": f"http://127.0.0.1:{base + 3}",
        "COLLECTOR_HTTP_PORT": str(http_port),
        "COLLECTOR_LOG_LEVEL": "warning",
    }
    if redundancy is not None:
        env["COLLECTOR_BINANCE_REDUNDANCY"] = str(redundancy)
    collector = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "collector",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    samples = await scrape(http, http_port)
                    key = 'collector_rows_inserted_total{table="market_liquidations"}'
                    # Start the clock once exchangeInfo (large in this synthetic universe:
                    # one symbol per event/s) has loaded; it happens hourly, not per event.
                    info = sum(
                        v
                        for k, v in samples.items()
                        if k.startswith("collector_exchange_info_refreshes_total")
                        and 'outcome="ok"' in k
                    )
                    if samples.get(key, 0) > 0 and info >= 2:
                        break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("collector produced no rows within 60 s")
                await asyncio.sleep(0.2)
            await asyncio.sleep(warmup_s)
            start = await scrape(http, http_port)
            cpu0 = (cpu_seconds(collector.pid), cpu_seconds(emulator.pid), machine_busy_seconds())
            t0 = time.monotonic()
            max_queue = 0.0
            while time.monotonic() - t0 < seconds:
                await asyncio.sleep(1)
                now = await scrape(http, http_port)
                max_queue = max(max_queue, now.get("collector_queue_depth", 0.0))
            end = await scrape(http, http_port)
            elapsed = time.monotonic() - t0
            cpu1 = (cpu_seconds(collector.pid), cpu_seconds(emulator.pid), machine_busy_seconds())
        key = 'collector_rows_inserted_total{table="market_liquidations"}'
        received = sum(v for k, v in end.items() if k.startswith("collector_events_received_total"))
        received0 = sum(
            v for k, v in start.items() if k.startswith("collector_events_received_total")
        )
        latency = {k: end[k] - start.get(k, 0.0) for k in end if "socket_to_commit" in k}
        return Phase(
            rows_per_s=(end[key] - start[key]) / elapsed,
            offered_per_s=(received - received0) / elapsed,
            p50_ms=quantile(latency, 0.50) * 1000,
            p99_ms=quantile(latency, 0.99) * 1000,
            within_75ms=share_within(latency, "0.075"),
            rss_mb=rss_peak_mb(collector.pid),
            max_queue=max_queue,
            collector_cpu=(cpu1[0] - cpu0[0]) / elapsed,
            emulator_cpu=(cpu1[1] - cpu0[1]) / elapsed,
            machine_cpu=(cpu1[2] - cpu0[2]) / elapsed,
        )
    finally:
        for proc in (collector, emulator):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (collector, emulator):
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def fresh_database(admin_dsn: str) -> tuple[str, str]:
    name = f"collector_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=30_000.0, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput window")
    parser.add_argument("--latency-rate", type=float, default=2_000.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument(
        "--redundancy", type=int, default=None, help="[binance] redundancy (default: the default)"
    )
    args = parser.parse_args()
    admin = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    shown = "default (2)" if args.redundancy is None else str(args.redundancy)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; redundancy {shown}")
    for label, rate, seconds in (
        ("throughput", args.rate, args.seconds),
        ("latency", args.latency_rate, args.latency_seconds),
    ):
        name, dsn = await fresh_database(admin)
        try:
            phase = await run_phase(
                dsn, rate, seconds, warmup_s=args.warmup, redundancy=args.redundancy
            )
        finally:
            await drop_database(admin, name)
        print(
            f"{label:10s} offered {rate:>8,.0f}/s  received {phase.offered_per_s:>8,.0f}/s  "
            f"committed {phase.rows_per_s:>8,.0f} rows/s  socket->commit p50 "
            f"{phase.p50_ms:5.1f} ms p99 {phase.p99_ms:5.1f} ms "
            f"({phase.within_75ms:.2%} <= 75 ms)  "
            f"peak RSS {phase.rss_mb:5.1f} MB  max queue {phase.max_queue:,.0f}  CPU cores: "
            f"collector {phase.collector_cpu:.2f} emulator {phase.emulator_cpu:.2f} "
            f"machine {phase.machine_cpu:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
