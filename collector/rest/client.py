"""Signed GETs with budgets, clock offsets and error classification (docs/binance.md §2, §3, §5).

`RestClient.get` charges the weight before sending, signs the exact query string it sends,
corrects the pool from the used-weight headers, waits out 429s (one pool) and 418s (every
pool), resyncs the clock on -1021, retries 5xx/timeouts with backoff, and raises:

RestError (CollectorError)
├── AuthError          -2015/-2014/-1002/-1022: the account's key cannot do this; never retried here
├── RequestRejected    any other 4xx with a Binance code: a parameter/window problem
├── TransientRestError retries exhausted (5xx, timeouts, WAF 403)
└── RestStopped        `stop` was set while waiting
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from yarl import URL

from collector.config import BinanceConfig, RestConfig
from collector.exceptions import CollectorError
from collector.metrics import Metrics
from collector.rest.budget import FAPI_DAPI_POOL, Budget, pool_for, request_weight_limit_1m
from collector.rest.clock import ClockStopped, ServerClocks, base_url
from collector.rest.signing import Param, Signer, encode_query, signed_query
from collector.retry import (
    REST_ATTEMPTS,
    REST_CLOCK_RESYNCS,
    REST_LIMITS_RETRY_S,
    is_transient,
    is_transient_response,
    rest_retry,
    sleep_or_stop,
)

log = structlog.get_logger(__name__)

AUTH_CODES = frozenset({-2015, -2014, -1002, -1022})
INVALID_TIMESTAMP = -1021
_WEIGHT_HEADERS = ("X-MBX-USED-WEIGHT-1M", "X-SAPI-USED-IP-WEIGHT-1M")
_BANNED_UNTIL = re.compile(r"banned until (\d{10,})")
# A 418 with neither Retry-After nor a "banned until": Binance's shortest ban (§3.2).
_DEFAULT_BAN_S = 120.0
# A WAF 403 typically lasts 5 minutes (§3.2).
_WAF_PAUSE_S = 300.0


class RestError(CollectorError):
    """A request failed; attributes say where and how (never the key or the signed URL)."""

    def __init__(self, path: str, status: int | None, code: int | None, msg: str) -> None:
        self.path = path
        self.status = status
        self.code = code
        self.msg = msg
        super().__init__(path, status, code, msg)

    def __str__(self) -> str:
        return f"{self.path}: HTTP {self.status} code {self.code}: {self.msg}"


class AuthError(RestError):
    """Invalid key, IP, signature or permission: the account needs attention."""


class RequestRejected(RestError):
    """Binance rejected the parameters (e.g. -1127 window too wide, -1130 invalid value)."""


class TransientRestError(RestError):
    """Server-side or network trouble outlasted the retries."""


class RestStopped(CollectorError):
    """Stop was requested while a request waited for its budget or a retry."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An account's key and signer; prints no secret."""

    api_key: str
    signer: Signer

    def __repr__(self) -> str:
        return "Credentials(<SECRET>)"


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _used_weight(headers: Mapping[str, str]) -> int | None:
    """The pool's used weight this minute as Binance reports it, if it does."""
    for name in _WEIGHT_HEADERS:
        if name in headers:
            with contextlib.suppress(ValueError):
                return int(headers[name])
    return None


def _error_body(body: bytes) -> tuple[int | None, str]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, body[:200].decode("utf-8", "replace")
    if isinstance(payload, dict):
        code = payload.get("code")
        return (code if isinstance(code, int) else None), str(payload.get("msg", ""))
    return None, str(payload)[:200]


