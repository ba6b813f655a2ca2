"""End to end: account pollers against the in-repo emulator's account endpoints
(collector/emulator: signature checked, windows and pages enforced, as docs/binance.md
documents them), writing to a real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from collector.config import AccountConfig, BinanceConfig, Config, RestConfig, Secret
from collector.emulator import core
from collector.emulator.account_rest import (
    AccountEmulator,
    AccountOptions,
    Product,
    account_api,
    account_extension,
)
from collector.metrics import Metrics
from collector.rest.client import RequestRejected
from collector.rest.windows import MIN_WINDOW_MS, can_only_fail
from tests.accounts import account_state, running_accounts, settled, stored_keys
from tests.clocks import SharedClock
from tests.daemon import eventually, metric_value

DAY = 86_400_000
WEEK = 7 * DAY


def futures_fields(order_id: int, t: int, act: str, symbol: str = "BTCUSDT") -> dict[str, Any]:
    """A force order as /fapi/v1/forceOrders documents it (autoCloseType: the type it is filed
    under)."""
    return {"autoCloseType": act, "orderId": order_id, "symbol": symbol, "status": "FILLED",
            "clientOrderId": "autoclose-1" if act == "LIQUIDATION" else "adl_autoclose",
            "price": "100.5", "avgPrice": "101", "origQty": "2", "executedQty": "2",
            "cumQuote": "202", "timeInForce": "IOC", "type": "LIMIT", "side": "SELL",
            "positionSide": "BOTH", "origType": "LIMIT", "time": t,
            "updateTime": t + 5}  # fmt: skip


def margin_fields(order_id: int, t: int, symbol: str = "BNBBTC", isolated: bool = False,
                  client_order_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A margin force order as /sapi/v1/margin/forceLiquidationRec documents it (the
    clientOrderId only the margin order lookup shows)."""
    fields = {"avgPrice": "0.5", "executedQty": "3", "orderId": order_id, "price": "0.4",
              "qty": "3", "side": "SELL", "symbol": symbol, "timeInForce": "GTC",
              "isIsolated": isolated, "time": t, "updatedTime": t}  # fmt: skip
    if client_order_id is not None:
        fields["clientOrderId"] = client_order_id
    return fields


@pytest.fixture
async def binance() -> AsyncIterator[tuple[core.Emulator, AccountEmulator, SharedClock]]:
    """The emulator with its account API on loopback; its clock is the collector's too (20x: a
    weight minute every 3 s). Windows over 168 hours are refused (-1127), and the signed-request
    log keeps every request of a test."""
    clock = SharedClock.at_minute_start(rate=20)
    options = AccountOptions(clock=clock.ms, max_span_hours=168, signed_log_size=100_000)
    async with core.Emulator(core.EmulatorOptions(),
                             extensions=[account_extension(options)]) as emu:  # fmt: skip
        yield emu, account_api(emu), clock


def accepted(api: AccountEmulator) -> list[tuple[str, dict[str, str]]]:
    """(path, parameters) of every signed request that passed the key, signature and timestamp
    checks, oldest first."""
    return [(r.path, dict(parse_qsl(r.payload))) for r in api.stats.signed if r.code == 0]


def _config(
    emu: core.Emulator, accounts: tuple[AccountConfig, ...], enrich_per_poll: int = 20
) -> Config:
    rest = RestConfig(poll_interval_s=0.2, overlap_s=600, retry_initial_s=0.01,
                      retry_max_s=0.05, auth_failure_backoff_s=60, recv_window_ms=60_000,
                      enrich_per_poll=enrich_per_poll)  # fmt: skip
    binance = BinanceConfig(fapi_url=emu.fapi_url, dapi_url=emu.dapi_url, papi_url=emu.papi_url,
                            sapi_url=emu.sapi_url)  # fmt: skip
    return Config(binance=binance, rest=rest, accounts=accounts)


