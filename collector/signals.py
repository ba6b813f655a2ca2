"""The stop request: SIGTERM and SIGINT set one `asyncio.Event`; a second signal exits at once.

For every long-running command (`run`, `migrate`, `simulate`), so none imports another's code
to stop cleanly.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

log = structlog.get_logger(__name__)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT request a graceful stop; a second one exits at once."""
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            log.warning("supervisor.forced_exit", signal=signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("supervisor.stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)
