"""The collector beside a bare pipeline (bench/bare.py): CPU per committed event, rows/s, RSS and
socket->commit latency, on a throwaway stock PostgreSQL 15 cluster this script starts itself.

    .venv/bin/python bench/compare.py                      # ~3 minutes: --seconds 6 --rounds 1
    .venv/bin/python bench/compare.py --seconds 30 --rounds 3
    .venv/bin/python bench/compare.py --baseline /tmp/main   # also the collector of another
        # commit (git archive main | tar -x -C /tmp/main), interleaved: before/after

For each round, rate (at rest, 20, 200, 2,000 events/s, then --max-rate, more than either can
take) and subject (the collector at redundancy 2 and 1, the bare pipeline; their order rotates
every round, so drift on the machine spreads over all of them), it starts a fresh database
(cloned from one migrated template), the emulator (`collector simulate`) and the subject, waits
for the first committed row and --warmup seconds, then measures --seconds:

  * CPU: user + system time of the subject's process plus of every PostgreSQL backend connected
    to its database (pg_stat_activity, client backends; /proc/<pid>/stat), per committed row.
    Rows are unique events (the collector stores each event once whatever its redundancy), so at
    redundancy 2 the collector's figure covers receiving and parsing each event twice;
  * committed rows/s (count(*) at the start and end of the window);
  * RSS: the highest VmRSS sampled each second (at rest: after the warm-up);
  * socket->commit p50/p99: the collector's collector_socket_to_commit_seconds histogram (as
    bench/e2e.py reads it), the bare pipeline's own in the same buckets.

It prints each phase as it ends, then the table (median over rounds) with the ratios to the
bare pipeline. Figures, not assertions. PostgreSQL's background processes (autovacuum,
checkpointer, WAL writer) are not counted for either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from cluster import Cluster, stock_cluster
from e2e import cpu_seconds, free_port_base, quantile, scrape, status_mb

HERE = Path(__file__).resolve().parent
TEMPLATE = "bench_template"
SUBJECTS = ["collector r2", "collector r1", "bare"]
# --baseline DIR: "baseline rN" subjects run the collector package found in DIR (a checkout of
# another commit, e.g. `git archive main | tar -x -C DIR`), interleaved with this one; a second
# --baseline is "baseline2 rN", and so on.
BASELINES: dict[str, Path] = {}
# --subject-env "SUBJECT:NAME=VALUE": extra environment for one subject (e.g. another
# COLLECTOR_WRITER_BATCH_MAX_AGE_S for "baseline r2" with --baseline set to this checkout).
SUBJECT_ENV: dict[str, dict[str, str]] = {}
REST = 0.0
MAX = float("inf")


@dataclass
class Phase:
    """What one subject did at one rate in one round."""

    subject: str
    rate: float
    rows_per_s: float = 0.0
    proc_us: float = float("nan")  # CPU µs of the process per committed row
    pg_us: float = float("nan")  # CPU µs of its backends per committed row
    proc_cores: float = 0.0
    pg_cores: float = 0.0
    rss_mb: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    within_50ms: float = float(
        "nan"
    )  # share of the window's rows committed <= 50 ms after the socket
    batch_items: float = float("nan")  # items per writer batch (the collector's histogram)
    backends: int = 0

    def line(self) -> str:
        rate = "rest" if self.rate == REST else "max" if self.rate == MAX else f"{self.rate:,.0f}/s"
        return (
            f"{self.subject:13s} {rate:>9s}  {self.rows_per_s:8,.0f} rows/s  "
            f"CPU {self.proc_us:8,.1f} + {self.pg_us:8,.1f} µs/row "
            f"({self.proc_cores:.2f} + {self.pg_cores:.2f} cores, {self.backends} backends)  "
            f"RSS {self.rss_mb:6.1f} MB  p50 {self.p50_ms:5.1f} ms  p99 {self.p99_ms:5.1f} ms  "
            f"<=50 ms {self.within_50ms:6.2%}  items/batch {self.batch_items:6.1f}"
        )


@dataclass
class Subject:
    """A running subject process and how to read it."""

    proc: asyncio.subprocess.Process
    table: str
    http_port: int | None = None
    lines: list[bytes] = field(default_factory=list)


def _cpu(pids: set[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it disconnected
            found[pid] = cpu_seconds(pid)
    return found


async def backend_pids(admin: asyncpg.Connection, database: str) -> set[int]:
    """The client backends connected to `database`, except the benchmark's own."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'"
        " AND application_name <> 'bench-monitor'",
        database,
    )
    return {r["pid"] for r in rows}


