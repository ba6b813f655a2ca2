"""The signed client against a scripted local server: what is sent, and how each documented
failure (429, 418, -1021, 5xx, auth codes) is handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from collector.config import BinanceConfig, RestConfig, Secret
from collector.metrics import Metrics
from collector.rest.budget import FAPI_DAPI_POOL, Budget
from collector.rest.client import (
    AuthError,
    Credentials,
    RequestRejected,
    RestClient,
    TransientRestError,
)
from collector.rest.clock import ServerClocks
from collector.rest.signing import HmacSigner
from tests.daemon import metric_value

SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"


@dataclass
class Script:
    """Responses to hand out in order (then 200 []), and what was received."""

    responses: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    server_time_ms: int = 0


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    """A loopback server answering /fapi/v1/time and scripted /fapi/v1/forceOrders."""
    script = Script()

    async def time_handler(request: web.Request) -> web.Response:
        return web.json_response({"serverTime": script.server_time_ms})

    async def orders(request: web.Request) -> web.Response:
        script.queries.append(request.query_string)
        script.keys.append(request.headers.get("X-MBX-APIKEY"))
        status, body, headers = script.responses.pop(0) if script.responses else (200, [], {})
        return web.Response(status=status, body=orjson.dumps(body), headers=headers,
                            content_type="application/json")  # fmt: skip

    app = web.Application()
    app.router.add_get("/fapi/v1/time", time_handler)
    app.router.add_get("/fapi/v1/forceOrders", orders)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", script
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


def _client(
    url: str, session: aiohttp.ClientSession, metrics: Metrics, wall_ms: list[float]
) -> RestClient:
    rest = RestConfig(retry_initial_s=0.001, retry_max_s=0.002)
    clocks = ServerClocks(metrics, 300.0, wall_ms=lambda: wall_ms[0])
    # Every family on the loopback server: nothing may reach a real Binance host.
    binance = BinanceConfig(fapi_url=url, dapi_url=url, papi_url=url, sapi_url=url)
    return RestClient(session, binance, rest, Budget(0.5, metrics), clocks, metrics)


CREDS = Credentials("KEY123", HmacSigner(Secret(SECRET)))


async def test_sends_the_signed_string_with_key_header(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    """The query is params, recvWindow, server-offset timestamp and the HMAC of exactly that."""
    url, script = server
    script.server_time_ms = 1_591_702_613_943 + 250  # the clock sends server time - 250 ms
    metrics = Metrics(CollectorRegistry())
    client = _client(url, session, metrics, [1_591_702_613_943.0 + 10_000])
    await client.get_signed("fapi", "/fapi/v1/forceOrders", [("autoCloseType", "ADL")], 50,
                            CREDS, asyncio.Event())  # fmt: skip
    payload = "autoCloseType=ADL&recvWindow=5000&timestamp=1591702613943"
    assert script.queries == [f"{payload}&signature={HmacSigner(Secret(SECRET)).sign(payload)}"]
    assert script.keys == ["KEY123"]
    assert metric_value(metrics.registry, "collector_rest_requests_total",
                        endpoint="/fapi/v1/forceOrders", outcome="ok") == 1  # fmt: skip
    assert metric_value(metrics.registry, "collector_rest_clock_offset_seconds",
                        family="fapi") == -9.75  # fmt: skip


async def test_429_pauses_then_succeeds_and_header_corrects_weight(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    """A 429 with Retry-After pauses the pool, the retry succeeds, the used-weight is read."""
    url, script = server
    script.responses = [
        (429, {"code": -1003, "msg": "Too many requests"}, {"Retry-After": "0.05"}),
        (200, [], {"X-MBX-USED-WEIGHT-1M": "777"}),
    ]
    metrics = Metrics(CollectorRegistry())
    client = _client(url, session, metrics, [0.0])
    assert await client.get_signed("fapi", "/fapi/v1/forceOrders", [], 50, CREDS,
                                   asyncio.Event()) == []  # fmt: skip
    assert len(script.queries) == 2
    assert metric_value(metrics.registry, "collector_rest_rate_limited_total",
                        pool=FAPI_DAPI_POOL, status="429") == 1  # fmt: skip
    assert metric_value(metrics.registry, "collector_rest_weight_used", pool=FAPI_DAPI_POOL) == 777


async def test_418_bans_every_pool_until_retry_after(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    """A 418 sets the IP-wide ban from Retry-After and the request is retried after it."""
    url, script = server
    script.responses = [(418, {"code": -1003, "msg": "banned"}, {"Retry-After": "0.05"})]
    metrics = Metrics(CollectorRegistry())
    client = _client(url, session, metrics, [0.0])
    await client.get_signed("fapi", "/fapi/v1/forceOrders", [], 50, CREDS, asyncio.Event())
    assert client.budget.banned_until > 0
    assert metric_value(metrics.registry, "collector_rest_rate_limited_total",
                        pool=FAPI_DAPI_POOL, status="418") == 1  # fmt: skip
    assert len(script.queries) == 2


async def test_minus_1021_resyncs_the_clock_and_retries(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    """-1021 triggers a fresh server-time offset and the retry carries the corrected timestamp."""
    url, script = server
    wall = [1_000_000.0]
    metrics = Metrics(CollectorRegistry())
    client = _client(url, session, metrics, wall)
    script.server_time_ms = 1_000_000
    await client.get_signed("fapi", "/fapi/v1/forceOrders", [], 50, CREDS, asyncio.Event())
    script.server_time_ms = 1_000_000 + 60_000  # the server's clock jumps ahead by a minute
    script.responses = [(400, {"code": -1021, "msg": "Timestamp outside recvWindow"}, {})]
    await client.get_signed("fapi", "/fapi/v1/forceOrders", [], 50, CREDS, asyncio.Event())
    assert [q.split("&")[1] for q in script.queries] == [
        "timestamp=999750", "timestamp=999750", "timestamp=1059750",
    ]  # fmt: skip
    assert metric_value(metrics.registry, "collector_rest_requests_total",
                        endpoint="/fapi/v1/forceOrders", outcome="clock_skew") == 1  # fmt: skip


@pytest.mark.parametrize("code", [-2015, -2014, -1002, -1022])
async def test_auth_codes_raise_auth_error_without_retry(
    server: tuple[str, Script], session: aiohttp.ClientSession, code: int
) -> None:
    """Auth and permission codes raise AuthError after exactly one request."""
    url, script = server
    script.responses = [(401, {"code": code, "msg": "Invalid API-key"}, {})]
    client = _client(url, session, Metrics(CollectorRegistry()), [0.0])
    with pytest.raises(AuthError) as info:
        await client.get_signed("fapi", "/fapi/v1/forceOrders", [], 50, CREDS, asyncio.Event())
    assert (info.value.code, len(script.queries)) == (code, 1)
    assert "KEY123" not in str(info.value)
    assert "signature" not in str(info.value)


async def test_5xx_is_retried_then_gives_up(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    """503s are retried with backoff; the fifth failure raises TransientRestError."""
    url, script = server
    script.responses = [(503, {"code": -1001, "msg": "busy"}, {})] * 5
    client = _client(url, session, Metrics(CollectorRegistry()), [0.0])
    with pytest.raises(TransientRestError):
        await client.get_signed("fapi", "/fapi/v1/forceOrders", [], 50, CREDS, asyncio.Event())
    assert len(script.queries) == 5


async def test_other_4xx_is_rejected(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    """A parameter error (-1127) raises RequestRejected carrying the code."""
    url, script = server
    script.responses = [(400, {"code": -1127, "msg": "More than 168 hours"}, {})]
    client = _client(url, session, Metrics(CollectorRegistry()), [0.0])
    with pytest.raises(RequestRejected) as info:
        await client.get_signed("fapi", "/fapi/v1/forceOrders", [], 50, CREDS, asyncio.Event())
    assert info.value.code == -1127
