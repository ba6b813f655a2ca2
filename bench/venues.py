"""Three venues at once beside Binance alone: CPU per committed event and socket->commit p99, on
a throwaway stock PostgreSQL 15 cluster this script starts itself (bench/cluster.py).

    .venv/bin/python bench/venues.py                       # ~3 minutes: 2 rounds of 30 s
    .venv/bin/python bench/venues.py --rate 200 --seconds 60 --rounds 3

Each round runs both setups, in an order that alternates between rounds:

  * `binance`: `collector simulate --venues binance --rate R`, the collector on Binance alone;
  * `three`: `collector simulate --rate R` (Binance, Bybit and OKX, R events/s each), the
    collector on all three,

each on a fresh database (cloned from one migrated template), the collector configured from
the settings line `collector simulate` prints, at its defaults otherwise (Binance at
redundancy 2: every Binance event received twice, stored once). After rows from every venue
and --warmup seconds it measures --seconds:

  * CPU: user + system time of the collector process plus every PostgreSQL client backend
    connected to its database (/proc/<pid>/stat), per committed row (all venues);
  * rows/s committed per venue (the `liquidations` view, at the start and end of the window);
  * socket->commit p50/p99 per venue: the commit time of each row's transaction
    (`pg_xact_commit_timestamp(xmin)`, so the cluster runs with track_commit_timestamp = on)
    minus its `received_at`, which every source stamps as the frame comes off the socket.
    Stream rows committed in the window, REST-repaired rows left out. The collector's own
    histogram `collector_socket_to_commit_seconds` is printed beside it: it observes Binance
    rows only (the writer does not observe `venue_liquidations` rows), so it checks the
    commit-timestamp figure on Binance's rows and says nothing about Bybit's and OKX's.

Figures, not assertions. Bybit's emulator pushes in batches every 500 ms, as Bybit does, so
Bybit's socket->commit starts at the frame, not at the liquidation's time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import aiohttp
import asyncpg
from cluster import Cluster, free_port, stock_cluster
from compare import _cpu, backend_pids, stop
from e2e import cpu_seconds, quantile, scrape

TEMPLATE = "bench_template"
SETUPS = ("binance", "three")
VENUES = ("binance", "bybit", "okx")

ROWS_BY_VENUE = "SELECT venue, count(*) AS n FROM liquidations GROUP BY venue"
# Stream rows only: OKX's REST repair rows carry the REST answer's arrival, not a frame's.
LATENCY = """
WITH rows AS (
    SELECT 'binance' AS venue, pg_xact_commit_timestamp(xmin) AS committed, received_at
      FROM market_liquidations
    UNION ALL
    SELECT venue, pg_xact_commit_timestamp(xmin), received_at
      FROM venue_liquidations WHERE origin = 'ws'
)
SELECT venue, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY committed - received_at) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY committed - received_at) AS p99
  FROM rows WHERE committed >= $1 AND committed < $2
 GROUP BY venue
