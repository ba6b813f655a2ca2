"""The HTTP side: `/metrics` for Prometheus, `/healthz` (alive) and `/readyz` (doing its job).

`/readyz` runs every registered check and answers `{"ok": [...], "failing": {name: reason}}`
(plus each registered detail, e.g. `"streams": {"state": "degraded", ...}`), with 503 when any
fails. Checks are async callables that raise to fail.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from collector.exceptions import ConfigError
from collector.metrics import Metrics

Check = Callable[[], Awaitable[None]]
_CHECK_TIMEOUT_S = 2.0


class Health:
    """Named readiness checks, plus a draining flag that fails readiness during shutdown."""

    def __init__(self) -> None:
        self.checks: dict[str, Check] = {}
        self.details: dict[str, Callable[[], Any]] = {}
        self.is_draining = False

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) a readiness check."""
        self.checks[name] = check

    def describe(self, name: str, detail: Callable[[], Any]) -> None:
        """Add `name: detail()` (JSON-serialisable) to every `/readyz` body."""
        self.details[name] = detail

    async def run_checks(self) -> tuple[list[str], dict[str, str]]:
        """Run every check concurrently; return (passing names, failing name -> reason)."""
        names = sorted(self.checks)

        async def one(name: str) -> str | None:
            try:
                async with asyncio.timeout(_CHECK_TIMEOUT_S):
                    await self.checks[name]()
            except Exception as exc:  # a check's failure is its answer, whatever it is
                return str(exc) or type(exc).__name__
            return None

        results = await asyncio.gather(*(one(n) for n in names))
        failing = {n: r for n, r in zip(names, results, strict=True) if r is not None}
        if self.is_draining:
            failing["shutdown"] = "draining"
        return [n for n in names if n not in failing], failing


Routes = Callable[[web.Application], None]


def make_app(health: Health, metrics: Metrics, routes: Routes | None = None) -> web.Application:
    """The aiohttp application serving /metrics, /healthz and /readyz, plus what `routes`
    adds (the data-out API, `collector.out.api.add_routes`)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok, failing = await health.run_checks()
        details = {name: detail() for name, detail in sorted(health.details.items())}
        body = orjson.dumps({"ok": ok, "failing": failing, **details})
        return web.Response(
            body=body, status=503 if failing else 200, content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if routes is not None:
        routes(app)
    return app


def listen(
    host: str,
    port: int,
    *,
    setting: str = "[http] port",
    fix: str = "set [http] port (COLLECTOR_HTTP_PORT) to a free port, or stop what listens there",
) -> list[socket.socket]:
    """Listening TCP sockets on every address `host` resolves to (all interfaces for "")
    at `port`, bound now so that a port in use is known before anything else starts.

    Raises `ConfigError` naming `setting` (and saying `fix`) when the port is taken, or naming
    the host and port when the address cannot be used.
    """
    shown = f"[{host}]" if ":" in host else host or "*"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError([f"[http] host: cannot resolve {host!r}: {exc.strerror}"]) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            problem = f"{setting}: {shown}:{port} is already in use; {fix}"
        else:
            problem = f"[http] host/port: cannot listen on {shown}:{port}: {exc.strerror or exc}"
        raise ConfigError([problem]) from None
    return sockets


@asynccontextmanager
async def serve_http(
    host: str,
    port: int,
    health: Health,
    metrics: Metrics,
    *,
    sockets: Sequence[socket.socket] = (),
    routes: Routes | None = None,
) -> AsyncIterator[web.AppRunner]:
    """Serve the app on host:port for the duration of the context (port 0: any free port), or
    on `sockets` already listening (see `listen`) when given; `routes` adds routes."""
    runner = web.AppRunner(make_app(health, metrics, routes), access_log=None)
    await runner.setup()
    try:
        sites: list[web.BaseSite] = [web.SockSite(runner, sock) for sock in sockets]
        for site in sites or [web.TCPSite(runner, host, port)]:
            await site.start()
        yield runner
    finally:
        await runner.cleanup()
