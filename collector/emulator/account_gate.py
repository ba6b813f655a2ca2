"""The admission side of the account emulator: request weight per pool, 429 then 418 bans
(docs/binance.md §3), scripted failures and stalls, and the middleware that applies them
outermost on every REST app (see `account_rest`); a base of `AccountEmulator`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from collector.emulator.account_limits import (
    MINUTE_MS,
    BanPolicy,
    FaultPlan,
    RateLimiter,
    Stall,
    WeightPool,
)
from collector.emulator.account_options import AccountOptions, AccountStats
from collector.emulator.market_rest import ROUTE_WEIGHTS, WEIGHT_HEADER, json_response

SAPI_WEIGHT_HEADER: Final = "X-SAPI-USED-IP-WEIGHT-1M"
FUTURES_POOL: Final = "futures"
"""Name of the weight pool fapi and dapi share (§3.1); `papi` and `api` are the others, and each
`/sapi` endpoint's pool is named by its path."""
_TIME_ROUTES: Final = {"/fapi/v1/time": "fapi", "/dapi/v1/time": "dapi"}
"""Market-data time routes answered here, so that they report the skewed, injectable clock."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _fault_response(status: int) -> web.Response:
    """A scripted failure: JSON bodies for the statuses Binance itself answers, a proxy's HTML
    page for 502/504, and a bare 404 (a retired route, a wrong base URL), so clients cannot
    assume an error body is JSON."""
    if status == 404:
        return web.Response(status=404, text="404: Not Found", content_type="text/plain")
    if status in (502, 504):
        text = "Bad Gateway" if status == 502 else "Gateway Time-out"
        return web.Response(
            status=status,
            text=f"<html><body><h1>{status} {text}</h1></body></html>",
            content_type="text/html",
        )
    if status == 503:
        body = {"code": -1001, "msg": "Service Unavailable."}
    else:
        body = {"code": -1000, "msg": "An unknown error occured while processing the request."}
    return json_response(body, status=status)


class AccountGate:
    """Faults (`fail_next`, `stall_next`, `release_stalls`, `clear_faults`), limits (`pools`,
    `used_weight`, `banned_until_ms`, `reset_limits`), the server clocks (`server_time_ms`) and
    observation (`stats`, `wait_until`)."""

    _options: AccountOptions

    def __init__(self, options: AccountOptions) -> None:
        self.stats = AccountStats(signed=deque(maxlen=options.signed_log_size))
        self._faults = FaultPlan()
        self._limiter = RateLimiter(BanPolicy())
        self.pools: dict[str, WeightPool] = {
            FUTURES_POOL: WeightPool(FUTURES_POOL, 1, WEIGHT_HEADER, can_ban=True),
            "papi": WeightPool("papi", 1, WEIGHT_HEADER, can_ban=True),
            "api": WeightPool("api", 1, WEIGHT_HEADER, can_ban=False),
        }
        """Weight budgets by name: futures (fapi + dapi), papi, api, and one per sapi path."""
        self._release: asyncio.Event | None = None
        self._change: asyncio.Event | None = None

    def server_time_ms(self, host: str) -> int:
        """The clock of `host` (fapi, dapi, papi, sapi): `clock()` plus that host's skew."""
        return self._options.clock() + self._options.skew_ms.get(host, 0)

    # -- faults and limits ----------------------------------------------------------------------

    def fail_next(self, path: str, count: int = 1, status: int = 503) -> None:
        """Answer the next `count` requests to route `path` (e.g. "/fapi/v1/forceOrders"; "*" =
        any route) with `status`: 503 `{"code":-1001,"msg":"Service Unavailable."}`, 500 -1000,
        502/504 an HTML page, 404 a plain-text "404: Not Found". Scripted failures cost no
        weight (§3.2) and carry no weight header.
        """
        self._faults.fail_next(path, count, status)

    def stall_next(self, path: str, count: int = 1, seconds: float | None = None) -> None:
        """Hold the next `count` responses of route `path` ("*" = any) for `seconds`, or until
        `release_stalls()` (or shutdown) when None. The weight is counted before the stall."""
        self._faults.stall_next(path, count, seconds)

    def release_stalls(self) -> None:
        """Let every response held by a stall go now."""
        release, self._release = self._release, None
        if release is not None:
            release.set()

    def clear_faults(self) -> None:
        """Drop every scripted failure and stall not yet consumed."""
        self._faults.clear()

    def used_weight(self, pool: str) -> int:
        """Weight used in the current minute of `pool` (futures, papi, api or a sapi path)."""
        return self.pools[pool].used_at(self._options.clock())

    @property
    def banned_until_ms(self) -> int:
        """When the current (or last) fapi/dapi/papi IP ban ends, ms; 0 if never banned."""
        return self._limiter.banned_until_ms

    def reset_limits(self) -> None:
        """Forget all used weight, lift any ban and forget past offences."""
        for pool in self.pools.values():
            pool.reset()
        self._limiter.reset()

    # -- observation ----------------------------------------------------------------------------

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - tests read better with the deadline inline
    ) -> None:
        """Wait until `predicate()` holds, re-checking whenever a request arrives, finishes or
        starts stalling. Raises TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._change is None:
                    self._change = asyncio.Event()
                await self._change.wait()

    def _notify(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    # -- admission ------------------------------------------------------------------------------

    def _pool_for(self, host: str, path: str) -> WeightPool:
        if host in ("fapi", "dapi"):
            return self.pools[FUTURES_POOL]
        if host == "papi":
            return self.pools["papi"]
        if path.startswith("/api/"):
            return self.pools["api"]
        pool = self.pools.get(path)
        if pool is None:  # §3.1: every /sapi endpoint has its own budget and never bans
            pool = WeightPool(
                path, self._options.sapi_weight_limit, SAPI_WEIGHT_HEADER, can_ban=False
            )
            self.pools[path] = pool
        return pool

    def middleware(self, host: str) -> Callable[..., Any]:
        """The middleware `install_account_api` puts outermost on `host`'s REST app."""

        @web.middleware
        async def account_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            if resource is None:  # unmatched (404/405): neither counted nor limited
                return await handler(request)
            path = resource.canonical
            self.stats.requests[path] += 1
            self._notify()
            try:
                response = await self._admit(request, host, path, handler)
            finally:
                self._notify()
            self.stats.responses[(path, response.status)] += 1
            return response

        return account_middleware

    async def _admit(
        self, request: web.Request, host: str, path: str, handler: Handler
    ) -> web.StreamResponse:
        failure = self._faults.take_failure(path)
        if failure is not None:
            self.stats.faults_served += 1
            return _fault_response(failure)
        pool = self._pool_for(host, path)
        declared = request.app[ROUTE_WEIGHTS].get(path, 1)
        weight = declared if isinstance(declared, int) else declared(request)
        now_ms = self._options.clock()
        decision = self._limiter.check(pool, weight, now_ms)
        stats = self.stats
        stats.max_used_weight[pool.name] = max(stats.max_used_weight[pool.name], decision.used)
        response: web.StreamResponse
        if decision.status != 200:
            if decision.status == 418:
                stats.banned_418 += 1
            else:
                stats.rate_limited_429 += 1
                stats.minutes_429[pool.name].add(now_ms // MINUTE_MS)
            stats.errors[-1003] += 1
            response = json_response({"code": -1003, "msg": decision.msg}, status=decision.status)
            # Spot docs promise Retry-After (§3.2); the futures docs do not (⚠).
            if not pool.can_ban or self._options.is_futures_retry_after_sent:
                response.headers["Retry-After"] = str(decision.retry_after_s)
        else:
            stall = self._faults.take_stall(path)
            if stall is not None:
                await self._stall(stall)
            if path in _TIME_ROUTES:
                response = json_response({"serverTime": self.server_time_ms(host)})
            else:
                response = await handler(request)
        response.headers[pool.header] = str(decision.used)
        return response

    async def _stall(self, stall: Stall) -> None:
        if self._release is None:
            self._release = asyncio.Event()
        release = self._release
        self.stats.stalls += 1
        self.stats.stalled_now += 1
        self._notify()
        try:
            if stall.seconds is None:
                await release.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(stall.seconds):
                        await release.wait()
        finally:
            self.stats.stalled_now -= 1

    async def _on_shutdown(self, app: web.Application) -> None:
        self.release_stalls()
