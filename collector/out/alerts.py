"""Alerts: `[[alerts]]` rules judged on the feed's committed rows, delivered by webhook.

`Judge` is pure: each rule's decision on each row (`large`: one liquidation at or above
min_notional_usd; `cascade`: the USD liquidated on one side within window_s, by trade time,
reaching threshold_usd, at most once per window and side). `Alerts` queues what fires (bounded
per rule, a per-rule rate limit) and posts it with retries (`retry.Policy`); the feed never
waits for a webhook, and what cannot be queued is dropped and counted. Webhook URLs carry
tokens: logs name the rule, never the URL.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import structlog

from collector.config import AlertConfig, AlertFormat, AlertKind
from collector.metrics import Metrics
from collector.out.events import FeedEvent, Filter, iso
from collector.retry import Policy, sleep_or_stop

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert to deliver: its rule, a sentence, and the fields of its JSON body."""

    rule: str
    text: str
    fields: dict[str, Any]

    def body(self, fmt: AlertFormat) -> dict[str, Any]:
        """The webhook body: ours (`json`), or Slack's / Discord's incoming-webhook shape."""
        if fmt == AlertFormat.SLACK:
            return {"text": self.text}
        if fmt == AlertFormat.DISCORD:
            return {"content": self.text}
        return {"rule": self.rule, "text": self.text, **self.fields}


def _usd(amount: Decimal) -> str:
    return f"{amount:,.0f}"


class Judge:
    """One rule's decisions, row by row (in the feed's order)."""

    def __init__(self, rule: AlertConfig) -> None:
        self.rule = rule
        minimum = rule.min_notional_usd if rule.kind == AlertKind.LARGE else None
        self.match = Filter(
            frozenset(rule.venues),
            frozenset(rule.symbols),
            None if minimum is None else Decimal(str(minimum)),
        )
        self._window = timedelta(seconds=rule.window_s)
        self._threshold = Decimal(str(rule.threshold_usd or 0))
        self._recent: dict[str, deque[tuple[datetime, Decimal]]] = {}
        self._sums: dict[str, Decimal] = {}
        self._fired_at: dict[str, datetime] = {}

    def judge(self, event: FeedEvent) -> Alert | None:
        """The alert `event` sets off, if any."""
        if not self.match.matches(event):
            return None
        notional = event.notional
        if self.rule.kind == AlertKind.LARGE:
            assert notional is not None  # the filter's minimum needs one
            text = (f"{event.liquidated_side or 'a position'} liquidated: {_usd(notional)} USD "
                    f"{event.symbol} on {event.venue} at {event.price}")  # fmt: skip
            return Alert(self.rule.name, text, {"kind": "large", "liquidation": event.as_json()})
        side = event.liquidated_side
        if side is None or notional is None:
            return None
        return self._cascade(side, event.trade_time, notional, event)

    def _cascade(
        self, side: str, at: datetime, notional: Decimal, event: FeedEvent
    ) -> Alert | None:
        recent = self._recent.setdefault(side, deque())
        total = self._sums.get(side, Decimal(0)) + notional
        recent.append((at, notional))
        while recent and recent[0][0] <= at - self._window:
            total -= recent.popleft()[1]
        self._sums[side] = total
        fired = self._fired_at.get(side)
        if total < self._threshold or (fired is not None and at < fired + self._window):
            return None
        self._fired_at[side] = at
        window_s = self.rule.window_s
        text = (f"Cascade: {_usd(total)} USD of {side} positions liquidated within "
                f"{window_s:g} s (to {event.symbol} on {event.venue})")  # fmt: skip
        return Alert(self.rule.name, text, {
            "kind": "cascade", "liquidated_side": side, "notional_usd": str(total),
            "window_s": window_s, "liquidations": len(recent),
            "first_trade_time": iso(recent[0][0]), "last_trade_time": iso(at),
        })  # fmt: skip


class Alerts:
    """Every rule's judge, queue and webhook sender; `on_event` is the feed's listener and
    `run` the sender component."""

    def __init__(
        self,
        rules: tuple[AlertConfig, ...],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = rules
        self.metrics = metrics
        self._clock = clock
        self._judges = [Judge(r) for r in rules]
        self._queues = {r.name: asyncio.Queue[Alert](maxsize=r.queue_max) for r in rules}
        self._last_accepted: dict[str, float] = {}
        for r in rules:  # every series exists from the start (0 is an answer)
            for counter in (metrics.alerts_sent, metrics.alerts_failed):
                counter.labels(r.name)

    def pending(self) -> int:
        """Alerts queued and not yet taken for delivery, over every rule."""
        return sum(q.qsize() for q in self._queues.values())

    def on_event(self, event: FeedEvent) -> None:
        """Judge `event` by every rule; queue what fires (never waits)."""
        for judge in self._judges:
            try:
                alert = judge.judge(event)
            except Exception:  # a rule's bug must not stop the feed; it is logged and counted
                log.exception("alerts.judge_failed", rule=judge.rule.name)
                self.metrics.alerts_dropped.labels(judge.rule.name, "error").inc()
                continue
            if alert is not None:
                self._accept(judge.rule, alert)

    def _accept(self, rule: AlertConfig, alert: Alert) -> None:
        now = self._clock()
        last = self._last_accepted.get(rule.name)
        if last is not None and now - last < rule.min_interval_s:
            self.metrics.alerts_dropped.labels(rule.name, "rate_limited").inc()
            return
        try:
            self._queues[rule.name].put_nowait(alert)
        except asyncio.QueueFull:
            self.metrics.alerts_dropped.labels(rule.name, "queue_full").inc()
            return
        self._last_accepted[rule.name] = now

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver queued alerts until `stop`."""
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
            for rule in self.rules:
                group.create_task(self._deliver(rule, session, stop))

    async def _deliver(
        self, rule: AlertConfig, session: aiohttp.ClientSession, stop: asyncio.Event
    ) -> None:
        queue = self._queues[rule.name]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                getting = asyncio.ensure_future(queue.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    return
                await self._post(rule, session, getting.result(), stop)
        finally:
            stopping.cancel()

    async def _post(
        self, rule: AlertConfig, session: aiohttp.ClientSession, alert: Alert, stop: asyncio.Event
    ) -> None:
        """Post `alert`, retrying with backoff up to `max_attempts`; count the outcome."""
        backoff = Policy(rule.retry_initial_s, rule.retry_max_s).backoff()
        body = alert.body(rule.format)
        timeout = aiohttp.ClientTimeout(total=rule.timeout_s)
        for attempt in range(1, rule.max_attempts + 1):
            try:
                async with session.post(rule.url.reveal(), json=body, timeout=timeout) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.metrics.alerts_sent.labels(rule.name).inc()
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = type(exc).__name__
            if attempt == rule.max_attempts:
                break
            delay = backoff.next_delay()
            self.metrics.alert_attempts_retried.labels(rule.name).inc()
            log.warning("alerts.retry_scheduled", rule=rule.name, attempt=attempt,
                        error=error, delay_s=round(delay, 3))  # fmt: skip
            if await sleep_or_stop(delay, stop):
                break
        self.metrics.alerts_failed.labels(rule.name).inc()
        log.error("alerts.delivery_failed", rule=rule.name, error=error)