async def start_subject(name: str, cluster: Cluster, database: str, base: int) -> Subject:
    dsn = cluster.database_dsn(database, "bench-subject")
    if name == "bare":
        url = f"ws://127.0.0.1:{base}/market/stream?streams=!forceOrder@arr"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "bare.py"), url, dsn,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return Subject(proc, "bare_liquidations")
    http_port = base + 6
    env = {
        **os.environ,
        "COLLECTOR_DATABASE_DSN": dsn,
        "COLLECTOR_BINANCE_FSTREAM_URL": f"ws://127.0.0.1:{base}",
        "COLLECTOR_BINANCE_DSTREAM_URL": f"ws://127.0.0.1:{base + 1}",
        "COLLECTOR_BINANCE_FAPI_URL": f"http://127.0.0.1:{base + 2}",
        "COLLECTOR_BINANCE_DAPI_URL": f"http://127.0.0.1:{base + 3}",
        "COLLECTOR_HTTP_PORT": str(http_port),
        "COLLECTOR_LOG_LEVEL": "warning",
        "COLLECTOR_BINANCE_REDUNDANCY": name.rsplit("r", 1)[1],
        # The bare pipeline reads Binance only; Bybit and OKX (bench/venues.py measures them)
        # would only retry their real hosts here, which this machine must never reach.
        "COLLECTOR_VENUES_ENABLED": "binance",
        **SUBJECT_ENV.get(name, {}),
    }
    cwd = None
    if name.startswith("baseline"):
        # `-m` puts the working directory first on sys.path, ahead of this checkout's editable
        # install: the baseline's own package is the one imported.
        cwd = BASELINES[name.split(maxsplit=1)[0]]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "run", env=env, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return Subject(proc, "market_liquidations", http_port)


async def wait_ready(subject: Subject, monitor: asyncpg.Connection, rate: float) -> None:
    """Until the subject has committed a row (at rest: is connected and has loaded
    exchangeInfo), within 120 s."""
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if subject.proc.returncode is not None:
                raise RuntimeError(f"subject exited with {subject.proc.returncode}")
            if subject.http_port is not None:
                try:
                    samples = await scrape(http, subject.http_port)
                except (aiohttp.ClientError, OSError):
                    samples = {}
                # exchangeInfo (large for the synthetic universe at high rates) loads once an
                # hour, not per event: start once it has, as bench/e2e.py does.
                info = sum(
                    v
                    for k, v in samples.items()
                    if k.startswith("collector_exchange_info_refreshes_total")
                    and 'outcome="ok"' in k
                )
                ready = info >= 2
            else:
                assert subject.proc.stdout is not None
                if not subject.lines:
                    try:
                        line = await asyncio.wait_for(subject.proc.stdout.readline(), 0.2)
                    except TimeoutError:
                        line = b""
                    if line:
                        subject.lines.append(line)
                ready = bool(subject.lines)
            if ready and rate != REST:
                try:
                    ready = bool(await monitor.fetchval(f"SELECT 1 FROM {subject.table} LIMIT 1"))
                except asyncpg.UndefinedTableError:
                    ready = False
            if ready:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("subject not ready within 120 s")


async def latency(subject: Subject, http: aiohttp.ClientSession) -> dict[str, float]:
    """The subject's socket->commit histogram so far, in Prometheus sample form."""
    if subject.http_port is not None:
        samples = await scrape(http, subject.http_port)
        return {k: v for k, v in samples.items() if "socket_to_commit" in k or "batch_rows" in k}
    return {}


