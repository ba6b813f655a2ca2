"""Account pollers against the project's Binance emulator (independent implementation of the
documented account endpoints): exactly-once storage, limits, clock skew, key isolation."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import structlog
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
from tests.accounts import account_state, running_accounts, settled, stored_keys
from tests.clocks import SharedClock
from tests.conftest import OwnPostgres
from tests.daemon import eventually, metric_value

DAY = 86_400_000
SECRET_C = "classicsecret0123456789"
SECRET_P = "pmsecret0123456789"
ENDPOINT = {
    ("classic", "um"): "/fapi/v1/forceOrders",
    ("classic", "cm"): "/dapi/v1/forceOrders",
    ("classic", "margin_classic"): "/sapi/v1/margin/forceLiquidationRec",
    ("pm", "um"): "/papi/v1/um/forceOrders",
    ("pm", "cm"): "/papi/v1/cm/forceOrders",
    ("pm", "margin_pm"): "/papi/v1/margin/forceOrders",
}
SCOPES = 4 + 2 + 4 + 1  # classic: 2 futures x 2 types, cross + 1 isolated; pm: 4 + margin


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> SharedClock:
    """The one clock of the emulator and the collector, starting on a minute boundary (at the
    rate of the test's `clock_rate` marker, else the real one)."""
    marker = request.node.get_closest_marker("clock_rate")
    return SharedClock.at_minute_start(rate=marker.args[0] if marker else 1.0)


@pytest.fixture
async def emulator(
    request: pytest.FixtureRequest, clock: SharedClock
) -> AsyncIterator[core.Emulator]:
    """The emulator with the account API: AccountOptions from the test's indirect parameter,
    and EmulatorOptions from its "market" entry."""
    marker = request.node.get_closest_marker("parametrize")
    params = dict(getattr(request, "param", {}) if marker else {})
    market = core.EmulatorOptions(**params.pop("market", {}))
    options = AccountOptions(clock=clock.ms, **params)
    emu = core.Emulator(market, extensions=[account_extension(options)])
    async with emu:
        yield emu


def _accounts(api: AccountEmulator, backfill_days: float = 10) -> tuple[AccountConfig, ...]:
    api.add_account("classic", "classic", "CLASSICKEY", SECRET_C)
    api.add_account("pm", "portfolio_margin", "PMKEY", SECRET_P)
    return (
        AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                      isolated_symbols=("ETHUSDT",), backfill_days=backfill_days),
        AccountConfig("pm", "portfolio_margin", Secret("PMKEY"), Secret(SECRET_P),
                      backfill_days=backfill_days),
    )  # fmt: skip


def _seed(api: AccountEmulator, now: int) -> None:
    start = now - 8 * DAY
    api.seed_history("classic", Product.UM, 180, start, now - 60_000, 1, adl_share=0.2)
    api.seed_history("classic", Product.CM, 20, start, now - 60_000, 2)
    api.seed_history("classic", Product.MARGIN_CLASSIC, 130, start, now - 60_000, 3,
                     symbols=["BNBBTC", "ETHUSDT"], isolated_share=0.3)  # fmt: skip
    api.seed_history("pm", Product.UM, 30, start, now - 60_000, 4)
    api.seed_history("pm", Product.CM, 10, start, now - 60_000, 5)
    api.seed_history("pm", Product.MARGIN_PM, 15, start, now - 60_000, 6)


def _expected(api: AccountEmulator) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    for (account, product), endpoint in ENDPOINT.items():
        for order in api.orders(account, product):
            if product == "margin_classic" and order.is_isolated and order.symbol != "ETHUSDT":
                continue  # only configured isolated pairs are polled
            # Margin rows carry no type: every margin force order is a liquidation.
            margin = product.startswith("margin")
            kind = "LIQUIDATION" if margin else str(order.auto_close_type)
            out.add((account, "margin" if margin else product, order.symbol, order.order_id,
                     kind, endpoint))  # fmt: skip
    return out


