"""Reaching the database at start: which DSN, one connection, and waiting until it answers.

A server that is down or still starting is retried; one that answers "no" for good (no such
database, the login refused, no CONNECT privilege) is a configuration error naming
`[database] dsn`, so the process exits 2 at once instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import structlog

from collector.config import Config, redact_dsn
from collector.db.embedded import embedded_postgres
from collector.exceptions import ConfigError
from collector.retry import DATABASE_WAIT, Attempt, is_transient, sleep_or_stop

log = structlog.get_logger(__name__)

_WHERE = "[database] dsn"


@contextlib.asynccontextmanager
async def database_dsn(config: Config) -> AsyncIterator[str]:
    """The configured DSN, or an embedded server's when none is configured."""
    if config.database.dsn is not None:
        yield config.database.dsn.reveal()
        return
    async with embedded_postgres(config.database.embedded_dir) as dsn:
        yield dsn


async def connect(dsn: str, config: Config) -> asyncpg.Connection:
    """One connection; errors never carry the DSN or a piece of it.

    asyncpg's complaints about a DSN it cannot use quote pieces of it (a port that is not a
    number, a query field without `=`), and those may be pieces of a password with unencoded
    specials: they are replaced by a `ClientConfigurationError` naming only the redacted DSN.
    Network errors name the resolved address, server errors the user and database.
    """
    try:
        return await asyncpg.connect(dsn, timeout=config.database.connect_timeout_s)
    except ValueError as exc:  # asyncpg.ClientConfigurationError is one too
        raise asyncpg.ClientConfigurationError(
            f"the database DSN {redact_dsn(dsn)} cannot be used ({type(exc).__name__}; "
            "asyncpg's message is withheld because it may quote the password)"
        ) from None


def _passwords(dsn: str) -> list[str]:
    try:
        parts = urlsplit(dsn)
        query = parse_qsl(parts.query)
        found = [parts.password or "", *(v for k, v in query if k.endswith("password"))]
    except ValueError:
        return []
    return [p for p in found if p]


def _scrub(text: str, dsn: str) -> str:
    """`text` with any password of `dsn` replaced by `***` (a driver message may quote it)."""
    for password in _passwords(dsn):
        text = text.replace(password, "***")
    return text


def permanent_problem(exc: BaseException, dsn: str) -> str | None:
    """What to fix, when `exc` (from connecting) will not go away by retrying; else None.

    The cases are `retry.PERMANENT_REFUSALS`; this says what to fix for each.
    """
    # A server error's str() adds its DETAIL on another line; the message alone is one line.
    text = exc.message if isinstance(exc, asyncpg.PostgresError) else str(exc)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):  # 3D000
        what = f"{text}: create it, or name an existing database"
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # 28000, 28P01
        what = f"the server refused the login: {text}"
    elif isinstance(exc, asyncpg.InsufficientPrivilegeError):  # 42501
        what = f"the role lacks a privilege: {text}"
    elif isinstance(exc, asyncpg.ClientConfigurationError):
        what = f"the driver cannot use it: {text}"
    else:
        return None
    detail = getattr(exc, "detail", None)
    if detail:
        what += f" ({' '.join(detail.split()).rstrip('.')})"
    return _scrub(f"{_WHERE}: {what}", dsn)


async def connect_checked(dsn: str, config: Config) -> asyncpg.Connection:
    """`connect`, raising a permanent refusal as a `ConfigError` naming `[database] dsn`."""
    try:
        return await connect(dsn, config)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problem = permanent_problem(exc, dsn)
        if problem is None:
            raise
        raise ConfigError([problem]) from None


async def wait_for_database(dsn: str, config: Config, stop: asyncio.Event) -> bool:
    """Retry connecting with backoff until it works (True) or `stop` is set (False).

    Raises `ConfigError` at once when the server's answer is permanent (`permanent_problem`),
    and whatever else is not transient for a connection (`retry.is_transient`).
    """
    backoff = DATABASE_WAIT.backoff()
    while not stop.is_set():
        try:
            conn = await connect_checked(dsn, config)
        except Exception as exc:
            if not is_transient(exc, Attempt.CONNECT):
                raise
            delay = backoff.next_delay()
            log.warning("supervisor.database_unavailable", dsn=redact_dsn(dsn),
                        error=type(exc).__name__, retry_in_s=round(delay, 2))  # fmt: skip
            await sleep_or_stop(delay, stop)
            continue
        await conn.close()
        return True
    return False