class RestClient:
    """Signed and unsigned GETs for one HTTP session, sharing a process-wide budget and clocks."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        binance: BinanceConfig,
        rest: RestConfig,
        budget: Budget,
        clocks: ServerClocks,
        metrics: Metrics,
    ) -> None:
        self.session = session
        self.binance = binance
        self.rest = rest
        self.budget = budget
        self.clocks = clocks
        self.metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=rest.request_timeout_s)

    async def fetch_server_time(
        self, family: str, path: str, stop: asyncio.Event | None = None
    ) -> tuple[int, float]:
        """Unsigned GET of a time endpoint (weight 1); returns serverTime in ms and our wall
        clock (ms) halfway between sending the request and reading the answer. The wait for
        weight before sending is no part of it."""
        timing: list[float] = []
        payload = await self._request(
            family, path, (), 1, None, stop or asyncio.Event(), timing=timing
        )
        if not isinstance(payload, dict) or not isinstance(payload.get("serverTime"), int):
            raise TransientRestError(path, 200, None, "no serverTime in the time response")
        sent_ms, received_ms = timing
        return int(payload["serverTime"]), (sent_ms + received_ms) / 2

    async def get_signed(
        self,
        family: str,
        path: str,
        params: Sequence[Param],
        weight: int,
        credentials: Credentials,
        stop: asyncio.Event,
        *,
        is_backfill: bool = False,
    ) -> Any:
        """GET `path` on `family` signed with `credentials`; returns the decoded JSON.
        `is_backfill`: history or enrichment, which gives way to fresh reads for weight."""
        if pool_for(family, path) == FAPI_DAPI_POOL:
            await self.limits_ready(stop)
        await self.clock_ready(family, stop)
        return await self._request(
            family, path, params, weight, credentials, stop, is_backfill=is_backfill
        )

    async def limits_ready(self, stop: asyncio.Event) -> None:
        """Read the fapi + dapi weight limit that exchangeInfo announces, at the first request
        and then every `exchange_info_refresh_s` (a minute after a failure). Both hosts count
        against one pool, so the lower of the two figures applies (docs/binance.md §3.1)."""
        budget = self.budget
        if not budget.announcement_due(FAPI_DAPI_POOL):
            return
        async with budget.announcement_lock:
            if not budget.announcement_due(FAPI_DAPI_POOL):
                return
            limits: list[int] = []
            for family in ("fapi", "dapi"):
                path = f"/{family}/v1/exchangeInfo"
                try:
                    payload = await self._request(family, path, (), 1, None, stop)
                except (TransientRestError, RequestRejected) as exc:
                    log.warning("rest.limits_unavailable", path=path, error=str(exc)[:200])
                    continue
                limit = request_weight_limit_1m(payload)
                if limit is None:
                    log.warning("rest.limits_unannounced", path=path)
                    continue
                limits.append(limit)
            announced = min(limits) if limits else None
            refresh_s = self.binance.exchange_info_refresh_s
            budget.announce(FAPI_DAPI_POOL, announced, refresh_s if limits else REST_LIMITS_RETRY_S)
            if announced is not None:
                log.info("rest.limits_announced", pool=FAPI_DAPI_POOL, limit_1m=announced,
                         allowed_1m=budget.pool(FAPI_DAPI_POOL).allowed_1m)  # fmt: skip

    async def clock_ready(self, family: str, stop: asyncio.Event) -> None:
        """Wait for a fresh server-time offset of `family` (RestStopped if `stop` comes first)."""
        fetch = functools.partial(self.fetch_server_time, stop=stop)
        try:
            await self.clocks.ready(family, fetch, stop)
        except ClockStopped:
            raise RestStopped(family) from None

    async def _request(
        self,
        family: str,
        path: str,
        params: Sequence[Param],
        weight: int,
        credentials: Credentials | None,
        stop: asyncio.Event,
        *,
        timing: list[float] | None = None,
        is_backfill: bool = False,
    ) -> Any:
        """The request loop. `timing`, if given, receives our wall clock (ms) when the
        successful attempt was sent and when its answer was read."""
        pool = pool_for(family, path)
        backoff = rest_retry(self.rest.retry_initial_s, self.rest.retry_max_s).backoff()
        attempts = clock_retries = 0
        while True:
            if not await self.budget.acquire(pool, weight, stop, is_backfill=is_backfill):
                raise RestStopped(path)
            url = f"{base_url(self.binance, family)}{path}"
            headers: dict[str, str] = {}
            if credentials is not None:
                query = signed_query(
                    [
                        *params,
                        ("recvWindow", self.rest.recv_window_ms),
                        ("timestamp", self.clocks.timestamp_ms(family)),
                    ],
                    credentials.signer,
                )
                url = f"{url}?{query}"
                headers["X-MBX-APIKEY"] = credentials.api_key
            elif params:
                url = f"{url}?{encode_query(params)}"
            sent_at = self.clocks.monotonic()
            sent_wall_ms = self.clocks.wall_ms()
            try:
                async with self.session.get(
                    URL(url, encoded=True), headers=headers, timeout=self._timeout
                ) as response:
                    body = await response.read()
                    status = response.status
                    response_headers = response.headers.copy()
                received_wall_ms = self.clocks.wall_ms()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.rest_requests.labels(path, "network_error").inc()
                attempts += 1
                if attempts >= REST_ATTEMPTS:
                    raise TransientRestError(path, None, None, repr(exc)) from None
                delay = backoff.next_delay()
                log.warning("rest.retry_scheduled", path=path, error=type(exc).__name__,
                            retry_in_s=round(delay, 2))  # fmt: skip
                if await sleep_or_stop(delay, stop):
                    raise RestStopped(path) from None
                continue
            used_1m = _used_weight(response_headers)
            if used_1m is not None:
                self.budget.observe_used(pool, used_1m)
            if status == 200:
                try:
                    payload = orjson.loads(body)
                except orjson.JSONDecodeError:
                    self.metrics.rest_requests.labels(path, "bad_response").inc()
                    raise TransientRestError(path, status, None, "invalid JSON") from None
                self.metrics.rest_requests.labels(path, "ok").inc()
                if timing is not None:
                    timing[:] = [sent_wall_ms, received_wall_ms]
                return payload
            code, msg = _error_body(body)
            if status == 418:
                until = self._ban_end(response_headers, msg)
                self.budget.banned(pool, until)
                self.metrics.rest_requests.labels(path, "banned").inc()
                log.error("rest.ip_banned", path=path, pool=pool,
                          until_unix=round(until, 3))  # fmt: skip
                continue
            if status == 429:
                pause = self.budget.rate_limited(
                    pool, _retry_after_s(response_headers), weight, used_1m
                )
                self.metrics.rest_requests.labels(path, "rate_limited").inc()
                log.warning("rest.rate_limited", path=path, pool=pool, pause_s=round(pause, 2))
                continue
            if code == INVALID_TIMESTAMP and clock_retries < REST_CLOCK_RESYNCS:
                clock_retries += 1
                self.metrics.rest_requests.labels(path, "clock_skew").inc()
                log.warning("rest.clock_resync", path=path, family=family, msg=msg)
                self.clocks.rejected(family, sent_at)
                await self.clock_ready(family, stop)
                continue
            if code in AUTH_CODES:
                self.metrics.rest_requests.labels(path, "auth_error").inc()
                raise AuthError(path, status, code, msg)
            if not is_transient_response(status, code):
                self.metrics.rest_requests.labels(path, "rejected").inc()
                raise RequestRejected(path, status, code, msg)
            self.metrics.rest_requests.labels(path, "server_error").inc()
            if status == 403 and code is None:  # WAF: back off for minutes (§3.2)
                self.budget.pool(pool).block(_WAF_PAUSE_S)
            attempts += 1
            if attempts >= REST_ATTEMPTS:
                raise TransientRestError(path, status, code, msg)
            delay = backoff.next_delay()
            log.warning("rest.retry_scheduled", path=path, status=status, code=code,
                        retry_in_s=round(delay, 2))  # fmt: skip
            if await sleep_or_stop(delay, stop):
                raise RestStopped(path)

    def _ban_end(self, headers: Mapping[str, str], msg: str) -> float:
        """When a 418 ban ends (Unix seconds): Retry-After, else "banned until <ms>", else 2 min."""
        now = self.budget.clock()
        retry_after = _retry_after_s(headers)
        if retry_after is not None:
            return now + retry_after
        match = _BANNED_UNTIL.search(msg)
        if match:
            return max(now, int(match.group(1)) / 1000)
        return now + _DEFAULT_BAN_S
