"""deploy/postgres/init/roles.psql on a real server: the collector role can migrate and write
through the real Writer, the Grafana role can read every dashboard function and write nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from collector.config import WriterConfig
from collector.db.migrate import migrate
from collector.metrics import Metrics
from collector.sink.writer import Writer
from tests import factories

ROLES = Path(__file__).resolve().parent.parent / "deploy" / "postgres" / "init" / "roles.psql"
PSQL = shutil.which("psql")
pytestmark = pytest.mark.skipif(
    PSQL is None, reason="psql not installed (Debian: postgresql-client)"
)


def dsn_for(admin_dsn: str, user: str, password: str, database: str) -> str:
    """`admin_dsn` with another user, password and database."""
    parts = urlsplit(admin_dsn)
    host = parts.hostname or ""
    netloc = f"{quote(user)}:{quote(password)}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


@dataclass(frozen=True)
class Roles:
    """DSNs of a fresh database set up by roles.psql, for each role."""

    admin: str
    collector: str
    reader: str


@pytest.fixture
async def roles(pg_admin_dsn: str) -> AsyncIterator[Roles]:
    """A fresh empty database and two fresh roles created by roles.psql; all dropped after."""
    tag = uuid.uuid4().hex[:10]
    database, collector, reader = f"collector_roles_{tag}", f"collector_{tag}", f"reader_{tag}"
    admin_dsn = dsn_for(pg_admin_dsn, *_admin_user(pg_admin_dsn), database)
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        assert PSQL is not None
        proc = await asyncio.create_subprocess_exec(
            PSQL, "--no-psqlrc", "--quiet", "-d", admin_dsn,
            "-v", f"collector_role={collector}", "-v", f"reader_role={reader}",
            "-v", f"dbname={database}", "-f", str(ROLES),
            env={**os.environ, "COLLECTOR_DB_PASSWORD": "c'pw", "GRAFANA_DB_PASSWORD": "r pw"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out.decode()
        yield Roles(
            admin=admin_dsn,
            collector=dsn_for(pg_admin_dsn, collector, "c'pw", database),
            reader=dsn_for(pg_admin_dsn, reader, "r pw", database),
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{collector}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{reader}"')
        await admin.close()


def _admin_user(admin_dsn: str) -> tuple[str, str]:
    parts = urlsplit(admin_dsn)
    return parts.username or "postgres", parts.password or ""


async def test_collector_role_migrates_and_writes_through_the_writer(roles: Roles) -> None:
    """As the collector role, migrations apply and the Writer commits a row (temp staging table)."""
    conn = await asyncpg.connect(roles.collector)
    try:
        assert "0004_rollups" in await migrate(conn)
        writer = Writer(lambda: asyncpg.connect(roles.collector), WriterConfig(), Metrics())
        task = asyncio.create_task(writer.run())
        await writer.put(factories.liquidation())
        await asyncio.wait_for(writer.flush(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await conn.fetchval("SELECT count(*) FROM market_liquidations") == 1
        assert await conn.fetchval("SELECT refresh_market_rollup_dirty()") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE ROLE intruder")
    finally:
        await conn.close()


async def test_reader_role_reads_dashboard_functions_and_cannot_write(roles: Roles) -> None:
    """The Grafana role reads tables and dashboard functions, and is refused any write."""
    owner = await asyncpg.connect(roles.collector)
    try:
        await migrate(owner)
    finally:
        await owner.close()
    reader = await asyncpg.connect(roles.reader)
    try:
        assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
        assert await reader.fetchval("SHOW jit") == "off"
        assert await reader.fetchval("SELECT count(*) FROM market_liquidations") == 0
        assert await reader.fetchval("SELECT count(*) FROM account_force_orders") == 0
        totals = await reader.fetch(
            "SELECT * FROM liquidation_totals(now() - interval '1 day', now(), '1 hour')"
        )
        assert totals == []
        gaps = await reader.fetch(
            "SELECT * FROM coverage_gaps(ARRAY['!forceOrder@arr'], '2026-01-01', '2026-01-02')"
        )
        assert [tuple(g) for g in gaps] == [
            (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
        ]
        assert await reader.fetchval("SELECT count(*) FROM liquidations") == 0
        assert await reader.fetchval("SELECT count(*) FROM venues") == 3
        okx = await reader.fetch(
            "SELECT * FROM coverage_gaps('okx', NULL, '2026-01-01', '2026-01-02')"
        )
        assert [tuple(g) for g in okx] == [
            (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), False, None)
        ]
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await reader.execute("DELETE FROM symbols")
        # The read-only default is a courtesy the session can lift; the privileges are the wall.
        await reader.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("DELETE FROM symbols")
    finally:
        await reader.close()
