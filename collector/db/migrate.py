"""Applies `migrations/NNNN_name.sql` in order, each in its own transaction, once.

Applied files are recorded in `schema_migrations`; an advisory lock, taken before anything
else (creating that table included), lets several collectors start against one database
without racing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from collector.exceptions import MigrationError

log = structlog.get_logger(__name__)

# An installed package ships them as collector/migrations; a checkout has them at the top.
_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "migrations",
    Path(__file__).resolve().parent.parent.parent / "migrations",
)
_LOCK_KEY = 0x636F6C6C  # "coll"
_CREATE_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: str
    path: Path

    @property
    def sql(self) -> str:
        """The file's SQL text."""
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        """sha256 of the file, recorded so an edited, already-applied file is noticed."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations_dir() -> Path:
    """The directory holding the migration files (`$COLLECTOR_MIGRATIONS_DIR` overrides)."""
    if os.environ.get("COLLECTOR_MIGRATIONS_DIR"):
        return Path(os.environ["COLLECTOR_MIGRATIONS_DIR"])
    for candidate in _CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("migrations directory not found next to the collector package")


def discover(directory: Path | None = None) -> list[Migration]:
    """All migration files, ordered by name."""
    directory = directory or migrations_dir()
    return [Migration(p.stem, p) for p in sorted(directory.glob("*.sql"))]


async def applied_versions(conn: asyncpg.Connection) -> dict[str, str]:
    """Versions already applied, with their checksums."""
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply pending migrations in order; return the versions applied now.

    Raises `MigrationError` naming the file that failed; earlier files stay applied.
    """
    # The lock comes first: two sessions running CREATE TABLE IF NOT EXISTS at once can both
    # miss the table and one then fails on the catalog's unique index (SQLSTATE 23505).
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        try:
            await conn.execute(_CREATE_LEDGER)
        except asyncpg.PostgresError as exc:
            raise MigrationError("schema_migrations", exc) from exc
        done = await applied_versions(conn)
        applied: list[str] = []
        for migration in discover(directory):
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning("migrate.checksum_mismatch", version=migration.version)
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                        migration.version,
                        migration.checksum,
                    )
            except (asyncpg.PostgresError, OSError) as exc:
                raise MigrationError(migration.path.name, exc) from exc
            log.info("migrate.applied", version=migration.version)
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
