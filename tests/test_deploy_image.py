"""The container image, checked without a Docker engine: the Dockerfile's instructions and build
context, and the collector run exactly as the image runs it (entrypoint, environment, secret
files, mounted TOML, HEALTHCHECK command, SIGTERM)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from collector.cli import EMULATOR_MISSING
from collector.emulator import Emulator, EmulatorOptions

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR = Path(sys.executable).parent / "collector"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def test_dockerfile_builds_dependencies_before_code_in_a_separate_stage() -> None:
    """A build stage installs the dependencies from pyproject.toml before copying the code."""
    build, runtime = stages()
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in instructions()
    copies = [args for op, args in build if op == "COPY"]
    # migrations/ ships inside the wheel as collector.migrations (pyproject package-dir).
    assert copies == [
        "pyproject.toml ./",
        "README.md ./",
        "collector ./collector",
        "migrations ./migrations",
    ]
    runs = [args for op, args in build if op == "RUN"]
    assert "pip install -r requirements.txt" in runs[1]
    assert build.index(("RUN", runs[1])) < build.index(("COPY", "collector ./collector"))
    assert "pip uninstall --yes pip setuptools" in runs[2]


def test_dockerfile_runtime_runs_the_daemon_as_a_non_root_user() -> None:
    """Non-root numeric user, exec-form entrypoint, SIGTERM, healthcheck and migrations in place."""
    runtime = dict(stages()[1])
    assert runtime["USER"] == "10001:10001"
    assert json.loads(runtime["ENTRYPOINT"]) == ["collector"]
    assert json.loads(runtime["CMD"]) == ["run"]
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert runtime["EXPOSE"] == "9108"
    options, command = runtime["HEALTHCHECK"].split(" CMD ")
    assert json.loads(command) == ["collector", "check"]
    assert "--start-period=60s" in options
    env = dict(kv.split("=", 1) for kv in runtime["ENV"].split())
    assert env["COLLECTOR_MIGRATIONS_DIR"] == "/app/migrations"
    assert env["COLLECTOR_HTTP_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/venv/bin:")
    copies = [args for op, args in stages()[1] if op == "COPY"]
    assert copies == ["--from=build /venv /venv", "migrations /app/migrations"]


def build_context() -> set[str]:
    """Repository files Docker would send as build context under .dockerignore (last match wins)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    kept = set()
    for path in tracked:
        parents = [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts) + 1)]
        excluded = False
        for line in patterns:
            negate, pattern = line.startswith("!"), line.removeprefix("!").rstrip("/")
            if any(fnmatch.fnmatch(p, pattern) for p in parents):
                excluded = not negate
        if not excluded:
            kept.add(path)
    return kept


def test_build_context_holds_only_what_the_image_needs() -> None:
    """The context is pyproject, README, the package and the migrations; no tests or secrets."""
    context = build_context()
    assert {"pyproject.toml", "README.md", "collector/cli.py",
            "migrations/0004_rollups.sql"} <= context  # fmt: skip
    assert {p.split("/")[0] for p in context} == {
        "pyproject.toml", "README.md", "collector", "migrations",
    }  # fmt: skip
    assert not {p for p in context if p.startswith("collector/emulator/")}