def _config(emu: core.Emulator, accounts: tuple[AccountConfig, ...], **rest: Any) -> Config:
    binance = BinanceConfig(fapi_url=emu.fapi_url, dapi_url=emu.dapi_url,
                            papi_url=emu.papi_url, sapi_url=emu.sapi_url)  # fmt: skip
    settings: dict[str, Any] = {"poll_interval_s": 0.2, "overlap_s": 600,
                                "retry_initial_s": 0.01, "retry_max_s": 0.05,
                                "enrich_per_poll": 200} | rest  # fmt: skip
    return Config(binance=binance, rest=RestConfig(**settings), accounts=accounts)


# Polling 11 scopes every 0.2 s needs more weight than a real minute gives; on a clock 20 times
# as fast a minute's allowance comes every 3 s, and the limits stay the documented ones.
@pytest.mark.clock_rate(20)
async def test_every_order_once_after_backfill_polling_and_restart_without_429(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """All six endpoints are backfilled, kept up and resumed: each order stored exactly once,
    with zero 429s and 418s at the emulator's default limits and the default weight share."""
    api = account_api(emulator)
    accounts = _accounts(api)
    _seed(api, clock.ms())
    config = _config(emulator, accounts, recv_window_ms=60_000)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    try:
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: settled(pg, SCOPES), timeout=30)
            # Keep-up: a new order appears and a recent one gets a later updateTime.
            fresh = api.add_force_order("pm", Product.UM, symbol="BTCUSDT",
                                        time=clock.ms() - 500, updateTime=clock.ms() - 400,
                                        autoCloseType="ADL")  # fmt: skip
            await eventually(lambda: _has(pg, "pm", fresh.order_id), timeout=30)
        assert await stored_keys(pg) == _expected(api)
        api.update_order("pm", Product.UM, fresh.order_id, updateTime=clock.ms(),
                         status="EXPIRED")  # fmt: skip
        late = api.add_force_order("classic", Product.CM, symbol="BTCUSD_PERP",
                                   time=clock.ms() - 1000, updateTime=clock.ms() - 900)  # fmt: skip
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: _has(pg, "classic", late.order_id), timeout=30)
            await eventually(lambda: _status(pg, fresh.order_id, "EXPIRED"), timeout=30)
        assert await stored_keys(pg) == _expected(api)
        assert (api.stats.rate_limited_429, api.stats.banned_418) == (0, 0)
        enriched = await pg.fetchval("SELECT count(*) FROM account_force_orders "
                                     "WHERE enrichment IS NOT NULL")  # fmt: skip
        assert enriched == await pg.fetchval("SELECT count(*) FROM account_force_orders "
                                             "WHERE product = 'margin'")  # fmt: skip
    finally:
        await pool.close()


async def _has(pg: asyncpg.Connection, account: str, order_id: int) -> bool:
    n = await pg.fetchval("SELECT count(*) FROM account_force_orders WHERE account = $1 "
                          "AND order_id = $2", account, order_id)  # fmt: skip
    return bool(n)


async def _status(pg: asyncpg.Connection, order_id: int, status: str) -> bool:
    got = await pg.fetchval("SELECT status FROM account_force_orders WHERE order_id = $1",
                            order_id)  # fmt: skip
    return bool(got == status)


@pytest.mark.parametrize("emulator", [{"skew_ms": {"fapi": 45_000, "dapi": -30_000,
                                                   "sapi": 20_000}}],
                         indirect=True)  # fmt: skip
async def test_clock_skew_is_recovered(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """Hosts whose clocks are 45 s ahead, 30 s behind and 20 s ahead are all collected."""
    api = account_api(emulator)
    accounts = _accounts(api, backfill_days=2)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 5, now - DAY, now - 60_000, 1)
    api.seed_history("classic", Product.CM, 5, now - DAY, now - 60_000, 2)
    api.seed_history("classic", Product.MARGIN_CLASSIC, 5, now - DAY, now - 60_000, 3)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    try:
        async with running_accounts(_config(emulator, accounts[:1]), pool, metrics, clock):
            await eventually(lambda: settled(pg, 6), timeout=30)
    finally:
        await pool.close()
    assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "classic"}

    def offset(family: str) -> float:
        return metric_value(metrics.registry, "collector_rest_clock_offset_seconds", family=family)

    assert round(offset("fapi")) == 45
    assert round(offset("dapi")) == -30
    assert round(offset("sapi")) == 20


