"""Alerts on the committed feed, delivered to a local aiohttp receiver: retries then success,
the per-rule rate limit, and the cascade rule firing once per window."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from collector.config import AlertConfig, AlertFormat, AlertKind, FeedConfig, Secret
from collector.out.alerts import Alerts, Judge
from collector.out.events import Cursor, FeedEvent
from tests.daemon import eventually, metric_value
from tests.factories import NOW, liquidation
from tests.feed_harness import insert, served


class Receiver:
    """A webhook receiver on loopback answering each POST with the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[Any] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


@contextlib.asynccontextmanager
async def receiving(statuses: list[int]) -> AsyncIterator[Receiver]:
    receiver = Receiver(statuses)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def rule(url: str, **kwargs: Any) -> AlertConfig:
    defaults: dict[str, Any] = {"name": "big", "url": Secret(url), "min_notional_usd": 100.0,
                                "retry_initial_s": 0.01, "retry_max_s": 0.02}  # fmt: skip
    return AlertConfig(**{**defaults, **kwargs})


@contextlib.asynccontextmanager
async def alerting(dsn: str, *rules: AlertConfig) -> AsyncIterator[tuple[Any, Alerts]]:
    async with served(dsn) as s:
        # The factories' rows were received at NOW: a minute later they are fresh.
        alerts = Alerts(
            rules, s.feed, FeedConfig(), s.metrics, now=lambda: NOW + timedelta(minutes=1)
        )
        stop = asyncio.Event()
        task = asyncio.create_task(alerts.run(stop))
        try:
            yield s, alerts
        finally:
            stop.set()
            await task


async def test_a_webhook_is_retried_until_it_succeeds(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """Two 500s, then a 200: three posts of the same body, one sent, two retries, no failure."""
    async with receiving([500, 503]) as hook, alerting(pg_dsn, rule(hook.url)) as (s, _):
        await insert(pg, liquidation(0))  # 138.740 USD
        registry = s.metrics.registry
        await eventually(
            lambda: metric_value(registry, "collector_alerts_sent_total", rule="big"), timeout=60
        )
    assert metric_value(registry, "collector_alert_retries_total", rule="big") == 2
    assert metric_value(registry, "collector_alerts_failed_total", rule="big") == 0
    assert len(hook.bodies) == 3
    assert hook.bodies[0] == hook.bodies[2] == {
        "rule": "big",
        "text": "LONG liquidated: 139 USD BTCUSDT on binance at 9910",
        "kind": "large",
        "liquidation": {
            "venue": "binance", "symbol": "BTCUSDT", "market": "UM", "liquidated_side": "LONG",
            "price": "9910", "qty": "0.014", "notional_usd": "138.740",
            "trade_time": "2026-11-18T11:06:40.000000Z",
            "received_time": "2026-11-21T12:00:00.000000Z",
        },
    }  # fmt: skip


async def test_the_rate_limit_drops_alerts_within_the_interval(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """min_interval_s: the first of three alerts is sent, the next two are dropped, counted."""
    async with receiving([]) as hook:
        hooked = rule(hook.url, min_interval_s=3600.0, format=AlertFormat.SLACK)
        async with alerting(pg_dsn, hooked) as (s, _):
            await insert(pg, liquidation(1), liquidation(2), liquidation(3))
            registry = s.metrics.registry
            # Generous for a loaded machine (conditions, not sleeps): 60 s.
            await eventually(
                lambda: (
                    metric_value(registry, "collector_consumer_rows_total", consumer="alerts") == 3
                ),
                timeout=60,
            )
            await eventually(
                lambda: metric_value(registry, "collector_alerts_sent_total", rule="big"),
                timeout=60,
            )
    dropped = metric_value(
        registry, "collector_alerts_dropped_total", rule="big", reason="rate_limited"
    )
    assert dropped == 2
    assert hook.bodies == [{"text": "LONG liquidated: 139 USD BTCUSDT on binance at 9910"}]


async def test_a_cascade_fires_once_per_window(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """Three LONG liquidations of 138.74 USD within 60 s cross 250 USD once: one alert."""
    cascade = rule("", name="cascade", kind=AlertKind.CASCADE, min_notional_usd=None,
                   threshold_usd=250.0, window_s=60.0, format=AlertFormat.DISCORD)  # fmt: skip
    async with receiving([]) as hook:
        cascade = AlertConfig(**{**{f: getattr(cascade, f) for f in cascade.__slots__},
                                 "url": Secret(hook.url)})  # fmt: skip
        async with alerting(pg_dsn, cascade) as (s, _):
            await insert(pg, liquidation(0), liquidation(1000), liquidation(2000))
            registry = s.metrics.registry
            # Generous for a loaded machine (conditions, not sleeps): 60 s.
            await eventually(
                lambda: (
                    metric_value(registry, "collector_consumer_rows_total", consumer="alerts") == 3
                ),
                timeout=60,
            )
            await eventually(
                lambda: metric_value(registry, "collector_alerts_sent_total", rule="cascade"),
                timeout=60,
            )
    text = "Cascade: 277 USD of LONG positions liquidated within 60 s (to BTCUSDT on binance)"
    assert hook.bodies == [{"content": text}]


def event(at_s: float, notional: str, side: str = "LONG") -> FeedEvent:
    moment = datetime(2026, 11, 21, tzinfo=UTC) + timedelta(seconds=at_s)
    return FeedEvent(Cursor(1, int(at_s * 10)), "binance", "UM", "BTCUSDT", side, "1", "1",
                     notional, moment, moment)  # fmt: skip


def test_the_cascade_window_rearms_after_a_window_per_side() -> None:
    """Fires when the side's sum within window_s reaches the threshold, then not again until
    window_s after it fired; the other side counts apart."""
    judge = Judge(AlertConfig("c", Secret("http://x"), kind=AlertKind.CASCADE,
                              threshold_usd=1000.0, window_s=60.0))  # fmt: skip
    fired = [
        (at, side)
        for at, notional, side in [
            (0, "600", "LONG"), (1, "600", "LONG"), (2, "600", "LONG"), (3, "900", "SHORT"),
            (70, "600", "LONG"), (71, "600", "LONG"), (72, "200", "SHORT"),
        ]
        if judge.judge(event(at, notional, side)) is not None
    ]  # fmt: skip
    assert fired == [(1, "LONG"), (71, "LONG")]
