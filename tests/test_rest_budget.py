"""Weight budgets: charge before sending, header corrections, 429 per pool, 418 for all."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from collector.metrics import Metrics
from collector.rest.budget import FAPI_DAPI_POOL, PAPI_POOL, Budget, WeightPool, pool_for


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


def test_reserve_charges_until_the_share_then_waits_for_the_next_minute() -> None:
    """With a 0.5 share of 2400, 24 requests of 50 fit; the 25th waits to the minute's end."""
    clock = FakeClock(1_000_040.0)  # 20 s into a minute
    pool = WeightPool("p", 2400, 0.5, clock=clock, rng=random.Random(0))
    assert [pool.reserve(50) for _ in range(24)] == [0.0] * 24
    assert pool.used == 1200
    wait = pool.reserve(50)
    assert 40.0 <= wait <= 43.0
    clock.now = 1_000_081.0  # next minute: the counter resets
    assert pool.reserve(50) == 0.0
    assert pool.used == 50


def test_used_weight_header_raises_the_estimate() -> None:
    """Another process's usage seen in the header counts against this process's share."""
    clock = FakeClock(60.0)
    pool = WeightPool("p", 2400, 0.5, clock=clock)
    pool.observe_used(1190)
    assert pool.reserve(20) > 0
    pool.observe_used(10)  # a lower header never lowers the estimate within the minute
    assert pool.used == 1190


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
    assert metrics.rest_rate_limited.labels(FAPI_DAPI_POOL, "429")._value.get() == 1
    assert metrics.rest_rate_limited.labels(PAPI_POOL, "418")._value.get() == 1


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
    assert metrics.rest_weight_limit.labels(FAPI_DAPI_POOL)._value.get() == 600
    assert (
        metrics.rest_weight_limit.labels("sapi:/sapi/v1/margin/forceLiquidationRec")._value.get()
        == 3000
    )
    assert metrics.rest_weight_used.labels(FAPI_DAPI_POOL)._value.get() == 50