@pytest.mark.clock_rate(20)  # a minute's weight window passes in 3 s
@pytest.mark.parametrize("emulator", [{"futures_weight_limit": 300}], indirect=True)
async def test_forced_429_lowers_the_limit_so_no_second_429_follows(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """With Binance's limit (300) far below what the budget assumes (2400), the first 429
    pauses the pool and lowers its limit to the weight used before it: the backfill completes
    over the following minutes, every 429 falls in that first minute (requests already in
    flight may draw one each) and none draws a 418."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 20, now - 5 * DAY, now - 60_000, 1)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            products=("um", "cm"), backfill_days=6)  # fmt: skip
    config = _config(emulator, (classic,), recv_window_ms=60_000, weight_share=1.0)
    try:
        async with running_accounts(config, pool, metrics, clock):
            # After the 429 the limit is about 300: fresh reads take three grants in four.
            await eventually(lambda: settled(pg, 4), timeout=60)
    finally:
        await pool.close()
    assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "classic"}
    assert len(api.stats.minutes_429["futures"]) == 1
    assert api.stats.banned_418 == 0
    refused = api.stats.rate_limited_429
    assert 1 <= refused <= 4  # at most one per scope in flight
    assert metric_value(metrics.registry, "collector_rest_rate_limited_total",
                        pool="fapi_dapi", status="429") == refused  # fmt: skip
    # What was used before the first refused request of weight 50 (at weight_share 1.0): more
    # than 300 - 50 (else that request would have fitted), at most 300.
    assert 250 < metric_value(metrics.registry, "collector_rest_weight_limit",
                              pool="fapi_dapi") <= 300  # fmt: skip


async def test_a_bad_key_isolates_one_account(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """A PM key used as a classic account (-2015) and a wrong secret (-1022) leave the good
    account collected and only the bad ones unhealthy."""
    api = account_api(emulator)
    accounts = _accounts(api, backfill_days=2)
    now = clock.ms()
    api.seed_history("pm", Product.UM, 5, now - DAY, now - 60_000, 1)
    wrong_kind = AccountConfig("wrongkind", "classic", Secret("PMKEY"), Secret(SECRET_P),
                               products=("um",), backfill_days=2)  # fmt: skip
    wrong_secret = AccountConfig("wrongsecret", "portfolio_margin", Secret("PMKEY"),
                                 Secret("nope"), products=("um",), backfill_days=2)  # fmt: skip
    good = AccountConfig("pm", "portfolio_margin", Secret("PMKEY"), Secret(SECRET_P),
                         products=("um",), backfill_days=2)  # fmt: skip
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    rejected = (("wrongkind", "/fapi/v1/forceOrders"), ("wrongsecret", "/papi/v1/um/forceOrders"))
    try:
        config = _config(emulator, (good, wrong_kind, wrong_secret))
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: settled(pg, 2), timeout=30)
            await eventually(lambda: all(account_state(metrics, *r) == "credentials_rejected"
                                           for r in rejected), timeout=30)  # fmt: skip
    finally:
        await pool.close()
    assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "pm"}
    assert account_state(metrics, "pm", "/papi/v1/um/forceOrders") == "ok"
    assert (api.stats.errors[-2015], api.stats.errors[-1022]) == (2, 2)
    del accounts


@pytest.mark.clock_rate(20)  # bisecting a week down to 2 ms spends a few minutes' weight
async def test_more_rows_in_one_millisecond_than_a_page_dead_letters_the_window(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """105 liquidations in one millisecond: the page of 100 is stored, the 2 ms window is
    dead-lettered once and counted, and the scope completes its backfill."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    burst_ms = now - 2 * DAY
    burst = [api.add_force_order("classic", Product.UM, time=burst_ms, autoCloseType="LIQUIDATION")
             for _ in range(105)]  # fmt: skip
    other = api.add_force_order("classic", Product.UM, time=now - DAY, autoCloseType="ADL")
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            products=("um",), backfill_days=3)  # fmt: skip
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    try:
        async with running_accounts(
            _config(emulator, (classic,), weight_share=1.0), pool, metrics, clock
        ):
            await eventually(lambda: settled(pg, 2), timeout=60)
    finally:
        await pool.close()
    endpoint = "/fapi/v1/forceOrders"
    first_page = sorted(o.order_id for o in burst)[:100]
    assert await stored_keys(pg) == {("classic", "um", "BTCUSDT", i, "LIQUIDATION", endpoint)
                               for i in first_page} | {
        ("classic", "um", "BTCUSDT", other.order_id, "ADL", endpoint)}  # fmt: skip
    dead = await pg.fetch("SELECT source, reason, convert_from(raw, 'UTF8')::jsonb AS raw "
                          "FROM dead_letters")  # fmt: skip
    assert len(dead) == 1
    assert (dead[0]["source"], dead[0]["reason"]) == (f"account:classic:{endpoint}",
                                                      "window_truncated")  # fmt: skip
    window = orjson.loads(dead[0]["raw"])
    assert window["endTime"] - window["startTime"] <= 2
    assert window["startTime"] <= burst_ms <= window["endTime"]
    assert (window["scope"], window["limit"], window["received"]) == ("LIQUIDATION", 100, 100)
    assert metric_value(metrics.registry, "collector_account_windows_truncated_total",
                        account="classic", endpoint=endpoint) == 1  # fmt: skip
    assert metric_value(metrics.registry, "collector_dead_letters_total",
                        reason="account_window_truncated") == 1  # fmt: skip


