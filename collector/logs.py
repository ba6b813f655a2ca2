"""structlog configuration: JSON lines when stderr is not a TTY, readable console otherwise.

The libraries' standard `logging` (asyncpg's pool, aiohttp, asyncio), `warnings` and an
exception nothing caught go through the same renderer, so with JSON configured every line on
stderr is one JSON object; a traceback is the `exception` field of its line.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any, TextIO

import structlog

# Marks the root handler installed here, so configuring again replaces it instead of adding one.
_HANDLER_NAME = "collector.logs"


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    structlog.get_logger("collector").critical("collector.crashed", exc_info=(exc_type, exc, tb))


def configure(level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard `logging` once, from the CLI.

    `fmt` is auto, json or console; everything is written to `stream` (default: stderr).
    """
    out = sys.stderr if stream is None else stream
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    exc_processor: Any = (
        structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, exc_processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # Records of the standard `logging` (every library's) are rendered by the same processors;
    # `logger` says whose they are. Exceptions become the `exception` field, never extra lines.
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exc_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)  # `warnings.warn` goes to the `py.warnings` logger
    sys.excepthook = _log_uncaught
