"""What the Bybit and OKX emulators share beyond the stream host (`venue_ws`): two loopback
listeners (the stream host and the REST app), a background generator, the lifecycle and the
connection faults a test scripts.

A venue subclasses `VenueEmulator`, builds `self.ws` and `self.rest_app` in its `__init__`
(after `super().__init__()`), and defines `_generate()` (run while `options.rate_per_s > 0`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web

from collector.emulator.venue_ws import VenueConnection, VenueStats, VenueWsHost


class Listener:
    """Runs aiohttp applications on loopback ports; `urls` maps names to base URLs."""

    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []
        self.urls: dict[str, str] = {}

    async def start(
        self,
        apps: dict[str, tuple[web.Application, str]],
        host: str,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        """Listen on `host`, one port per application; `apps` maps a name to (app, scheme),
        `ports` a name to a fixed port (missing or 0: a free one)."""
        try:
            for name, (app, scheme) in apps.items():
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, host, (ports or {}).get(name, 0))
                await site.start()
                port = runner.addresses[0][1]
                shown = f"[{host}]" if ":" in host else host
                self.urls[name] = f"{scheme}://{shown}:{port}"
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every listener. Idempotent."""
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
        self.urls = {}


class VenueEmulator:
    """A venue's stream host (`ws`, at `ws_url`) and REST app (`rest_app`, at `rest_url`) on
    loopback. Use `async with` or `start()`/`stop()`."""

    NAME: ClassVar[str]
    """Names the generator task (`<NAME>.generate`)."""
    options: Any
    ws: VenueWsHost
    rest_app: web.Application

    def __init__(self) -> None:
        self._listener = Listener()
        self._generator_task: asyncio.Task[None] | None = None

    async def _generate(self) -> None:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", *, ports: Mapping[str, int] | None = None
    ) -> None:
        """Listen on `host`: one port for the stream host (`ports["ws"]`), one for REST
        (`ports["rest"]`); missing or 0 means a free port."""
        await self._listener.start(
            {"ws": (self.ws.app, "ws"), "rest": (self.rest_app, "http")}, host, ports
        )
        if self.options.rate_per_s > 0:
            name = f"{self.NAME}.generate"
            self._generator_task = asyncio.create_task(self._generate(), name=name)

    async def stop(self) -> None:
        """Stop generating, close every connection and listener. Idempotent."""
        task, self._generator_task = self._generator_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self.ws.close_all()
        await self._listener.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def ws_url(self) -> str:
        """Stream base URL (the venue's paths are appended to it)."""
        return self._listener.urls["ws"]

    @property
    def rest_url(self) -> str:
        """REST base URL, in place of the venue's public host."""
        return self._listener.urls["rest"]

    @property
    def stats(self) -> VenueStats:
        """Stream counters."""
        return self.ws.stats

    @property
    def connections(self) -> list[VenueConnection]:
        """Open stream connections, oldest first."""
        return self.ws.connections

    # -- connection faults ----------------------------------------------------------------------

    async def send_raw(self, text: str) -> int:
        """Send `text` as one frame to every open connection (malformed frames)."""
        return await self.ws.send_raw(text)

    def drop_connections(self) -> int:
        """Abort every connection's TCP transport, with no close frame."""
        return self.ws.drop()

    def close_connections(self, code: int = 1001) -> int:
        """Close every connection with `code` and a close frame."""
        return self.ws.close(code=code, reason="closed")

    def stall(self, seconds: float) -> None:
        """Push nothing for `seconds` (the venue's control replies go on)."""
        self.ws.stall(seconds)

    def fail_upgrades(self, count: int, status: int = 503) -> None:
        """Refuse the next `count` upgrades with HTTP `status`."""
        self.ws.fail_upgrades(count, status)

    async def wait_for_connections(self, n: int, *, timeout: float = 5.0) -> list[VenueConnection]:  # noqa: ASYNC109
        """Wait until at least `n` connections are open; return them."""
        await self.ws.wait_until(lambda: len(self.ws.connections) >= n, timeout=timeout)
        return self.ws.connections