def bare_latency(line: bytes) -> dict[str, float]:
    data = orjson.loads(line)
    name = "collector_socket_to_commit_seconds"
    samples = {f'{name}_bucket{{le="{b}"}}': float(c) for b, c in data["buckets"].items()}
    samples[f"{name}_count"] = float(data["count"])
    return samples


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def run_phase(
    cluster: Cluster, admin: asyncpg.Connection, name: str, rate: float, args: argparse.Namespace
) -> Phase:
    database = f"bench_{os.getpid()}_{int(time.monotonic() * 1000)}"
    await admin.execute(f'CREATE DATABASE "{database}" TEMPLATE {TEMPLATE}')
    base = free_port_base(7)
    offered = args.max_rate if rate == MAX else rate
    emulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "simulate", "--rate", str(offered),
        "--port-base", str(base), "--venues", "binance",  # its six ports; base + 6 is ours
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(1.0)  # the emulator's listeners (it prints them; we just give it time)
    monitor = await asyncpg.connect(cluster.database_dsn(database, "bench-monitor"))
    subject = await start_subject(name, cluster, database, base)
    phase = Phase(name, rate)
    try:
        await wait_ready(subject, monitor, rate)
        await asyncio.sleep(args.warmup)
        pid = subject.proc.pid
        async with aiohttp.ClientSession() as http:
            if subject.http_port is None:
                subject.proc.send_signal(signal.SIGUSR1)  # the bare pipeline: reset latencies
            lat0 = await latency(subject, http)
            count = f"SELECT count(*) FROM {subject.table}"
            rows0 = await monitor.fetchval(count) if rate != REST else 0
            backends = await backend_pids(admin, database)
            pg0, proc0, t0 = _cpu(backends), cpu_seconds(pid), time.monotonic()
            rss = status_mb(pid, "VmRSS")
            profiler = await _profile(pid, name, rate, args)
            while time.monotonic() - t0 < args.seconds:
                await asyncio.sleep(min(1.0, args.seconds - (time.monotonic() - t0)))
                rss = max(rss, status_mb(pid, "VmRSS"))
                fresh = await backend_pids(admin, database) - backends
                pg0.update(dict.fromkeys(fresh, 0.0))  # connected during the window
                backends |= fresh
            proc1, pg1 = cpu_seconds(pid), _cpu(backends)
            elapsed = time.monotonic() - t0
            if profiler is not None:
                await profiler.wait()
            rows1 = await monitor.fetchval(count) if rate != REST else 0
            lat1 = await latency(subject, http)
        rows = rows1 - rows0
        proc_s = proc1 - proc0
        pg_s = sum(pg1.get(p, pg0[p]) - pg0[p] for p in pg0)
        phase.rows_per_s = rows / elapsed
        phase.proc_cores, phase.pg_cores = proc_s / elapsed, pg_s / elapsed
        if rows:
            phase.proc_us, phase.pg_us = proc_s / rows * 1e6, pg_s / rows * 1e6
        phase.rss_mb = rss
        phase.backends = len(backends)
        await monitor.close()
        await stop(subject.proc)
        if subject.http_port is None:
            assert subject.proc.stdout is not None
            tail = (await subject.proc.stdout.read()).strip().splitlines()
            if tail:
                lat1, lat0 = bare_latency(tail[-1]), {}
        if rate != REST:
            window = {k: v - lat0.get(k, 0.0) for k, v in lat1.items()}
            phase.p50_ms = quantile(window, 0.50) * 1000
            phase.p99_ms = quantile(window, 0.99) * 1000
            total = window.get("collector_socket_to_commit_seconds_count", 0.0)
            within = window.get('collector_socket_to_commit_seconds_bucket{le="0.05"}')
            if total and within is not None:
                phase.within_50ms = within / total
            batches = window.get("collector_batch_rows_count", 0.0)
            if batches:
                phase.batch_items = window.get("collector_batch_rows_sum", 0.0) / batches
    finally:
        if not monitor.is_closed():
            await monitor.close()
        await stop(subject.proc)
        await stop(emulator)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return phase


async def _profile(
    pid: int, name: str, rate: float, args: argparse.Namespace
) -> asyncio.subprocess.Process | None:
    """With --profile DIR: py-spy sampling the subject over the window, to
    DIR/<subject>-<rate>.txt (collapsed stacks: `flamegraph.pl`, speedscope, or grep)."""
    if args.profile is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / f"{name.replace(' ', '-')}-{'max' if rate == MAX else int(rate)}.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
        "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # noqa: PLR0124 (NaN)
    return statistics.median(values) if values else float("nan")


