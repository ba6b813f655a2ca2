"""End to end: account pollers against a small fake of Binance's documented account endpoints
(signature checked, windows and pages enforced), writing to a real Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from collector.config import AccountConfig, BinanceConfig, Config, RestConfig, Secret
from collector.metrics import Metrics
from tests.accounts import running_accounts
from tests.clocks import SharedClock

DAY = 86_400_000
WEEK = 7 * DAY


@dataclass
class FakeBinance:
    """Binance's account endpoints as documented, over in-memory orders."""

    keys: dict[str, str] = field(default_factory=dict)  # api key -> HMAC secret
    futures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # path -> rows
    margin: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # path -> rows
    lookups: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    clock: SharedClock = field(default_factory=lambda: SharedClock.at_minute_start(rate=20))
    """Server time; the collector under test shares it (20x: a weight minute every 3 s)."""

    def _check(self, request: web.Request) -> dict[str, str] | web.Response:
        raw = request.query_string
        key = request.headers.get("X-MBX-APIKEY", "")
        payload, _, signature = raw.rpartition("&signature=")
        secret = self.keys.get(key)
        if secret is None:
            return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return _error(400, -1022, "Signature for this request is not valid.")
        params = dict(request.query)
        stamp = int(params["timestamp"])
        now = self.clock.ms()
        if not (stamp < now + 1000 and now - stamp <= int(params["recvWindow"])):
            return _error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        self.requests.append((request.path, params))
        return params

    async def time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.clock.ms()})

    async def futures_orders(self, request: web.Request) -> web.Response:
        params = self._check(request)
        if isinstance(params, web.Response):
            return params
        start, end = int(params["startTime"]), int(params["endTime"])
        if end - start > WEEK:
            return _error(400, -1127, "More than 168 hours between startTime and endTime.")
        act, limit = params["autoCloseType"], int(params["limit"])
        rows = [r for r in self.futures.get(request.path, [])
                if r["_act"] == act and start <= r["time"] <= end]  # fmt: skip
        rows.sort(key=lambda r: r["time"])
        return web.json_response([_public(r) for r in rows[:limit]])

    async def margin_orders(self, request: web.Request) -> web.Response:
        params = self._check(request)
        if isinstance(params, web.Response):
            return params
        start, end = int(params["startTime"]), int(params["endTime"])
        current, size = int(params["current"]), int(params["size"])
        isolated = params.get("isolatedSymbol")
        rows = [r for r in self.margin.get(request.path, [])
                if start <= r["updatedTime"] <= end
                and (r["symbol"] == isolated if isolated else not r.get("isIsolated"))]  # fmt: skip
        rows.sort(key=lambda r: r["updatedTime"], reverse=True)
        page = rows[(current - 1) * size : current * size]
        return web.json_response({"rows": page, "total": len(rows)})

    async def margin_order(self, request: web.Request) -> web.Response:
        params = self._check(request)
        if isinstance(params, web.Response):
            return params
        found = self.lookups.get((params["symbol"], int(params["orderId"])))
        if found is None:
            return _error(400, -2013, "Order does not exist.")
        return web.json_response(found)


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def futures_row(order_id: int, t: int, act: str, symbol: str = "BTCUSDT") -> dict[str, Any]:
    """A force order as /fapi/v1/forceOrders documents it (plus the type it is filed under)."""
    return {"_act": act, "orderId": order_id, "symbol": symbol, "status": "FILLED",
            "clientOrderId": "autoclose-1" if act == "LIQUIDATION" else "adl_autoclose",
            "price": "100.5", "avgPrice": "101", "origQty": "2", "executedQty": "2",
            "cumQuote": "202", "timeInForce": "IOC", "type": "LIMIT", "side": "SELL",
            "positionSide": "BOTH", "origType": "LIMIT", "time": t,
            "updateTime": t + 5}  # fmt: skip


