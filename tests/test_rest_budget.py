"""Weight budgets: charge before sending, header corrections, 429 per pool, 418 for all."""

from __future__ import annotations

import asyncio
import random

from prometheus_client import CollectorRegistry

from collector.metrics import Metrics
from collector.rest.budget import FAPI_DAPI_POOL, PAPI_POOL, Budget, WeightPool, pool_for
from tests.clocks import SharedClock
from tests.daemon import metric_value


class FakeClock:
    """A settable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_pools_follow_the_documented_limit_sharing() -> None:
    """fapi and dapi share a pool, papi has its own, each sapi endpoint has its own."""
    assert pool_for("fapi", "/fapi/v1/forceOrders") == FAPI_DAPI_POOL
    assert pool_for("dapi", "/dapi/v1/forceOrders") == FAPI_DAPI_POOL
    assert pool_for("papi", "/papi/v1/um/forceOrders") == PAPI_POOL
    assert pool_for("sapi", "/sapi/v1/margin/order") == "sapi:/sapi/v1/margin/order"


def test_a_minute_releases_a_quarter_at_once_and_the_rest_evenly() -> None:
    """With a 0.5 share of 2400, a minute starts with 300 of its 1200 and releases the rest
    evenly over 50 s: the next 50 come 2.78 s later; 20 s in, 660 are released."""
    clock = FakeClock(1_000_020.0)  # a minute boundary
    pool = WeightPool("p", 2400, 0.5, clock=clock, rng=random.Random(0))
    assert [pool.reserve(50) for _ in range(6)] == [0.0] * 6
    assert round(pool.reserve(50), 3) == 2.778
    clock.now = 1_000_040.0  # 20 s in: 1200 * (0.25 + 0.75 * 20 / 50) = 660
    assert [pool.reserve(50) for _ in range(7)] == [0.0] * 7
    assert pool.used == 650
    assert round(pool.reserve(50), 3) == 2.222


def test_a_greedy_spender_gets_the_allowance_every_minute_and_never_more() -> None:
    """Spending as fast as allowed, each minute takes exactly the allowance (24 x 50), and no
    wait within a minute is longer than one request's share of it (2.78 s)."""
    clock = FakeClock(600.0)
    pool = WeightPool("p", 2400, 0.5, clock=clock, rng=random.Random(0))
    spent: dict[int, int] = {}
    waits_within_minute = []
    while clock.now < 600.0 + 3 * 60:
        delay = pool.reserve(50)
        if delay == 0.0:
            minute = int(clock.now // 60)
            spent[minute] = spent.get(minute, 0) + 50
            continue
        if int((clock.now + delay) // 60) == int(clock.now // 60):
            waits_within_minute.append(delay)
        clock.now += delay
    assert spent == {10: 1200, 11: 1200, 12: 1200}
    assert max(waits_within_minute) <= 50 * 50 / (0.75 * 1200) + 1e-9


def test_beyond_the_allowance_the_wait_runs_to_the_next_minute() -> None:
    """Once the whole allowance is spent, the next request waits for the next minute (plus
    under 3 s of jitter), and the new minute's counter starts from zero."""
    clock = FakeClock(1_000_079.0)  # 59 s into a minute: all 1200 released
    pool = WeightPool("p", 2400, 0.5, clock=clock, rng=random.Random(0))
    assert [pool.reserve(50) for _ in range(24)] == [0.0] * 24
    wait = pool.reserve(50)
    assert 1.0 <= wait < 4.0
    clock.now = 1_000_081.0
    assert pool.reserve(50) == 0.0
    assert pool.used == 50


def test_a_429_lowers_the_limit_to_the_weight_used_before_it() -> None:
    """A 429 reporting 1250 used for a request of 50 means the limit is at most 1200: the
    pool's allowance becomes the share of that (600) and stays there."""
    clock = FakeClock(60.0)
    metrics = _metrics()
    budget = Budget(0.5, metrics, clock=clock)
    budget.reserve(FAPI_DAPI_POOL, 50)
    budget.observe_used(FAPI_DAPI_POOL, 1250)
    assert budget.rate_limited(FAPI_DAPI_POOL, 5.0, 50, 1250) == 5.0
    assert budget.pool(FAPI_DAPI_POOL).allowed_1m == 600
    assert metric_value(metrics.registry, "collector_rest_weight_limit", pool=FAPI_DAPI_POOL) == 600
    budget.rate_limited(FAPI_DAPI_POOL, 5.0, 50, 2000)  # a higher figure never raises it
    assert budget.pool(FAPI_DAPI_POOL).allowed_1m == 600


def test_the_header_holds_the_whole_ip_to_the_limit_and_this_process_to_its_share() -> None:
    """Another process's usage seen in the header leaves this process its share while the IP
    stays under the whole limit; once the IP's minute is spent, this process waits too."""
    clock = FakeClock(60.0 + 55)  # the whole allowance released
    pool = WeightPool("p", 2400, 0.5, clock=clock, rng=random.Random(0))
    pool.observe_used(1190)  # others spent 1190 of the IP's 2400
    assert [pool.reserve(50) for _ in range(24)] == [0.0] * 24  # our 1200
    assert (pool.used, pool.ip_used) == (1200, 2390)
    assert pool.reserve(50) > 0
    pool.observe_used(10)  # a lower header never lowers the count within the minute
    assert pool.ip_used == 2390
    other = WeightPool("q", 2400, 0.5, clock=clock, rng=random.Random(0))
    other.observe_used(2380)
    assert 5.0 <= other.reserve(50) < 8.0  # to the next minute: the IP has no 50 left


def test_429_blocks_only_its_pool_and_418_blocks_all() -> None:
    """A 429 pauses one pool for Retry-After; a 418 pauses every pool until the ban ends."""
    clock = FakeClock(120.0)
    metrics = _metrics()
    budget = Budget(0.5, metrics, clock=clock)
    assert budget.rate_limited(FAPI_DAPI_POOL, 7.0) == 7.0
    assert budget.reserve(FAPI_DAPI_POOL, 1) == 7.0
    assert budget.reserve(PAPI_POOL, 1) == 0.0
    budget.banned(PAPI_POOL, 150.0)
    assert budget.reserve("sapi:/sapi/v1/margin/order", 1) == 30.0
    clock.now = 151.0
    assert budget.reserve(FAPI_DAPI_POOL, 1) == 0.0
    assert metric_value(metrics.registry, "collector_rest_rate_limited_total",
                        pool=FAPI_DAPI_POOL, status="429") == 1  # fmt: skip
    assert metric_value(metrics.registry, "collector_rest_rate_limited_total",
                        pool=PAPI_POOL, status="418") == 1  # fmt: skip


def test_429_without_retry_after_waits_for_the_next_minute() -> None:
    """Without Retry-After the pause runs to the next minute boundary plus under 3 s jitter."""
    clock = FakeClock(600.0 + 45.0)
    budget = Budget(0.5, _metrics(), clock=clock, rng=random.Random(1))
    pause = budget.rate_limited(PAPI_POOL, None)
    assert 15.0 <= pause < 18.0


def test_limit_gauge_shows_this_process_share() -> None:
    """The weight-limit gauge is the share of the documented limit."""
    metrics = _metrics()
    budget = Budget(0.25, metrics, clock=FakeClock(0.0))
    budget.reserve("sapi:/sapi/v1/margin/forceLiquidationRec", 1)
    budget.reserve(FAPI_DAPI_POOL, 50)
    assert metric_value(metrics.registry, "collector_rest_weight_limit", pool=FAPI_DAPI_POOL) == 600
    assert metric_value(metrics.registry, "collector_rest_weight_limit",
                        pool="sapi:/sapi/v1/margin/forceLiquidationRec") == 3000  # fmt: skip
    assert metric_value(metrics.registry, "collector_rest_weight_used", pool=FAPI_DAPI_POOL) == 50


async def test_requests_of_a_busy_pool_are_served_in_the_order_they_asked() -> None:
    """A small request that would fit at once still waits behind a larger one that asked
    first, so a poller is never starved by others that keep asking for less."""
    clock = SharedClock(1_000_020.0 + 49.0)  # 49 s into a minute: 197 of 200 released
    budget = Budget(1.0, _metrics(), clock=clock)
    budget._pools["p"] = WeightPool("p", 200, 1.0, clock=clock)
    stop = asyncio.Event()
    assert await budget.acquire("p", 150, stop)
    served: list[str] = []

    async def ask(name: str, weight: int) -> None:
        assert await budget.acquire("p", weight, stop)
        served.append(name)

    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        group.create_task(ask("large, first", 48))  # 198 is released 0.33 s from now
        group.create_task(ask("small, second", 1))  # 151 fits now, 199 another 0.33 s later
    assert served == ["large, first", "small, second"]