"""


@dataclass
class Phase:
    """What one setup did in one round."""

    setup: str
    rate: float
    rows_per_s: dict[str, float] = field(default_factory=dict)
    proc_us: float = float("nan")  # collector CPU µs per committed row
    pg_us: float = float("nan")  # its backends' CPU µs per committed row
    proc_cores: float = 0.0
    pg_cores: float = 0.0
    emulator_cores: float = 0.0
    p50_ms: dict[str, float] = field(default_factory=dict)
    p99_ms: dict[str, float] = field(default_factory=dict)
    hist_p99_ms: float = float("nan")  # the collector's histogram (Binance rows)
    load: float = 0.0

    @property
    def total_rows_per_s(self) -> float:
        return sum(self.rows_per_s.values())

    def line(self) -> str:
        venues = ", ".join(
            f"{v} {self.rows_per_s[v]:.0f}/s p50 {self.p50_ms.get(v, float('nan')):.1f} "
            f"p99 {self.p99_ms.get(v, float('nan')):.1f} ms"
            for v in VENUES
            if v in self.rows_per_s
        )
        return (
            f"{self.setup:8s} {self.total_rows_per_s:6.0f} rows/s  CPU {self.proc_us:7.1f} + "
            f"{self.pg_us:6.1f} µs/row ({self.proc_cores:.2f} + {self.pg_cores:.2f} cores; "
            f"emulator {self.emulator_cores:.2f})  {venues}; histogram p99 "
            f"{self.hist_p99_ms:.1f} ms; load {self.load:.2f}"
        )


async def rows_by_venue(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["venue"]: r["n"] for r in await conn.fetch(ROWS_BY_VENUE)}


async def run_phase(
    cluster: Cluster, admin: asyncpg.Connection, setup: str, args: argparse.Namespace
) -> Phase:
    database = f"bench_{os.getpid()}_{int(time.monotonic() * 1000)}"
    await admin.execute(f'CREATE DATABASE "{database}" TEMPLATE {TEMPLATE}')
    venues = ("binance",) if setup == "binance" else VENUES
    emulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "simulate", "--rate", str(args.rate),
        "--venues", ",".join(venues), "--port-base", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    collector: asyncio.subprocess.Process | None = None
    monitor = await asyncpg.connect(cluster.database_dsn(database, "bench-monitor"))
    phase = Phase(setup, args.rate)
    try:
        assert emulator.stdout is not None
        line = (await asyncio.wait_for(emulator.stdout.readline(), 60)).decode()
        settings = dict(pair.split("=", 1) for pair in line.split())
        http_port = free_port()
        collector = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "run",
            env={**os.environ, **settings,
                 "COLLECTOR_DATABASE_DSN": cluster.database_dsn(database, "bench-subject"),
                 "COLLECTOR_HTTP_PORT": str(http_port), "COLLECTOR_LOG_LEVEL": "warning",
                 "COLLECTOR_WRITER_SPILL_DIR": tempfile.mkdtemp(prefix="bench-spill-")},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while set(await rows_by_venue(monitor)) != set(venues):
            if collector.returncode is not None:
                raise RuntimeError(f"collector exited with {collector.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("no rows from every venue within 120 s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(args.warmup)
        async with aiohttp.ClientSession() as http:
            hist0 = await scrape(http, http_port)
            rows0 = await rows_by_venue(monitor)
            backends = await backend_pids(admin, database)
            w0 = await monitor.fetchval("SELECT clock_timestamp()")
            pg0 = _cpu(backends)
            proc0, emu0, t0 = (
                cpu_seconds(collector.pid),
                cpu_seconds(emulator.pid),
                time.monotonic(),
            )
            while time.monotonic() - t0 < args.seconds:
                await asyncio.sleep(min(1.0, args.seconds - (time.monotonic() - t0)))
                fresh = await backend_pids(admin, database) - backends
                pg0.update(dict.fromkeys(fresh, 0.0))  # connected during the window
                backends |= fresh
            proc1, emu1, pg1 = cpu_seconds(collector.pid), cpu_seconds(emulator.pid), _cpu(backends)
            elapsed = time.monotonic() - t0
            w1 = await monitor.fetchval("SELECT clock_timestamp()")
            rows1 = await rows_by_venue(monitor)
            hist1 = await scrape(http, http_port)
        phase.load = os.getloadavg()[0]
        rows = sum(rows1.values()) - sum(rows0.values())
        proc_s, emu_s = proc1 - proc0, emu1 - emu0
        pg_s = sum(pg1.get(p, pg0[p]) - pg0[p] for p in pg0)
        phase.rows_per_s = {v: (rows1.get(v, 0) - rows0.get(v, 0)) / elapsed for v in venues}
        phase.proc_cores, phase.pg_cores = proc_s / elapsed, pg_s / elapsed
        phase.emulator_cores = emu_s / elapsed
        if rows:
            phase.proc_us, phase.pg_us = proc_s / rows * 1e6, pg_s / rows * 1e6
        # Settle: the window's last rows commit a batch age after they were read.
        await asyncio.sleep(1.0)
        for r in await monitor.fetch(LATENCY, w0, w1):
            phase.p50_ms[r["venue"]] = r["p50"].total_seconds() * 1000
            phase.p99_ms[r["venue"]] = r["p99"].total_seconds() * 1000
        window = {k: v - hist0.get(k, 0.0) for k, v in hist1.items() if "socket_to_commit" in k}
        phase.hist_p99_ms = quantile(window, 0.99) * 1000
    finally:
        await monitor.close()
        if collector is not None:
            await stop(collector)
        await stop(emulator)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return phase


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # noqa: PLR0124 (NaN)
    return statistics.median(values) if values else float("nan")


def report(results: list[Phase], rounds: int) -> None:
    def med(setup: str, get: object) -> float:
        assert callable(get)
        return _median([float(get(p)) for p in results if p.setup == setup])

    print(f"\nMedian of {rounds} round(s). CPU: µs per committed row, collector process + its "
          "PostgreSQL backends. p50 / p99: socket -> commit (commit timestamp - received_at), "
          "per venue; histogram: the collector's collector_socket_to_commit_seconds p99 "
          "(every venue's stream rows).\n")  # fmt: skip
    print("| setup | rows/s committed | CPU µs/row | cores | binance p50 / p99 ms "
          "| bybit p50 / p99 ms | okx p50 / p99 ms | histogram p99 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for setup in SETUPS:
        proc, pg = med(setup, lambda p: p.proc_us), med(setup, lambda p: p.pg_us)
        cores = med(setup, lambda p: p.proc_cores + p.pg_cores)
        per_venue = []
        for v in VENUES:
            p50 = med(setup, lambda p, v=v: p.p50_ms.get(v, float("nan")))
            p99 = med(setup, lambda p, v=v: p.p99_ms.get(v, float("nan")))
            per_venue.append("-" if p99 != p99 else f"{p50:.1f} / {p99:.1f}")  # noqa: PLR0124
        rows = med(setup, lambda p: p.total_rows_per_s)
        hist = med(setup, lambda p: p.hist_p99_ms)
        print(f"| {setup} | {rows:,.0f} | {proc:,.0f} + {pg:,.0f} = {proc + pg:,.0f} "
              f"| {cores:.2f} | " + " | ".join(per_venue) + f" | {hist:.1f} |")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="events/s per venue")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (setups alternate)")
    args = parser.parse_args()
    busy = os.getloadavg()
    with stock_cluster({"track_commit_timestamp": "on"}) as cluster:
        print(f"machine: {os.cpu_count()} cores, load average {busy[0]:.2f} at start; "
              f"python {sys.version.split()[0]}; {cluster.version}, stock settings but "
              f"track_commit_timestamp = on; {args.rate:g} events/s per venue",
              flush=True)  # fmt: skip
        admin = await asyncpg.connect(cluster.database_dsn("postgres", "bench-monitor"))
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "migrate",
            env={**os.environ, "COLLECTOR_DATABASE_DSN": cluster.database_dsn(TEMPLATE)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await migrate.wait():
            raise SystemExit("collector migrate failed on the benchmark cluster")
        results: list[Phase] = []
        for round_ in range(args.rounds):
            for setup in SETUPS if round_ % 2 == 0 else SETUPS[::-1]:
                phase = await run_phase(cluster, admin, setup, args)
                results.append(phase)
                print(f"round {round_ + 1}: {phase.line()}", flush=True)
        await admin.close()
        report(results, args.rounds)
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