def margin_row(
    order_id: int, t: int, symbol: str = "BNBBTC", isolated: bool = False
) -> dict[str, Any]:
    """A margin force order as /sapi/v1/margin/forceLiquidationRec documents it."""
    return {"avgPrice": "0.5", "executedQty": "3", "orderId": order_id, "price": "0.4",
            "qty": "3", "side": "SELL", "symbol": symbol, "timeInForce": "GTC",
            "isIsolated": isolated, "updatedTime": t}  # fmt: skip


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBinance, str]]:
    """The fake on a loopback port; every API family shares its base URL."""
    fb = FakeBinance()
    app = web.Application()
    for path in ("/fapi/v1/time", "/dapi/v1/time", "/api/v3/time"):
        app.router.add_get(path, fb.time)
    for path in ("/fapi/v1/forceOrders", "/dapi/v1/forceOrders", "/papi/v1/um/forceOrders",
                 "/papi/v1/cm/forceOrders"):  # fmt: skip
        app.router.add_get(path, fb.futures_orders)
    for path in ("/sapi/v1/margin/forceLiquidationRec", "/papi/v1/margin/forceOrders"):
        app.router.add_get(path, fb.margin_orders)
    for path in ("/sapi/v1/margin/order", "/papi/v1/margin/order"):
        app.router.add_get(path, fb.margin_order)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield fb, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _config(url: str, accounts: tuple[AccountConfig, ...], enrich_per_poll: int = 20) -> Config:
    rest = RestConfig(poll_interval_s=0.2, overlap_s=600, retry_initial_s=0.01,
                      retry_max_s=0.05, auth_failure_backoff_s=60, recv_window_ms=60_000,
                      enrich_per_poll=enrich_per_poll)  # fmt: skip
    binance = BinanceConfig(fapi_url=url, dapi_url=url, papi_url=url, sapi_url=url)
    return Config(binance=binance, rest=rest, accounts=accounts)


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        # A condition with a deadline: the database is the only place the outcome shows.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _keys(pg: asyncpg.Connection) -> set[tuple[Any, ...]]:
    rows = await pg.fetch("SELECT account, product, symbol, order_id, auto_close_type, endpoint "
                          "FROM account_force_orders")  # fmt: skip
    return {tuple(r) for r in rows}


async def _complete(pg: asyncpg.Connection, scopes: int) -> bool:
    n = await pg.fetchval("SELECT count(*) FROM account_poll_checkpoints WHERE backfill_complete")
    pending = await pg.fetchval(
        "SELECT count(*) FROM account_force_orders WHERE product = 'margin' "
        "AND enrichment IS NULL AND enrichment_error IS NULL"
    )
    return bool(n == scopes and pending == 0)


