"""The HTTP side: `/metrics` for Prometheus, `/healthz` (alive) and `/readyz` (doing its job).

`/readyz` runs every registered check and answers `{"ok": [...], "failing": {name: reason}}`,
with 503 when any fails. Checks are async callables that raise to fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from collector.metrics import Metrics

Check = Callable[[], Awaitable[None]]
_CHECK_TIMEOUT_S = 2.0


class Health:
    """Named readiness checks, plus a draining flag that fails readiness during shutdown."""

    def __init__(self) -> None:
        self.checks: dict[str, Check] = {}
        self.is_draining = False

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) a readiness check."""
        self.checks[name] = check

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


def make_app(health: Health, metrics: Metrics) -> web.Application:
    """The aiohttp application serving /metrics, /healthz and /readyz."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok, failing = await health.run_checks()
        body = orjson.dumps({"ok": ok, "failing": failing})
        return web.Response(
            body=body, status=503 if failing else 200, content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def serve_http(
    host: str, port: int, health: Health, metrics: Metrics
) -> AsyncIterator[web.AppRunner]:
    """Serve the app on host:port for the duration of the context (port 0: any free port)."""
    runner = web.AppRunner(make_app(health, metrics), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield runner
    finally:
        await runner.cleanup()


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner's first site listens on (useful with port 0)."""
    server = runner.addresses[0]
    return int(server[1])