def report(results: list[Phase], rates: list[float], rounds: int) -> None:
    def med(subject: str, rate: float, attr: str) -> float:
        return _median(
            [getattr(p, attr) for p in results if p.subject == subject and p.rate == rate]
        )

    def label(rate: float) -> str:
        return "at rest" if rate == REST else "max" if rate == MAX else f"{rate:,.0f}/s"

    print(f"\nMedian of {rounds} round(s). CPU: µs per committed event, process + its PostgreSQL "
          "backends; ratio: total CPU per event, collector / bare.\n")  # fmt: skip
    heads = " | ".join(f"{s} µs/event" for s in SUBJECTS)
    others = [s for s in SUBJECTS if s != "bare"]
    print(f"| rate | {heads} | " + " | ".join(f"ratio {s}" for s in others) + " |")
    print("|---|" + "---|" * (len(SUBJECTS) + len(others)))
    for rate in rates:
        if rate == REST:
            continue
        cells, totals = [], {}
        for s in SUBJECTS:
            proc, pg, rows = (
                med(s, rate, "proc_us"),
                med(s, rate, "pg_us"),
                med(s, rate, "rows_per_s"),
            )
            totals[s] = proc + pg
            cell = f"{proc:,.0f} + {pg:,.0f}"
            if rate == MAX:
                cell += f" ({rows:,.0f} rows/s)"
            cells.append(cell)
        bare = totals.get("bare", float("nan"))  # without a bare subject: no ratios (nan)
        ratios = [totals[s] / bare for s in others]
        extra = ""
        if rate == MAX:
            extra = " / " + " / ".join(
                f"{med(s, rate, 'rows_per_s') / med('bare', rate, 'rows_per_s'):.2f}x rows/s"
                for s in others
            )
        print(f"| {label(rate)} | " + " | ".join(cells) + " | "
              + " | ".join(f"{r:.2f}x" for r in ratios) + f" |{extra}")  # fmt: skip
    print("\n| rate | " + " | ".join(f"{s} RSS MB" for s in SUBJECTS) + " | ratio "
          + SUBJECTS[0] + " |")  # fmt: skip
    print("|---|" + "---|" * (len(SUBJECTS) + 1))
    for rate in rates:
        rss = [med(s, rate, "rss_mb") for s in SUBJECTS]
        bare = med("bare", rate, "rss_mb")
        print(f"| {label(rate)} | " + " | ".join(f"{r:.1f}" for r in rss)
              + f" | {rss[0] / bare:.2f}x |")  # fmt: skip
    rest = [(med(s, REST, "proc_cores") + med(s, REST, "pg_cores")) * 1000 for s in SUBJECTS]
    if REST in rates:
        print("\nCPU at rest (ms per second, process + backends): "
              + ", ".join(f"{s} {c:.1f}" for s, c in zip(SUBJECTS, rest, strict=True)))  # fmt: skip
    print("\n| rate | " + " | ".join(f"{s} p50 / p99 ms" for s in SUBJECTS) + " |")
    print("|---|" + "---|" * len(SUBJECTS))
    for rate in rates:
        if rate == REST:
            continue
        cells = [f"{med(s, rate, 'p50_ms'):.1f} / {med(s, rate, 'p99_ms'):.1f}" for s in SUBJECTS]
        print(f"| {label(rate)} | " + " | ".join(cells) + " |")
    # p50/p99 interpolate within the histogram's buckets (25, 50, 75 ms...); the share within
    # the 50 ms bucket is what the histogram says exactly.
    print("\n| rate | " + " | ".join(f"{s} <= 50 ms, items/batch" for s in SUBJECTS) + " |")
    print("|---|" + "---|" * len(SUBJECTS))
    for rate in rates:
        if rate == REST:
            continue
        cells = [
            f"{med(s, rate, 'within_50ms'):.2%}, {med(s, rate, 'batch_items'):.1f}"
            for s in SUBJECTS
        ]
        print(f"| {label(rate)} | " + " | ".join(cells) + " |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    parser.add_argument("--max-rate", type=float, default=25_000.0, help="offered at 'max'")
    parser.add_argument(
        "--rates", default="rest,20,200,2000,max", help="comma-separated: rest, N, max"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="also run the collector package in this directory (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="also sample each subject with py-spy (on PATH or beside python) into this directory",
    )
    parser.add_argument(
        "--subjects", help="comma-separated subset, e.g. 'collector r2,baseline r2,bare'"
    )
    parser.add_argument(
        "--subject-env",
        action="append",
        default=[],
        help="SUBJECT:NAME=VALUE, extra environment for one collector subject (repeatable)",
    )
    args = parser.parse_args()
    for spec in args.subject_env:
        subject, assignment = spec.split(":", 1)
        key, value = assignment.split("=", 1)
        SUBJECT_ENV.setdefault(subject, {})[key] = value
    for i, directory in enumerate(args.baseline):
        label = f"baseline{i + 1 if i else ''}"
        BASELINES[label] = directory.resolve()
        SUBJECTS[-1:-1] = [f"{label} r2", f"{label} r1"]
    if args.subjects:
        SUBJECTS[:] = [s for s in args.subjects.split(",") if s]
    rates = [
        REST if r == "rest" else MAX if r == "max" else float(r) for r in args.rates.split(",")
    ]
    busy = os.getloadavg()
    with stock_cluster() as cluster:
        print(f"machine: {os.cpu_count()} cores, load average {busy[0]:.2f} at start; "
              f"python {sys.version.split()[0]}; {cluster.version}, stock settings "
              f"(autovacuum on), {cluster.data_dir}", flush=True)  # fmt: skip
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
            order = SUBJECTS[round_ % len(SUBJECTS) :] + SUBJECTS[: round_ % len(SUBJECTS)]
            for rate in rates:
                for name in order:
                    phase = await run_phase(cluster, admin, name, rate, args)
                    results.append(phase)
                    print(f"round {round_ + 1}: {phase.line()}", flush=True)
        await admin.close()
        report(results, rates, args.rounds)
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
