"""Fail fast: what cannot work exits 2 at start, before migrating or connecting anywhere, with
one message naming the setting to fix."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

_ENV = {"PATH": "/usr/bin:/bin"}


def _invalid(*problems: str) -> str:
    lines = "".join(f"  - {p}\n" for p in problems)
    return f"collector: invalid configuration ({len(problems)} problem(s)):\n{lines}"


async def _collector(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run `collector <args>` as a process; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args, env={**_ENV, **env}, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening loopback socket that records whether anything connected to it."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _nothing_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def _with(dsn: str, *, database: str | None = None, user: str | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rpartition('@')[2]}"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


@pytest.fixture
async def empty_db(pg_admin_dsn: str) -> AsyncIterator[str]:
    """The name of a new database without any table (not migrated); dropped after the test."""
    name = f"collector_e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield name
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _migrated(pg_admin_dsn: str, database: str) -> bool:
    conn = await asyncpg.connect(_with(pg_admin_dsn, database=database))
    try:
        return bool(await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("env", "problems"),
    [
        ({"COLLECTOR_DATABASE_DSN": "postgresql://u:hunter2@127.0.0.1:54x/db"},
         ["[database] dsn: the port must be a number 1..65535"]),
        ({"COLLECTOR_DATABASE_DSN": "hunter2"},
         ["[database] dsn: expected a postgresql:// URI (postgresql://user@host:5432/dbname) or "
          "libpq keyword=value pairs (host=... dbname=...)"]),
        ({"COLLECTOR_WRITER_QUEUE_MAX": "100.9", "COLLECTOR_BINANCE_HEARTBEAT_S": "-1"},
         ["COLLECTOR_WRITER_QUEUE_MAX: expected an integer, got '100.9'",
          "[binance] heartbeat_s: must be above 0 and at most 10 (the ledger counts an open "
          "session live for 30 s after its mark), got -1.0"]),
        ({"COLLECTOR_VENUES_ENABLED": "binance, Kraken, okx"},
         ["[venues] enabled: must name one or more known venues (binance, bybit, okx), got "
          "('binance', 'kraken', 'okx')"]),
        ({"COLLECTOR_DATABASE_DNS": "postgresql://u:hunter2@127.0.0.1/db"},
         ["COLLECTOR_DATABASE_DNS: unknown environment variable "
          "(did you mean COLLECTOR_DATABASE_DSN?)"]),
    ],
)  # fmt: skip
async def test_config_errors_exit_2_before_connecting(
    env: dict[str, str], problems: list[str], trap: socket.socket, tmp_path: Path
) -> None:
    """A bad setting exits 2 with one message listing it; no database is reached."""
    trap_dsn = f"postgresql://postgres@127.0.0.1:{trap.getsockname()[1]}/x"
    code, out, err = await _collector(
        "run", env={"COLLECTOR_DATABASE_DSN": trap_dsn, "COLLECTOR_HTTP_PORT": "0", **env},
        cwd=tmp_path,
    )  # fmt: skip
    assert (code, out, err) == (2, "", _invalid(*problems))
    assert _nothing_connected(trap)
    # No embedded server was started, no spill directory made.
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


async def test_a_bad_private_key_exits_2_naming_the_account(
    trap: socket.socket, tmp_path: Path
) -> None:
    """An account whose RSA key does not load stops the start, before the database is reached."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[accounts]]\nname = "main"\nkind = "classic"\nkey_type = "rsa"\n'
        'api_key_env = "MAIN_KEY"\napi_secret_env = "MAIN_SECRET"\n'
    )
    code, out, err = await _collector(
        "run", "--config", str(toml),
        env={"COLLECTOR_DATABASE_DSN": f"postgresql://postgres@127.0.0.1:{trap.getsockname()[1]}/x",
             "COLLECTOR_HTTP_PORT": "0", "MAIN_KEY": "k", "MAIN_SECRET": "hunter2"},
        cwd=tmp_path,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == _invalid("[[accounts]] 'main' api_secret: not a PEM private key for rsa")
    assert _nothing_connected(trap)


@pytest.mark.parametrize("command", ["run", "migrate"])
async def test_a_missing_database_exits_2(command: str, pg_admin_dsn: str, tmp_path: Path) -> None:
    """A database that does not exist is a configuration error, not "unavailable, retrying"."""
    name = f"collector_missing_{uuid.uuid4().hex[:8]}"
    code, out, err = await _collector(
        command, env={"COLLECTOR_DATABASE_DSN": _with(pg_admin_dsn, database=name),
                      "COLLECTOR_HTTP_PORT": "0", "COLLECTOR_LOG_FORMAT": "json"},
        cwd=tmp_path,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == _invalid(
        f'[database] dsn: database "{name}" does not exist: create it, or name an existing database'
    )


async def test_a_role_that_cannot_log_in_exits_2(
    pg_admin_dsn: str, empty_db: str, tmp_path: Path
) -> None:
    """A role the server does not know is refused for good: exit 2, nothing migrated."""
    role = f"collector_nobody_{uuid.uuid4().hex[:8]}"
    code, out, err = await _collector(
        "run", env={"COLLECTOR_DATABASE_DSN": _with(pg_admin_dsn, database=empty_db, user=role),
                    "COLLECTOR_HTTP_PORT": "0", "COLLECTOR_LOG_FORMAT": "json"},
        cwd=tmp_path,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == _invalid(
        f'[database] dsn: the server refused the login: role "{role}" does not exist'
    )
    assert await _migrated(pg_admin_dsn, empty_db) is False


async def test_a_role_without_connect_privilege_exits_2(
    pg_admin_dsn: str, empty_db: str, tmp_path: Path
) -> None:
    """A role lacking CONNECT on the database (42501) exits 2 naming [database] dsn."""
    role = f"collector_noconnect_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'REVOKE CONNECT ON DATABASE "{empty_db}" FROM PUBLIC')
        code, out, err = await _collector(
            "run",
            env={"COLLECTOR_DATABASE_DSN": _with(pg_admin_dsn, database=empty_db, user=role),
                 "COLLECTOR_HTTP_PORT": "0", "COLLECTOR_LOG_FORMAT": "json"},
            cwd=tmp_path,
        )  # fmt: skip
    finally:
        await admin.execute(f'GRANT CONNECT ON DATABASE "{empty_db}" TO PUBLIC')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
    assert (code, out) == (2, "")
    assert err == _invalid(
        f'[database] dsn: the role lacks a privilege: permission denied for database "{empty_db}"'
        " (User does not have CONNECT privilege)"
    )


async def test_http_port_in_use_exits_2_before_migrating(
    pg_admin_dsn: str, empty_db: str, tmp_path: Path
) -> None:
    """A taken [http] port exits 2 naming the setting; the database is left unmigrated."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, out, err = await _collector(
            "run", env={"COLLECTOR_DATABASE_DSN": _with(pg_admin_dsn, database=empty_db),
                        "COLLECTOR_HTTP_PORT": str(port), "COLLECTOR_LOG_FORMAT": "json"},
            cwd=tmp_path,
        )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == _invalid(
        f"[http] port: 127.0.0.1:{port} is already in use; set [http] port "
        "(COLLECTOR_HTTP_PORT) to a free port, or stop what listens there"
    )
    assert await _migrated(pg_admin_dsn, empty_db) is False


async def test_simulate_refuses_a_negative_rate(tmp_path: Path) -> None:
    """`collector simulate --rate -5` exits 2 with a message, not a traceback."""
    code, out, err = await _collector("simulate", "--rate", "-5", "--port-base", "0", env={},
                                      cwd=tmp_path)  # fmt: skip
    assert (code, out) == (2, "")
    assert err == _invalid("--rate: must be a finite number of events per second >= 0, got -5")


async def test_simulate_refuses_a_taken_port(tmp_path: Path) -> None:
    """`collector simulate` whose first port is taken exits 2 naming it, printing no settings
    for an emulator that never started."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, out, err = await _collector("simulate", "--port-base", str(port), env={},
                                          cwd=tmp_path)  # fmt: skip
    assert (code, out) == (2, "")
    assert err == _invalid(
        f"--port-base (fstream): 127.0.0.1:{port} is already in use; choose another "
        "--port-base, or 0 for free ports"
    )


async def test_simulate_on_free_ports_prints_the_ports_it_bound(tmp_path: Path) -> None:
    """`collector simulate --port-base 0` prints the settings of all three venues with the ports
    it actually listens on, and each of them answers."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "simulate", "--port-base", "0", env=_ENV,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        settings = dict(pair.split("=", 1) for pair in line.split())
        names = ["FSTREAM", "DSTREAM", "FAPI", "DAPI", "PAPI", "SAPI"]
        assert list(settings) == [
            "COLLECTOR_VENUES_ENABLED",
            *(f"COLLECTOR_BINANCE_{n}_URL" for n in names),
            "COLLECTOR_BYBIT_WS_URL", "COLLECTOR_BYBIT_REST_URL",
            "COLLECTOR_OKX_WS_URL", "COLLECTOR_OKX_REST_URL",
        ]  # fmt: skip
        # The emulated venues only, so a collector on this line reaches no real exchange.
        assert settings["COLLECTOR_VENUES_ENABLED"] == "binance,bybit,okx"
        async with aiohttp.ClientSession() as http:
            for name, path, status in (
                ("FAPI", "/fapi/v1/ping", 200), ("DAPI", "/dapi/v1/ping", 200),
                ("PAPI", "/papi/v1/ping", 200),
                ("SAPI", "/sapi/v1/margin/forceLiquidationRec", 404),  # no accounts simulated
            ):  # fmt: skip
                async with http.get(settings[f"COLLECTOR_BINANCE_{name}_URL"] + path) as r:
                    assert r.status == status, name
            for name in ("FSTREAM", "DSTREAM"):
                url = settings[f"COLLECTOR_BINANCE_{name}_URL"]
                assert url.startswith("ws://127.0.0.1:")
                route = "/market/stream" if name == "FSTREAM" else "/stream"
                async with http.ws_connect(f"{url}{route}?streams=!forceOrder@arr") as ws:
                    assert not ws.closed
            for url, status in (
                (settings["COLLECTOR_BYBIT_REST_URL"]
                 + "/v5/market/instruments-info?category=linear", 200),
                (settings["COLLECTOR_OKX_REST_URL"]
                 + "/api/v5/public/instruments?instType=SWAP", 200),
            ):  # fmt: skip
                async with http.get(url) as r:
                    assert r.status == status, url
            for url in (
                settings["COLLECTOR_BYBIT_WS_URL"] + "/v5/public/linear",
                settings["COLLECTOR_OKX_WS_URL"] + "/ws/v5/public",
            ):
                assert url.startswith("ws://127.0.0.1:")
                async with http.ws_connect(url) as ws:
                    assert not ws.closed
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_simulate_refuses_an_unknown_venue(tmp_path: Path) -> None:
    """`collector simulate --venues binance,kraken` exits 2 naming what it can serve."""
    code, out, err = await _collector("simulate", "--venues", "binance,kraken", "--port-base",
                                      "0", env={}, cwd=tmp_path)  # fmt: skip
    assert (code, out) == (2, "")
    assert err == _invalid(
        "--venues: must list one or more of binance, bybit, okx, each once, got 'binance,kraken'"
    )


async def test_simulate_binance_only_prints_the_binance_settings_alone(tmp_path: Path) -> None:
    """`collector simulate --venues binance` serves and enables Binance only: the six URLs and
    `COLLECTOR_VENUES_ENABLED=binance`, as before Bybit and OKX had emulators."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "simulate", "--venues", "binance", "--port-base", "0",
        env=_ENV, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        settings = dict(pair.split("=", 1) for pair in line.split())
        names = ["FSTREAM", "DSTREAM", "FAPI", "DAPI", "PAPI", "SAPI"]
        assert list(settings) == [
            "COLLECTOR_VENUES_ENABLED",
            *(f"COLLECTOR_BINANCE_{n}_URL" for n in names),
        ]
        assert settings["COLLECTOR_VENUES_ENABLED"] == "binance"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
