"""The real image, run by podman: what `deploy/image-test.sh` builds from this checkout.

The script builds the images and sets COLLECTOR_TEST_IMAGE (and the postgres stand-in and the
compose binary); without them every test here is skipped with that reason. The emulator runs in
this process on loopback, from the checkout (the image has none); containers share the host's
network namespace and listen on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from collector.cli import EMULATOR_MISSING
from collector.emulator import Emulator, EmulatorOptions
from tests.daemon import eventually as poll_until
from tests.factories import um_event

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("COLLECTOR_TEST_IMAGE", "")
POSTGRES_IMAGE = os.environ.get("COLLECTOR_TEST_POSTGRES_IMAGE", "")
COMPOSE = os.environ.get("COLLECTOR_TEST_COMPOSE", "")

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(
        not IMAGE,
        reason="COLLECTOR_TEST_IMAGE unset: deploy/image-test.sh builds the image and runs these",
    ),
    pytest.mark.timeout(600),
]

NO_CAPABILITIES = "0000000000000000"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


async def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run a command without blocking the event loop (the emulator serves from it)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def podman(*args: str, timeout: float = 120) -> Result:
    return await run("podman", *args, timeout=timeout)


async def ok(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command that must exit 0; return its stdout, stripped."""
    result = await run(*argv, env=env, timeout=timeout)
    assert result.code == 0, f"{argv} exited {result.code}:\n{result.out}\n{result.err}"
    return result.out.strip()


async def eventually(
    probe: Callable[[], Awaitable[T]], until: Callable[[T], bool], timeout: float, what: str
) -> T:
    """tests.daemon.eventually, polled every 0.25 s: a container's state raises no event."""
    return await poll_until(probe, until, timeout, what, interval_s=0.25)


async def health(container: str) -> bool:
    """One run of the image's HEALTHCHECK (podman runs none by itself without systemd)."""
    return (await podman("healthcheck", "run", container)).code == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emulator_env(emu: Emulator) -> dict[str, str]:
    return {
        # One connection per shard: these tests count what each connection delivers; the
        # redundant pair has its own tests (tests/test_ws_redundancy.py).
        "COLLECTOR_BINANCE_REDUNDANCY": "1",
        # The emulator is Binance's: Bybit and OKX stay off, so no test reaches a real exchange.
        "COLLECTOR_VENUES_ENABLED": "binance",
        "COLLECTOR_BINANCE_FSTREAM_URL": emu.fstream_url,
        "COLLECTOR_BINANCE_DSTREAM_URL": emu.dstream_url,
        "COLLECTOR_BINANCE_FAPI_URL": emu.fapi_url,
        "COLLECTOR_BINANCE_DAPI_URL": emu.dapi_url,
        "COLLECTOR_BINANCE_PAPI_URL": emu.papi_url,
        "COLLECTOR_BINANCE_SAPI_URL": emu.sapi_url,
    }


def ports_of(emu: Emulator) -> dict[str, int]:
    return {name: int(urlsplit(url).port or 0) for name, url in emu.urls.items()}


def proc_status(pid: str) -> dict[str, str]:
    """/proc/<pid>/status of a container's process, read from the host (same PID namespace)."""
    text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


async def rows(dsn: str, sql: str = "SELECT count(*) FROM market_liquidations") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


@pytest.fixture
async def container_names() -> AsyncIterator[list[str]]:
    """Containers and volumes a test creates, removed afterwards whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        logs = await podman("logs", "--tail", "30", name)
        print(f"--- podman logs {name} (last 30 lines)\n{logs.out}{logs.err}")  # shown on failure
        await podman("rm", "--force", "--ignore", "--time", "5", name)
        await podman("volume", "rm", "--force", name)


async def events_received(port: int) -> float:
    """collector_events_received_total over every label, from the container's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("collector_events_received_total")
    )