async def test_every_order_stored_once_after_backfill_polling_and_restart(
    fake: tuple[FakeBinance, str], pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Backfill, keep-up and a restart store each order of every endpoint exactly once."""
    fb, url = fake
    now = fb.clock.ms()
    fb.keys = {"CLASSICKEY": "s1", "PMKEY": "s2"}
    # 150 UM liquidations within three days force bisection of a full page.
    fb.futures["/fapi/v1/forceOrders"] = [
        futures_row(1000 + i, now - 4 * DAY + i * 1_800_000, "LIQUIDATION") for i in range(150)
    ] + [futures_row(5000, now - 10 * DAY, "ADL")]
    fb.futures["/dapi/v1/forceOrders"] = [
        futures_row(7, now - DAY, "LIQUIDATION", "BTCUSD_PERP"),
        futures_row(8, now - 30 * DAY, "LIQUIDATION", "BTCUSD_PERP"),  # beyond backfill_days
    ]
    fb.futures["/papi/v1/um/forceOrders"] = [
        futures_row(7, now - 2 * DAY, "ADL", "ETHUSDT"),
        futures_row(11, now - 60_000, "LIQUIDATION", "ETHUSDT"),
    ]
    fb.futures["/papi/v1/cm/forceOrders"] = [
        futures_row(9, now - DAY, "LIQUIDATION", "ETHUSD_PERP")
    ]
    fb.margin["/sapi/v1/margin/forceLiquidationRec"] = [
        margin_row(300 + i, now - 5 * DAY + i * 1000) for i in range(120)
    ] + [margin_row(900, now - DAY, "ETHUSDT", isolated=True)]
    fb.margin["/papi/v1/margin/forceOrders"] = [margin_row(42, now - 2 * DAY)]
    fb.lookups = {("BNBBTC", 300 + i): {"orderId": 300 + i, "symbol": "BNBBTC", "time": now,
                                        "type": "LIMIT", "clientOrderId": f"c{i}",
                                        "status": "FILLED"} for i in range(120)}  # fmt: skip
    fb.lookups[("BNBBTC", 42)] = {"orderId": 42, "symbol": "BNBBTC", "time": now, "type": "LIMIT"}
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret("s1"),
                            isolated_symbols=("ETHUSDT",), backfill_days=20)  # fmt: skip
    pm = AccountConfig("pm", "portfolio_margin", Secret("PMKEY"), Secret("s2"), backfill_days=20)
    config = _config(url, (classic, pm), enrich_per_poll=200)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    try:
        async with running_accounts(config, pool, metrics, fb.clock):
            await _until(lambda: _complete(pg, 11), 30)
        expected = (
            {("classic", "um", "BTCUSDT", 1000 + i, "LIQUIDATION", "/fapi/v1/forceOrders")
             for i in range(150)}
            | {("classic", "um", "BTCUSDT", 5000, "ADL", "/fapi/v1/forceOrders"),
               ("classic", "cm", "BTCUSD_PERP", 7, "LIQUIDATION", "/dapi/v1/forceOrders"),
               ("pm", "um", "ETHUSDT", 7, "ADL", "/papi/v1/um/forceOrders"),
               ("pm", "um", "ETHUSDT", 11, "LIQUIDATION", "/papi/v1/um/forceOrders"),
               ("pm", "cm", "ETHUSD_PERP", 9, "LIQUIDATION", "/papi/v1/cm/forceOrders"),
               ("pm", "margin", "BNBBTC", 42, "LIQUIDATION", "/papi/v1/margin/forceOrders"),
               ("classic", "margin", "ETHUSDT", 900, "LIQUIDATION",
                "/sapi/v1/margin/forceLiquidationRec")}
            | {("classic", "margin", "BNBBTC", 300 + i, "LIQUIDATION",
                "/sapi/v1/margin/forceLiquidationRec") for i in range(120)}
        )  # fmt: skip
        assert await _keys(pg) == expected
        assert (
            await pg.fetchval(
                "SELECT enrichment_error FROM account_force_orders WHERE order_id = 900"
            )
            == "/sapi/v1/margin/order: HTTP 400 code -2013: Order does not exist."
        )
        assert (
            await pg.fetchval(
                "SELECT client_order_id FROM account_force_orders WHERE order_id = 301"
            )
            == "c1"
        )
        first_run_requests = len(fb.requests)
        rows_new = metrics.account_rows.labels("classic", "/fapi/v1/forceOrders", "new")
        assert rows_new._value.get() == 151
        assert metrics.account_healthy.labels("classic")._value.get() == 1

        # Restart: one new order and one later version of a recent one (within the overlap);
        # history is not downloaded again.
        fb.requests.clear()
        fb.futures["/fapi/v1/forceOrders"].append(futures_row(6000, fb.clock.ms() - 1000, "ADL"))
        fb.futures["/papi/v1/um/forceOrders"][1]["updateTime"] += 1000
        fb.futures["/papi/v1/um/forceOrders"][1]["status"] = "EXPIRED"
        async with running_accounts(config, pool, metrics, fb.clock):
            await _until(lambda: _has(pg, 6000), 20)
            await _until(lambda: _status(pg, "pm", 11, "EXPIRED"), 20)
        expected.add(("classic", "um", "BTCUSDT", 6000, "ADL", "/fapi/v1/forceOrders"))
        assert await _keys(pg) == expected
        oldest = min(int(p["startTime"]) for _, p in fb.requests if "startTime" in p)
        assert oldest >= now - 700_000  # only the overlap was re-read
        assert len(fb.requests) < first_run_requests
        updated = metrics.account_rows.labels("pm", "/papi/v1/um/forceOrders", "updated")
        assert updated._value.get() == 1
    finally:
        await pool.close()


async def _has(pg: asyncpg.Connection, order_id: int) -> bool:
    return bool(await pg.fetchval(
        "SELECT count(*) FROM account_force_orders WHERE order_id = $1", order_id))  # fmt: skip


async def _status(pg: asyncpg.Connection, account: str, order_id: int, status: str) -> bool:
    got = await pg.fetchval("SELECT status FROM account_force_orders WHERE account = $1 AND "
                            "order_id = $2", account, order_id)  # fmt: skip
    return bool(got == status)


async def test_a_bad_key_isolates_one_account(
    fake: tuple[FakeBinance, str], pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """An account whose key is rejected is marked unhealthy while the other one is collected."""
    fb, url = fake
    fb.keys = {"GOODKEY": "good"}
    fb.futures["/fapi/v1/forceOrders"] = [futures_row(1, fb.clock.ms() - DAY, "ADL")]
    good = AccountConfig("good", "classic", Secret("GOODKEY"), Secret("good"),
                         products=("um",), backfill_days=2)  # fmt: skip
    bad = AccountConfig("bad", "classic", Secret("GOODKEY"), Secret("wrong"),
                        products=("um",), backfill_days=2)  # fmt: skip
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    try:
        healthy = metrics.account_healthy
        async with running_accounts(_config(url, (good, bad)), pool, metrics, fb.clock):
            await _until(lambda: _complete(pg, 2))
            await _until(lambda: _true(healthy.labels("bad")._value.get() == 0))
            assert healthy.labels("good")._value.get() == 1
        assert await _keys(pg) == {("good", "um", "BTCUSDT", 1, "ADL", "/fapi/v1/forceOrders")}
        outcome = metrics.rest_requests.labels("/fapi/v1/forceOrders", "auth_error")
        assert outcome._value.get() == 2  # one per scope, then the long backoff
    finally:
        await pool.close()


async def _true(value: bool) -> bool:
    return value