async def test_every_order_stored_once_after_backfill_polling_and_restart(
    binance: tuple[core.Emulator, AccountEmulator, SharedClock],
    pg_dsn: str,
    pg: asyncpg.Connection,
) -> None:
    """Backfill, keep-up and a restart store each order of every endpoint exactly once."""
    emu, api, clock = binance
    now = clock.ms()
    api.add_account("classic", "classic", "CLASSICKEY", "s1")
    api.add_account("pm", "portfolio_margin", "PMKEY", "s2")

    def add(account: str, product: Product, rows: list[dict[str, Any]], **options: Any) -> None:
        for fields in rows:
            api.add_force_order(account, product, **options, **fields)

    # 150 UM liquidations within three days force bisection of a full page.
    add("classic", Product.UM, [
        futures_fields(1000 + i, now - 4 * DAY + i * 1_800_000, "LIQUIDATION") for i in range(150)
    ] + [futures_fields(5000, now - 10 * DAY, "ADL")])  # fmt: skip
    add("classic", Product.CM, [
        futures_fields(7, now - DAY, "LIQUIDATION", "BTCUSD_PERP"),
        futures_fields(8, now - 30 * DAY, "LIQUIDATION", "BTCUSD_PERP"),  # beyond backfill_days
    ])  # fmt: skip
    add("pm", Product.UM, [
        futures_fields(7, now - 2 * DAY, "ADL", "ETHUSDT"),
        futures_fields(11, now - 60_000, "LIQUIDATION", "ETHUSDT"),
    ])  # fmt: skip
    add("pm", Product.CM, [futures_fields(9, now - DAY, "LIQUIDATION", "ETHUSD_PERP")])
    add("classic", Product.MARGIN_CLASSIC, [
        margin_fields(300 + i, now - 5 * DAY + i * 1000, client_order_id=f"c{i}")
        for i in range(120)
    ])  # fmt: skip
    # The lookup of this one answers -2013.
    add("classic", Product.MARGIN_CLASSIC, [margin_fields(900, now - DAY, "ETHUSDT", True)],
        is_queryable=False)  # fmt: skip
    add("pm", Product.MARGIN_PM, [margin_fields(42, now - 2 * DAY)])
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret("s1"),
                            isolated_symbols=("ETHUSDT",), backfill_days=20)  # fmt: skip
    pm = AccountConfig("pm", "portfolio_margin", Secret("PMKEY"), Secret("s2"), backfill_days=20)
    config = _config(emu, (classic, pm), enrich_per_poll=200)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    try:
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: settled(pg, 11), timeout=30)
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
        assert await stored_keys(pg) == expected
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
        first_run_requests = len(accepted(api))
        rows_new = metric_value(metrics.registry, "collector_account_rows_total", account="classic",
                                endpoint="/fapi/v1/forceOrders", result="new")  # fmt: skip
        assert rows_new == 151
        assert account_state(metrics, "classic", "/fapi/v1/forceOrders") == "ok"

        # Restart: one new order and one later version of a recent one (within the overlap);
        # history is not downloaded again.
        api.stats.signed.clear()
        api.add_force_order("classic", Product.UM, **futures_fields(6000, clock.ms() - 1000, "ADL"))
        recent = api.orders("pm", Product.UM)[1]
        api.update_order("pm", Product.UM, 11, updateTime=recent.update_time_ms + 1000,
                         status="EXPIRED")  # fmt: skip
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: _has(pg, 6000), timeout=20)
            await eventually(lambda: _status(pg, "pm", 11, "EXPIRED"), timeout=20)
        expected.add(("classic", "um", "BTCUSDT", 6000, "ADL", "/fapi/v1/forceOrders"))
        assert await stored_keys(pg) == expected
        oldest = min(int(p["startTime"]) for _, p in accepted(api) if "startTime" in p)
        assert oldest >= now - 700_000  # only the overlap was re-read
        assert len(accepted(api)) < first_run_requests
        updated = metric_value(metrics.registry, "collector_account_rows_total", account="pm",
                               endpoint="/papi/v1/um/forceOrders", result="updated")  # fmt: skip
        assert updated == 1
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
    binance: tuple[core.Emulator, AccountEmulator, SharedClock],
    pg_dsn: str,
    pg: asyncpg.Connection,
) -> None:
    """An account whose key is rejected shows credentials_rejected while the other one is
    collected and shows ok."""
    emu, api, clock = binance
    api.add_account("good", "classic", "GOODKEY", "good")
    api.add_force_order("good", Product.UM, **futures_fields(1, clock.ms() - DAY, "ADL"))
    good = AccountConfig("good", "classic", Secret("GOODKEY"), Secret("good"),
                         products=("um",), backfill_days=2)  # fmt: skip
    bad = AccountConfig("bad", "classic", Secret("GOODKEY"), Secret("wrong"),
                        products=("um",), backfill_days=2)  # fmt: skip
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    try:
        path = "/fapi/v1/forceOrders"
        async with running_accounts(_config(emu, (good, bad)), pool, metrics, clock):
            await eventually(lambda: settled(pg, 2), timeout=20)
            await eventually(
                lambda: account_state(metrics, "bad", path) == "credentials_rejected", timeout=20
            )
            assert account_state(metrics, "good", path) == "ok"
        assert await stored_keys(pg) == {
            ("good", "um", "BTCUSDT", 1, "ADL", "/fapi/v1/forceOrders")
        }
        outcome = metric_value(metrics.registry, "collector_rest_requests_total",
                               endpoint="/fapi/v1/forceOrders", outcome="auth_error")  # fmt: skip
        assert outcome == 2  # one per scope, then the long backoff
    finally:
        await pool.close()


def test_only_rejections_of_the_window_itself_count_as_unavailable() -> None:
    """-1127 at the narrowest window, -1130 naming a time and -4166 can only fail; a wider
    -1127, -1130 on another parameter, a 404 and -1104 are retried."""
    path = "/fapi/v1/forceOrders"
    never = [
        (RequestRejected(path, 400, -1127, "More than 1 hours between startTime and endTime."),
         MIN_WINDOW_MS),
        (RequestRejected(path, 400, -1130, "Data sent for parameter 'startTime' is not valid."),
         WEEK),
        (RequestRejected(path, 400, -4166, "Search window is restricted."), WEEK),
    ]  # fmt: skip
    retried = [
        (RequestRejected(path, 400, -1127, "More than 168 hours between startTime and endTime."),
         2 * MIN_WINDOW_MS),
        (RequestRejected(path, 400, -1130, "Data sent for parameter 'limit' is not valid."), WEEK),
        (RequestRejected(path, 404, None, "404: Not Found"), WEEK),
        (RequestRejected(path, 400, -1104, "Not all sent parameters were read."), WEEK),
    ]  # fmt: skip
    assert [can_only_fail(exc, window) for exc, window in never] == [True, True, True]
    assert [can_only_fail(exc, window) for exc, window in retried] == [False] * 4
