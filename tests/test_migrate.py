"""Migrations under concurrency: replicas starting together against one empty database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from collector.db.migrate import discover, migrate
from tests.conftest import _with_database

NewDatabase = Callable[[], Awaitable[str]]


@pytest.fixture
async def empty_database(pg_admin_dsn: str) -> AsyncIterator[NewDatabase]:
    """Makes fresh, empty (unmigrated) databases on the real server; drops them after."""
    names: list[str] = []

    async def create() -> str:
        name = f"collector_m_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        names.append(name)
        return _with_database(pg_admin_dsn, name)

    yield create
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def gate(dsn: str, clients: int) -> AsyncIterator[str]:
    """A loopback TCP proxy to `dsn`'s server that holds connections until `clients` have
    connected, then forwards them all at once (and so on for every `clients` connections: each
    process's probe, then each one's migration); yields `dsn` rewritten to go through it.

    Without it one process's start-up (a second of imports) usually finishes before the other's
    begins, and the two never actually meet in the database.
    """
    target = urlsplit(dsn)
    waiting: list[asyncio.Event] = []
    pipes: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        go = asyncio.Event()
        waiting.append(go)
        if len(waiting) >= clients:
            for event in waiting:
                event.set()
            waiting.clear()
        await go.wait()
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        for task in (_pipe(reader, up_writer), _pipe(up_reader, writer)):
            pipes.add(asyncio.create_task(task))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    netloc = f"{target.username}@127.0.0.1:{port}" if target.username else f"127.0.0.1:{port}"
    try:
        yield urlunsplit(target._replace(netloc=netloc))
    finally:
        server.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()


async def migrate_process(env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start `collector migrate` (without waiting for it)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "migrate", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def applied(dsn: str) -> list[str]:
    """The versions schema_migrations lists, one entry per row, in order."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [r["version"] for r in rows]


async def test_two_migrate_processes_started_together_both_succeed(
    empty_database: NewDatabase,
) -> None:
    """Two `collector migrate` processes whose connections reach an empty database at the same
    moment both exit 0, and every migration is recorded exactly once (three fresh databases)."""
    expected = [m.version for m in discover()]
    assert len(expected) >= 4
    for _ in range(3):
        dsn = await empty_database()
        async with gate(dsn, clients=2) as gated:
            env = {**os.environ, "COLLECTOR_DATABASE_DSN": gated, "COLLECTOR_LOG_FORMAT": "json"}
            # Both are started before either is awaited.
            procs = [await migrate_process(env) for _ in range(2)]
            outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
        codes = [p.returncode for p in procs]
        assert codes == [0, 0], [err.decode()[-2000:] for _, err in outputs]
        assert await applied(dsn) == expected


async def test_concurrent_migrate_calls_on_one_database_apply_each_file_once(
    empty_database: NewDatabase,
) -> None:
    """Four connections calling migrate() at once on an empty database: one applies every
    file, the others apply none, and no error escapes (five rounds, fresh databases)."""
    expected = [m.version for m in discover()]
    for _ in range(5):
        dsn = await empty_database()
        conns = [await asyncpg.connect(dsn) for _ in range(4)]
        try:
            results = await asyncio.gather(*(migrate(c) for c in conns))
        finally:
            for conn in conns:
                await conn.close()
        assert sorted(results, key=len) == [[], [], [], expected]
        assert await applied(dsn) == expected


async def test_migrate_waits_for_a_server_that_is_not_up_yet(empty_database: NewDatabase) -> None:
    """`collector migrate` started before its server listens (a compose or Kubernetes start-up)
    logs that the database is unavailable, retries, and migrates once the server is there."""
    dsn = await empty_database()
    target = urlsplit(dsn)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free now, and refusing until the forwarder takes it
    via = urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{port}"))
    env = {**os.environ, "COLLECTOR_DATABASE_DSN": via, "COLLECTOR_LOG_FORMAT": "json"}
    proc = await migrate_process(env)
    pipes: set[asyncio.Task[None]] = set()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            pipes.add(asyncio.create_task(_pipe(src, dst)))

    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"supervisor.database_unavailable" not in await proc.stderr.readline():
                pass
        server = await asyncio.start_server(forward, "127.0.0.1", port)
        async with server:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
    assert await applied(dsn) == [m.version for m in discover()]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