def _timed(_: Any, __: str, event_dict: structlog.typing.EventDict) -> Any:
    """Stamp captured events with the monotonic time they were logged at."""
    event_dict["at"] = time.monotonic()
    return event_dict


def _failures(logs: list[dict[str, Any]], scope: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "account.poll_failed" and e["scope"] == scope]


@pytest.mark.clock_rate(20)  # each failed poll is 5 requests of weight 50
async def test_failed_polls_back_off_and_a_success_resets_the_backoff(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """Every poll answered 503 waits the doubling delay it logs (0.2 s jittered, capped at
    0.8 s) before the next one; after a successful poll the next failure starts over."""
    api = account_api(emulator)
    _accounts(api)
    path = "/fapi/v1/forceOrders"
    api.fail_next(path, 10_000)
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            products=("um",), backfill_days=1)  # fmt: skip
    config = _config(emulator, (classic,), poll_failure_backoff_max_s=0.8, weight_share=1.0)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    scopes = ("LIQUIDATION", "ADL")
    try:
        with structlog.testing.capture_logs(processors=[_timed]) as logs:
            async with running_accounts(config, pool, metrics, clock):
                await eventually(
                    lambda: all(len(_failures(logs, s)) >= 5 for s in scopes), timeout=30
                )
                api.clear_faults()
                await eventually(lambda: settled(pg, 2), timeout=30)
                seen = {s: len(_failures(logs, s)) for s in scopes}
                api.fail_next(path, 10_000)
                await eventually(
                    lambda: all(len(_failures(logs, s)) > seen[s] for s in scopes), timeout=30
                )
    finally:
        await pool.close()
    bounds = [(0.1, 0.2), (0.2, 0.4), (0.4, 0.8), (0.4, 0.8), (0.4, 0.8)]
    for scope in scopes:
        failed = _failures(logs, scope)
        assert [e["failures"] for e in failed[:5]] == [1, 2, 3, 4, 5]
        for event, (low, high) in zip(failed[:5], bounds, strict=True):
            assert low <= event["retry_in_s"] <= high
        for event, after in itertools.pairwise(failed[:5]):
            assert after["at"] - event["at"] >= event["retry_in_s"]
        restarted = failed[seen[scope]]
        assert restarted["failures"] == 1
        assert 0.1 <= restarted["retry_in_s"] <= 0.2


@pytest.mark.clock_rate(20)
@pytest.mark.parametrize("emulator", [{"um_retention_days": 5, "is_retention_error": True}],
                         indirect=True)  # fmt: skip