def run_collector(name: str, volume: str, env: dict[str, str]) -> tuple[str, ...]:
    """`podman run` for the collector as deploy/compose.yaml runs it: read-only root with a
    tmpfs /tmp, no capabilities, no-new-privileges, /var/lib/collector on a volume."""
    return (
        "podman", "run", "--detach", "--name", name, "--network", "host",
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{volume}:/var/lib/collector",
        *(f"--env={k}={v}" for k, v in env.items()), IMAGE,
    )  # fmt: skip


async def publish(emu: Emulator, first_trade_ms: int, count: int) -> None:
    for i in range(count):
        assert await emu.publish(um_event("BTCUSDT", first_trade_ms + i)) == 1


async def test_image_runs_unprivileged_follows_the_streams_and_drains_on_sigterm(
    pg_dsn: str, container_names: list[str]
) -> None:
    """uid 10001, no capabilities, read-only root, writable spill volume; `collector check`
    healthy, unhealthy without the emulator, healthy again; SIGTERM exits 0 with every row in."""
    assert urlsplit(pg_dsn).hostname == "127.0.0.1", "the container reaches PostgreSQL over TCP"
    name = f"collector-image-test-{uuid.uuid4().hex[:8]}"
    container_names.append(name)
    port = free_port()
    async with Emulator(EmulatorOptions()) as emu:
        ports = ports_of(emu)
        env = {
            "COLLECTOR_DATABASE_DSN": pg_dsn,
            "COLLECTOR_HTTP_HOST": "127.0.0.1",
            "COLLECTOR_HTTP_PORT": str(port),
            **emulator_env(emu),
        }
        await ok(*run_collector(name, name, env))
        await eventually(lambda: health(name), bool, 90, "healthy after start")
        assert (await podman("exec", name, "collector", "check")).code == 0

        # Who and what it runs as.
        assert await ok("podman", "exec", name, "id", "-u") == "10001"
        assert await ok("podman", "exec", name, "id", "-g") == "10001"
        cmdline = await ok("podman", "exec", name, "cat", "/proc/1/cmdline")
        assert cmdline.split("\0") == ["/venv/bin/python", "/venv/bin/collector", "run", ""]
        pid = await ok("podman", "inspect", "--format", "{{.State.Pid}}", name)
        status = proc_status(pid)
        assert status["Uid"].split() == ["10001"] * 4
        for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert status[field] == NO_CAPABILITIES, field
        assert status["NoNewPrivs"] == "1"

        # Read-only root; the spill volume is the collector's to write.
        ro = await ok("podman", "inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name)
        assert ro == "true"
        for path in ("/app/probe", "/venv/probe", "/probe"):
            refused = await podman("exec", name, "touch", path)
            assert refused.code == 1
            assert "Read-only file system" in refused.err
        assert await ok("podman", "exec", name, "stat", "-c", "%u:%g %a", "/var/lib/collector") == (
            "10001:10001 750"
        )
        await ok("podman", "exec", name, "sh", "-c",
                 "mkdir -p /var/lib/collector/spill && echo probe > /var/lib/collector/spill/probe"
                 " && rm /var/lib/collector/spill/probe")  # fmt: skip

        await publish(emu, 1_795_000_000_000, 3)
        await eventually(lambda: rows(pg_dsn), lambda n: n == 3, 30, "3 rows")

        # The streams go away: unhealthy; they come back on the same ports: healthy again.
        await emu.stop()
        await eventually(lambda: health(name), lambda h: not h, 90, "unhealthy without streams")
        check = await podman("exec", name, "collector", "check")
        assert check.code == 1
        await emu.start(ports=ports)
        await eventually(lambda: health(name), bool, 120, "healthy after the streams return")
        await emu.wait_until(
            lambda: bool(emu.connections) and all(c.streams for c in emu.connections)
        )
        await publish(emu, 1_795_000_001_000, 2)
        await eventually(lambda: rows(pg_dsn), lambda n: n == 5, 30, "5 rows")

        # SIGTERM (the image's STOPSIGNAL) with compose's 30 s grace: exit 0 well within it.
        started = time.monotonic()
        await ok("podman", "stop", "--time", "30", name)
        stopped_after = time.monotonic() - started
        assert await ok("podman", "inspect", "--format", "{{.State.ExitCode}}", name) == "0"
        assert stopped_after < 20, stopped_after  # shutdown_grace_s
        assert '"event": "supervisor.drained"' in (await podman("logs", name)).err
    assert await rows(pg_dsn) == 5
    assert await rows(pg_dsn, "SELECT count(*) FROM ws_sessions WHERE closed_at IS NULL") == 0
    assert (
        await rows(pg_dsn, "SELECT count(*) FROM ws_sessions") == 2
    )  # before and after the outage


async def test_the_image_has_no_emulator_and_simulate_says_so() -> None:
    """The emulator is not in the runtime image (this harness runs it from the checkout):
    `collector simulate` prints one line saying so and exits 2; nothing of it is installed."""
    # --no-healthcheck: without systemd, podman itself would complain on stderr about the timer.
    once = ("podman", "run", "--rm", "--network", "none", "--no-healthcheck")
    simulate = await run(*once, IMAGE, "simulate")
    assert (simulate.code, simulate.out, simulate.err) == (2, "", EMULATOR_MISSING + "\n")
    probe = await ok(
        *once, "--entrypoint", "python", IMAGE, "-c",
        "import importlib.util as u; print(u.find_spec('collector.emulator'),"
        " u.find_spec('collector.sources') is not None)",
    )  # fmt: skip
    assert probe == "None True"
    found = await ok(*once, "--entrypoint", "find", IMAGE, "/venv", "/app", "-path", "*emulator*")
    assert found == ""


async def connectable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.mark.skipif(not POSTGRES_IMAGE, reason="COLLECTOR_TEST_POSTGRES_IMAGE is unset")
async def test_rows_the_database_cannot_take_are_spilled_to_the_volume_and_replayed(
    container_names: list[str],
) -> None:
    """With its database server down, SIGTERM spills the queue into the volume and exits 0; the
    next container on that volume replays it: every row arrives and the spill dir empties."""
    suffix = uuid.uuid4().hex[:8]
    server, first, second = (f"collector-spill-{role}-{suffix}" for role in ("pg", "a", "b"))
    volume = first
    container_names.extend([first, second, server])
    pg_port, port = free_port(), free_port()
    # A server of its own (the postgres stand-in) that this test can stop: connections refused.
    await ok(
        "podman", "run", "--detach", "--name", server, "--network", "host",
        "--env", "POSTGRES_PASSWORD=spill-test", "--env", f"PGPORT={pg_port}", POSTGRES_IMAGE,
        "postgres", "-c", "listen_addresses=127.0.0.1", "-c", f"port={pg_port}",
    )  # fmt: skip
    dsn = f"postgresql://postgres:spill-test@127.0.0.1:{pg_port}/postgres"
    await eventually(lambda: connectable(dsn), bool, 60, "the postgres container")
    async with Emulator(EmulatorOptions()) as emu:
        env = {
            "COLLECTOR_DATABASE_DSN": dsn,
            "COLLECTOR_HTTP_HOST": "127.0.0.1",
            "COLLECTOR_HTTP_PORT": str(port),
            "COLLECTOR_SHUTDOWN_GRACE_S": "3",
            **emulator_env(emu),
        }
        await ok(*run_collector(first, volume, env))  # `run` migrates the empty database
        await eventually(lambda: health(first), bool, 90, "healthy after start")
        await publish(emu, 1_795_000_003_000, 1)
        await eventually(lambda: rows(dsn), lambda n: n == 1, 30, "the first row")

        await ok("podman", "stop", "--time", "30", server)
        await publish(emu, 1_795_000_003_100, 2)
        await eventually(lambda: events_received(port), lambda n: n == 3, 30, "3 received")
        await ok("podman", "stop", "--time", "30", first)
        assert await ok("podman", "inspect", "--format", "{{.State.ExitCode}}", first) == "0"
        assert '"event": "supervisor.spilled"' in (await podman("logs", first)).err
        listing = await ok(
            "podman", "run", "--rm", "--network", "none", "--volume",
            f"{volume}:/var/lib/collector", "--entrypoint", "ls", IMAGE, "/var/lib/collector/spill",
        )  # fmt: skip
        assert len(listing.split()) == 1
        assert listing.startswith("spill-")
        assert listing.endswith(".jsonl")

        await ok("podman", "start", server)
        await eventually(lambda: connectable(dsn), bool, 60, "the postgres container again")
        assert await rows(dsn) == 1
        await ok(*run_collector(second, volume, env))
        await eventually(lambda: rows(dsn), lambda n: n == 3, 60, "the spilled rows replayed")
        await eventually(lambda: health(second), bool, 90, "healthy after the replay")
        assert await ok("podman", "exec", second, "ls", "/var/lib/collector/spill") == ""
        await ok("podman", "stop", "--time", "30", second)
        assert await ok("podman", "inspect", "--format", "{{.State.ExitCode}}", second) == "0"
    trades = await rows(dsn, "SELECT count(DISTINCT trade_time) FROM market_liquidations")
    assert trades == 3


@pytest.fixture
async def podman_service() -> AsyncIterator[str]:
    """`podman system service` on a private socket (Docker's API for compose); its DOCKER_HOST.

    With it, a stand-in for the systemd timers podman would run HEALTHCHECKs from: compose's
    `depends_on: condition: service_healthy` waits on a health status nothing else updates."""
    directory = Path(tempfile.mkdtemp(prefix="collector-podman-"))  # a socket path: 107 bytes
    sock = directory / "podman.sock"
    service = await asyncio.create_subprocess_exec(
        "podman", "system", "service", "--time=0", f"unix://{sock}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def pump() -> None:
        while True:
            running = (await podman("ps", "--quiet", "--filter", "status=running")).out.split()
            for container in running:
                await podman("healthcheck", "run", container)
            await asyncio.sleep(1)  # the period of the stand-in timer

    pumping = asyncio.create_task(pump())
    try:
        await eventually(lambda: asyncio.sleep(0, sock.exists()), bool, 30, "podman.sock")
        yield f"unix://{sock}"
    finally:
        pumping.cancel()
        await asyncio.wait([pumping])
        service.terminate()
        await service.wait()
        shutil.rmtree(directory, ignore_errors=True)


def deploy_copy(target: Path) -> Path:
    """deploy/ without any secrets generated in the checkout, with fresh ones of its own."""
    deploy = target / "deploy"
    shutil.copytree(
        ROOT / "deploy", deploy,
        ignore=lambda d, names: [n for n in names if Path(d).name == "secrets"
                                 and n not in ("generate.sh", ".gitignore")],
    )  # fmt: skip
    return deploy


@pytest.mark.skipif(not COMPOSE, reason="COLLECTOR_TEST_COMPOSE (a Docker Compose v2) is unset")
async def test_compose_stack_migrates_as_the_collector_role_and_collects(
    tmp_path: Path, podman_service: str
) -> None:
    """postgres, migrate and collector from deploy/compose.yaml (+ compose.podman.yaml): migrate
    exits 0 as the non-superuser `collector`, the collector turns healthy and writes rows that
    `grafana_reader` can read and not change, and `compose stop collector` exits 0."""
    deploy = deploy_copy(tmp_path)
    await ok("bash", str(deploy / "secrets" / "generate.sh"))
    secrets = deploy / "secrets"

    def secret(name: str) -> str:
        return (secrets / name).read_text(encoding="ascii")

    pg_port, http_port = free_port(), free_port()
    dsn_file = secrets / "collector_dsn_loopback"
    dsn_file.write_text(
        f"postgresql://collector:{secret('collector_db_password')}@127.0.0.1:{pg_port}/collector"
    )
    dsn_file.chmod(0o644)
    project = f"collector-it-{uuid.uuid4().hex[:6]}"
    async with Emulator(EmulatorOptions()) as emu:
        env = {
            "DOCKER_HOST": podman_service,
            "COLLECTOR_IMAGE": IMAGE,
            "POSTGRES_IMAGE": POSTGRES_IMAGE,
            "PG_PORT": str(pg_port),
            "HTTP_PORT": str(http_port),
            "COLLECTOR_DSN_FILE": str(dsn_file),
            "FSTREAM_URL": emu.fstream_url,
            "DSTREAM_URL": emu.dstream_url,
            "FAPI_URL": emu.fapi_url,
            "DAPI_URL": emu.dapi_url,
        }
        files = ("-f", str(deploy / "compose.yaml"), "-f", str(deploy / "compose.podman.yaml"))
        compose = (COMPOSE, "--project-name", project, "--project-directory", str(deploy), *files)
        try:
            await ok(*compose, "config", "--quiet", env=env)
            await ok(*compose, "up", "--detach", "postgres", "migrate", "collector", env=env)
            migrate, collector = f"{project}-migrate-1", f"{project}-collector-1"
            assert await ok("podman", "inspect", "--format", "{{.State.ExitCode}}", migrate) == "0"

            admin = (
                f"postgresql://postgres:{secret('postgres_password')}@127.0.0.1:{pg_port}/collector"
            )
            conn = await asyncpg.connect(admin)
            try:
                role = await conn.fetchrow(
                    "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
                    " WHERE rolname = 'collector'"
                )
                assert tuple(role) == (False, False, False)
                owners = await conn.fetch(
                    "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
                )
                assert [r["tableowner"] for r in owners] == ["collector"]
                applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
                assert applied == len(list((ROOT / "migrations").glob("*.sql")))
            finally:
                await conn.close()

            await eventually(lambda: health(collector), bool, 90, "compose collector healthy")
            assert await ok("podman", "exec", collector, "id", "-u") == "10001"
            await emu.wait_until(
                lambda: bool(emu.connections) and all(c.streams for c in emu.connections)
            )
            await publish(emu, 1_795_000_002_000, 4)
            reader = (f"postgresql://grafana_reader:{secret('grafana_db_password')}"
                      f"@127.0.0.1:{pg_port}/collector")  # fmt: skip
            await eventually(lambda: rows(reader), lambda n: n == 4, 30, "4 rows, as the reader")
            # The data-out API is on in the stack, behind the token generate.sh wrote.
            history = f"http://127.0.0.1:{http_port}/v1/liquidations?from=2026-11-01T00:00:00Z"
            token = {"Authorization": f"Bearer {secret('collector_api_token')}"}
            async with aiohttp.ClientSession() as http:
                async with http.get(history) as anonymous:
                    assert anonymous.status == 401
                async with http.get(history, headers=token) as answer:
                    assert answer.status == 200
                    found = (await answer.json())["liquidations"]
            assert [(r["venue"], r["symbol"]) for r in found] == [("binance", "BTCUSDT")] * 4
            conn = await asyncpg.connect(reader)
            try:
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute("DELETE FROM market_liquidations")
            finally:
                await conn.close()

            started = time.monotonic()
            await ok(*compose, "stop", "collector", env=env)
            stopped_after = time.monotonic() - started
            assert (
                await ok("podman", "inspect", "--format", "{{.State.ExitCode}}", collector) == "0"
            )
            assert stopped_after < 20, stopped_after
        finally:
            await run(*compose, "down", "--volumes", "--timeout", "10", env=env)