def test_a_wheel_built_from_the_image_context_has_no_emulator(tmp_path: Path) -> None:
    """The wheel the Dockerfile builds (from the same context) holds every package but the
    emulator; installed (not editable), `collector simulate` says the emulator is missing and
    exits 2, and `collector.emulator` cannot be imported."""
    context = tmp_path / "context"
    for path in build_context():
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, context / path)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels),
         str(context)], check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = wheels.glob("collector-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(Path(n).parent) for n in names if n.endswith(".py")}
    in_tree = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "collector").rglob("__init__.py")}
    assert "collector/emulator" in in_tree
    assert packages == in_tree - {"collector/emulator"}
    assert sorted(n for n in names if n.endswith(".sql")) == sorted(
        f"collector/migrations/{p.name}" for p in (ROOT / "migrations").glob("*.sql")
    )

    # A virtualenv of its own with the wheel installed, then this one's dependencies on its path
    # (a .pth line adds the directory only: this checkout's editable install is not loaded).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", str(wheel)], check=True, capture_output=True,
    )  # fmt: skip
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert purelib != sysconfig.get_paths()["purelib"]
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    simulate = subprocess.run(
        [venv / "bin" / "collector", "simulate"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (simulate.returncode, simulate.stdout, simulate.stderr) == (
        2, "", EMULATOR_MISSING + "\n",
    )  # fmt: skip
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u, collector.cli;"
         "print(collector.cli.__file__, u.find_spec('collector.emulator'))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout == f"{purelib}/collector/cli.py None\n"


def test_dependency_list_step_reads_pyproject_without_the_embedded_server(tmp_path: Path) -> None:
    """The requirements step lists every runtime dependency except the embedded server."""
    step = next(a for op, a in stages()[0] if op == "RUN" and "tomllib" in a)
    code = step.split("python -c '", 1)[1].split("' >", 1)[0]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["aiohttp>=3.9", "asyncpg>=0.29", "orjson>=3.9", "structlog>=24.1",
                   "prometheus-client>=0.23", "cryptography>=42", "nats-py>=2.15"]  # fmt: skip


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def test_migrate_uses_the_image_migrations_dir_and_a_dsn_file(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    """`collector migrate` applies $COLLECTOR_MIGRATIONS_DIR's files, the DSN read from a file."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for name in ("0001_market_liquidations.sql", "0002_coverage_ledger.sql"):
        shutil.copy(ROOT / "migrations" / name, migrations)
    database = f"collector_img_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        secret = tmp_path / "collector_dsn"
        secret.write_text(_with_database(pg_admin_dsn, database))
        env = {
            **os.environ,
            "COLLECTOR_MIGRATIONS_DIR": str(migrations),
            "COLLECTOR_DATABASE_DSN_FILE": str(secret),
        }
        proc = await asyncio.create_subprocess_exec(
            COLLECTOR, "migrate", env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        conn = await asyncpg.connect(_with_database(pg_admin_dsn, database))
        try:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        finally:
            await conn.close()
        assert [v["version"] for v in versions] == [
            "0001_market_liquidations", "0002_coverage_ledger",
        ]  # fmt: skip
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_daemon_runs_as_the_image_runs_it_and_drains_on_sigterm(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Compose TOML, env overrides, DSN file: ready, `collector check` exits 0, SIGTERM exits 0."""
    port = free_port()
    secret = tmp_path / "collector_dsn"
    secret.write_text(pg_dsn)
    token = tmp_path / "collector_api_token"  # the stack mounts it at /run/secrets/
    token.write_text("t" * 32)
    async with Emulator(EmulatorOptions()) as emu:
        env = {
            **os.environ,
            "COLLECTOR_CONFIG": str(ROOT / "deploy" / "collector.toml"),
            "COLLECTOR_DATABASE_DSN_FILE": str(secret),
            "COLLECTOR_HTTP_API_TOKEN_FILE": str(token),
            "COLLECTOR_HTTP_HOST": "127.0.0.1",  # the environment wins over the mounted file
            "COLLECTOR_HTTP_PORT": str(port),
            "COLLECTOR_VENUES_ENABLED": "binance",  # the emulator is Binance's only
            "COLLECTOR_BINANCE_FSTREAM_URL": emu.fstream_url,
            "COLLECTOR_BINANCE_DSTREAM_URL": emu.dstream_url,
            "COLLECTOR_BINANCE_FAPI_URL": emu.fapi_url,
            "COLLECTOR_BINANCE_DAPI_URL": emu.dapi_url,
        }
        log = (tmp_path / "collector.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            COLLECTOR, "run", "--no-migrate", env=env, stdout=log, stderr=log
        )
        try:
            await emu.wait_for_connections(1, host="fstream", timeout=30)
            url = f"http://127.0.0.1:{port}/readyz"
            async with aiohttp.ClientSession() as http, asyncio.timeout(30):
                while True:  # readiness also needs the subscription confirmed
                    try:
                        async with http.get(url) as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await emu.wait_until(lambda: all(c.streams for c in emu.connections))
                    await asyncio.sleep(0.05)  # an HTTP endpoint raises no event to await
            check = await asyncio.create_subprocess_exec(
                COLLECTOR, "check", env=env, stdout=asyncio.subprocess.DEVNULL
            )
            assert await asyncio.wait_for(check.wait(), 30) == 0
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            assert code == 0, (tmp_path / "collector.log").read_text()[-2000:]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()