async def test_a_window_binance_can_only_reject_is_skipped_with_its_reason(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """A 10-day backfill of an endpoint that keeps 5 days and answers -1130 before that stores
    every kept order, records the rejected range in the checkpoint and dead letters, and never
    asks for it again."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 20, now - 4 * DAY, now - 60_000, 1, adl_share=0.3)
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            products=("um",), backfill_days=10)  # fmt: skip
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    path = "/fapi/v1/forceOrders"
    try:
        async with running_accounts(_config(emulator, (classic,)), pool, metrics, clock):
            await eventually(lambda: settled(pg, 2), timeout=30)
            rejected = api.stats.errors[-1130]
            polled = api.stats.requests[path]
            await eventually(lambda: api.stats.requests[path] >= polled + 10, timeout=30)
            assert api.stats.errors[-1130] == rejected
    finally:
        await pool.close()
    assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "classic"}
    assert 2 <= rejected <= 2 * 9  # per scope: the window, then at most 8 halvings to 1 h
    reasons = await pg.fetch("SELECT scope, horizon_at, unavailable_reason "
                             "FROM account_poll_checkpoints ORDER BY scope")  # fmt: skip
    assert [r["scope"] for r in reasons] == ["ADL", "LIQUIDATION"]
    dead = await pg.fetch("SELECT source, reason, detail, raw_text AS raw FROM dead_letters_text "
                          "ORDER BY raw_text::jsonb->>'scope'")  # fmt: skip
    assert len(dead) == 2
    for checkpoint, letter in zip(reasons, dead, strict=True):
        window = orjson.loads(letter["raw"])
        assert (letter["source"], letter["reason"]) == (f"account:classic:{path}",
                                                        "window_unavailable")  # fmt: skip
        assert letter["detail"] == checkpoint["unavailable_reason"]
        assert checkpoint["unavailable_reason"] == (
            f"[{window['startTime']}, {window['endTime']}] ms unavailable: {path}: HTTP 400 "
            "code -1130: Data sent for parameter 'startTime' is not valid."
        )
        assert window["startTime"] == round(checkpoint["horizon_at"].timestamp() * 1000)
        # The kept 5 days start within the last hour skipped (the clock runs 20x meanwhile).
        assert 5 * DAY <= window["endTime"] - window["startTime"] <= 5 * DAY + 3_600_000 + 600_000
    unavailable = metric_value(metrics.registry, "collector_account_windows_unavailable_total",
                               account="classic", endpoint=path)  # fmt: skip
    assert unavailable == 2


@pytest.mark.clock_rate(20)
async def test_a_row_postgres_rejects_is_dead_lettered_once_and_the_rest_commits(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """A force order whose clientOrderId holds a NUL (it parses; Postgres text refuses it) is
    dead-lettered once, however often the overlap re-reads it, and every other order of its
    window and the checkpoint commit."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 10, now - DAY, now - 120_000, 1, adl_share=0.0)
    bad = api.add_force_order("classic", Product.UM, time=now - 60_000,
                              clientOrderId="autoclose-\x00-1")  # fmt: skip
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            products=("um",), backfill_days=2)  # fmt: skip
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    path = "/fapi/v1/forceOrders"
    try:
        async with running_accounts(_config(emulator, (classic,)), pool, metrics, clock):
            await eventually(lambda: settled(pg, 2), timeout=30)
            polled = api.stats.requests[path]
            await eventually(lambda: api.stats.requests[path] >= polled + 10, timeout=30)
    finally:
        await pool.close()
    expected = {k for k in _expected(api) if k[0] == "classic"}
    assert await stored_keys(pg) == expected - {("classic", "um", bad.symbol, bad.order_id,
                                           "LIQUIDATION", path)}  # fmt: skip
    dead = await pg.fetch("SELECT source, reason, detail, raw_text FROM dead_letters_text")
    assert len(dead) == 1
    assert (dead[0]["source"], dead[0]["reason"], dead[0]["detail"]) == (
        f"account:classic:{path}", "db_rejected",
        '22021: invalid byte sequence for encoding "UTF8": 0x00',
    )  # fmt: skip
    raw = orjson.loads(dead[0]["raw_text"])
    assert (raw["orderId"], raw["clientOrderId"]) == (bad.order_id, "autoclose-\x00-1")
    assert metric_value(metrics.registry, "collector_dead_letters_total",
                        reason="account_row_rejected") == 1  # fmt: skip
    assert metric_value(metrics.registry, "collector_account_rows_total",
                        account="classic", endpoint=path, result="new") == 10  # fmt: skip


@pytest.mark.clock_rate(20)
async def test_pollers_wait_for_a_stopped_database_and_lose_nothing(
    emulator: core.Emulator, own_postgres: OwnPostgres, clock: SharedClock
) -> None:
    """With Postgres stopped the pollers log that they wait (no traceback, no crash) and,
    once it is back, store the order that appeared meanwhile."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 3, now - DAY, now - 120_000, 1, adl_share=0.0)
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            products=("um",), backfill_days=2)  # fmt: skip
    pool = await asyncpg.create_pool(own_postgres.dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    path = "/fapi/v1/forceOrders"
    waiting = ("account.database_unavailable", "warning")
    try:
        with structlog.testing.capture_logs() as logs:
            async with running_accounts(_config(emulator, (classic,)), pool, metrics, clock):
                async with _connected(own_postgres.dsn) as pg:
                    await eventually(lambda: settled(pg, 2), timeout=30)
                await own_postgres.stop()
                late = api.add_force_order("classic", Product.UM, time=clock.ms() - 1000)
                await eventually(lambda: {e["scope"] for e in logs
                                             if (e["event"], e["log_level"]) == waiting}
                              == {"LIQUIDATION", "ADL"}, timeout=30)  # fmt: skip
                await own_postgres.start()
                async with _connected(own_postgres.dsn) as pg:
                    await eventually(lambda: _has(pg, "classic", late.order_id), timeout=30)
        async with _connected(own_postgres.dsn) as pg:
            assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "classic"}
    finally:
        await pool.close()
    assert [e for e in logs if "exc_info" in e or e["log_level"] in ("error", "critical")] == []
    assert metric_value(metrics.registry, "collector_account_rows_total",
                        account="classic", endpoint=path, result="new") == 4  # fmt: skip


@pytest.mark.clock_rate(20)
async def test_endpoints_answering_5xx_or_404_show_failing_and_log_one_backfill_start(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """fapi answering 503 and dapi 404 show `failing` for those endpoints (not ok), another
    account's endpoint shows ok, each scope logs backfill_started once however often it
    retries, and both endpoints show ok once they answer again."""
    api = account_api(emulator)
    _accounts(api)
    api.fail_next("/fapi/v1/forceOrders", 100_000, 503)
    api.fail_next("/dapi/v1/forceOrders", 100_000, 404)
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            products=("um", "cm"), backfill_days=1)  # fmt: skip
    pm = AccountConfig("pm", "portfolio_margin", Secret("PMKEY"), Secret(SECRET_P),
                       products=("um",), backfill_days=1)  # fmt: skip
    config = _config(emulator, (classic, pm), poll_failure_backoff_max_s=0.4, weight_share=1.0)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    failing = [(e, s) for e in ("/fapi/v1/forceOrders", "/dapi/v1/forceOrders")
               for s in ("LIQUIDATION", "ADL")]  # fmt: skip

    def retried(logs: list[dict[str, Any]]) -> bool:
        return all(sum(1 for e in logs if e["event"] == "account.poll_failed"
                       and (e["endpoint"], e["scope"]) == key) >= 3 for key in failing)  # fmt: skip

    try:
        with structlog.testing.capture_logs() as logs:
            async with running_accounts(config, pool, metrics, clock):
                await eventually(lambda: retried(logs), timeout=30)
                states = {e: account_state(metrics, "classic", e) for e, _ in failing}
                pm_state = account_state(metrics, "pm", "/papi/v1/um/forceOrders")
                api.clear_faults()
                await eventually(lambda: settled(pg, 6), timeout=30)
                recovered = {e: account_state(metrics, "classic", e) for e, _ in failing}
    finally:
        await pool.close()
    assert states == {"/fapi/v1/forceOrders": "failing", "/dapi/v1/forceOrders": "failing"}
    assert pm_state == "ok"
    assert recovered == {"/fapi/v1/forceOrders": "ok", "/dapi/v1/forceOrders": "ok"}
    started = [(e["account"], e["endpoint"], e["scope"]) for e in logs
               if e["event"] == "account.backfill_started"]  # fmt: skip
    assert sorted(started) == sorted([("classic", e, s) for e, s in failing]
                                     + [("pm", "/papi/v1/um/forceOrders", "LIQUIDATION"),
                                        ("pm", "/papi/v1/um/forceOrders", "ADL")])  # fmt: skip


@contextlib.asynccontextmanager
async def _connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def _classic_futures(name: str = "classic") -> AccountConfig:
    """USD-M and COIN-M of the classic account, six days deep: one window per scope."""
    return AccountConfig(name, "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                         products=("um", "cm"), backfill_days=6)  # fmt: skip


async def _minutes_pass(clock: SharedClock, minutes: float) -> None:
    """Return once `minutes` of the shared clock have passed (a condition, with a deadline)."""
    end = clock() + minutes * 60
    await eventually(lambda: clock() >= end, timeout=30)


@pytest.mark.clock_rate(20)
@pytest.mark.parametrize("emulator", [{"market": {"weight_limit_1m": 600}}], indirect=True)
async def test_the_announced_limit_is_used_and_never_exceeded(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """Binance announces 600/min (exchangeInfo rateLimits and the headers), a quarter of the
    documented 2400: polling as fast as it can for two minutes at weight_share 1.0, the
    collector takes exactly that limit, spends up to it and draws no 429 or 418."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 20, now - 5 * DAY, now - 60_000, 1)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    config = _config(emulator, (_classic_futures(),), recv_window_ms=60_000, weight_share=1.0)
    try:
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: settled(pg, 4), timeout=30)
            await _minutes_pass(clock, 2)
    finally:
        await pool.close()
    assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "classic"}
    assert (api.stats.rate_limited_429, api.stats.banned_418) == (0, 0)
    assert metric_value(metrics.registry, "collector_rest_weight_limit", pool="fapi_dapi") == 600
    assert 500 <= api.stats.max_used_weight["futures"] <= 600


@pytest.mark.clock_rate(20)
@pytest.mark.parametrize("emulator", [{"market": {"weight_limit_1m": 600}}], indirect=True)
async def test_two_processes_at_half_share_one_limit_without_429(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """Two collectors at weight_share 0.5 on one IP (each with its own budget, both reading
    the shared used-weight header) poll as fast as they can for two minutes: together they
    use the limit but never pass 600, and draw no 429 or 418."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 20, now - 5 * DAY, now - 60_000, 1)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=6)
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    config = _config(emulator, (_classic_futures(),), recv_window_ms=60_000, weight_share=0.5)
    try:
        async with (
            running_accounts(config, pool, first, clock),
            running_accounts(config, pool, second, clock),
        ):
            await eventually(lambda: settled(pg, 4), timeout=30)
            await _minutes_pass(clock, 2)
    finally:
        await pool.close()
    assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "classic"}
    assert (api.stats.rate_limited_429, api.stats.banned_418) == (0, 0)
    assert metric_value(first.registry, "collector_rest_weight_limit", pool="fapi_dapi") == 300
    assert metric_value(second.registry, "collector_rest_weight_limit", pool="fapi_dapi") == 300
    assert 500 <= api.stats.max_used_weight["futures"] <= 600


@pytest.mark.parametrize("emulator", [{"signed_log_size": 100_000}], indirect=True)
async def test_a_server_clock_jump_costs_one_resync_per_family_and_no_row(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """Binance's clock jumps 8 s ahead mid-run (beyond the 5 s recvWindow): each API family
    resyncs once, only requests already signed with the old offset are rejected (-1021), and
    every order, including those placed after the jump, is stored."""
    api = account_api(emulator)
    _accounts(api)
    now = clock.ms()
    api.seed_history("classic", Product.UM, 5, now - DAY, now - 60_000, 1)
    api.seed_history("classic", Product.CM, 5, now - DAY, now - 60_000, 2)
    api.seed_history("classic", Product.MARGIN_CLASSIC, 5, now - DAY, now - 60_000, 3)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    classic = AccountConfig("classic", "classic", Secret("CLASSICKEY"), Secret(SECRET_C),
                            isolated_symbols=("ETHUSDT",), backfill_days=2)  # fmt: skip
    config = _config(emulator, (classic,), poll_interval_s=1.0, weight_share=1.0)
    time_paths = ("/fapi/v1/time", "/dapi/v1/time", "/api/v3/time")
    try:
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: settled(pg, 6), timeout=30)
            syncs_before = {p: api.stats.requests[p] for p in time_paths}
            api.configure(skew_ms={"fapi": 8000, "dapi": 8000, "sapi": 8000})
            after = [
                api.add_force_order("classic", Product.UM, symbol="BTCUSDT",
                                    time=clock.ms() + 8000 - 500, autoCloseType="LIQUIDATION"),
                api.add_force_order("classic", Product.CM, symbol="BTCUSD_PERP",
                                    time=clock.ms() + 8000 - 500, autoCloseType="ADL"),
            ]  # fmt: skip
            for order in after:
                await eventually(lambda o=order: _has(pg, "classic", o.order_id), timeout=30)  # type: ignore[misc]
    finally:
        await pool.close()
    assert await stored_keys(pg) == {k for k in _expected(api) if k[0] == "classic"}
    assert {p: api.stats.requests[p] - syncs_before[p] for p in time_paths} == dict.fromkeys(
        time_paths, 1
    )
    rejected = {h: sum(1 for r in api.stats.signed if r.host == h and r.code == -1021)
                for h in ("fapi", "dapi", "sapi")}  # fmt: skip
    # One per request in flight when the clock jumped: at most one per scope of the family.
    assert 1 <= rejected["fapi"] <= 2
    assert 1 <= rejected["dapi"] <= 2
    assert rejected["sapi"] <= 2


@pytest.mark.clock_rate(20)
async def test_a_new_force_order_is_stored_while_a_long_backfill_runs(
    emulator: core.Emulator, pg_dsn: str, pg: asyncpg.Connection, clock: SharedClock
) -> None:
    """During a 180-day backfill of two accounts (minutes of weight at the default share), a
    force order that happens now is stored by the next poll's fresh read, long before the
    backfill of its scope is done."""
    api = account_api(emulator)
    accounts = _accounts(api, backfill_days=180)
    now = clock.ms()
    for seed, product in enumerate((Product.UM, Product.CM)):
        api.seed_history("classic", product, 200, now - 170 * DAY, now - 60_000, seed)
        api.seed_history("pm", product, 200, now - 170 * DAY, now - 60_000, seed + 10)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    metrics = Metrics(CollectorRegistry())
    config = _config(emulator, accounts, poll_interval_s=1.0, recv_window_ms=60_000)
    try:
        async with running_accounts(config, pool, metrics, clock):
            await eventually(lambda: _backfilling(pg, "pm", "/papi/v1/um/forceOrders"), timeout=30)
            fresh = api.add_force_order(
                "pm", Product.UM, symbol="BTCUSDT", time=clock.ms() - 500,
                autoCloseType="LIQUIDATION",
            )  # fmt: skip
            await eventually(lambda: _has(pg, "pm", fresh.order_id), timeout=30)
            assert await _backfilling(pg, "pm", "/papi/v1/um/forceOrders", "LIQUIDATION")
    finally:
        await pool.close()


async def _backfilling(
    pg: asyncpg.Connection, account: str, endpoint: str, scope: str | None = None
) -> bool:
    """Whether a scope of `endpoint` has a checkpoint and has not finished its backfill."""
    rows = await pg.fetch("SELECT scope, backfill_complete FROM account_poll_checkpoints "
                          "WHERE account = $1 AND endpoint = $2", account, endpoint)  # fmt: skip
    return any(not r["backfill_complete"] for r in rows if scope in (None, r["scope"]))
