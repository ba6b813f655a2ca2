"""Alerts: `[[alerts]]` rules judged on the committed rows, delivered by webhook.

`Judge` is pure: each rule's decision on each row (`large`: one liquidation at or above
min_notional_usd; `cascade`: the USD liquidated on one side within window_s, by trade time,
reaching threshold_usd, at most once per window and side). `Alerts` is a durable consumer
(`collector.out.cursor`, cursor `[feed] alerts_cursor`): a restart resumes at the last batch it
finished, so what committed while the process was down is alerted once it is back, except rows
older than `[feed] alerts_max_age_s` (skipped and counted, so a long stop is not followed by a
burst of stale alerts). Each alert is claimed in `alert_claims` (migrations/0012) before it is
sent: of two replicas judging the same row, the one whose claim inserted sends it, the other
counts it `claimed`. Delivery retries with backoff (`retry.Policy`); the rules of a batch are
delivered side by side, and the feed, the writer and the sources never wait for a webhook.
Webhook URLs carry tokens: logs name the rule, never the URL.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import structlog

from collector.config import AlertConfig, AlertFormat, AlertKind, FeedConfig, Secret
from collector.metrics import Metrics
from collector.out.cursor import ConsumerUnavailable, DurableCursor
from collector.out.events import Cursor, FeedEvent, Filter, iso
from collector.out.feed import Feed
from collector.retry import Policy, sleep_or_stop

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert to deliver: its rule, a sentence, the fields of its JSON body, and its claim
    key (the same on every replica: the row's key, or a cascade's side and window)."""

    rule: str
    text: str
    fields: dict[str, Any]
    key: str = ""

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
            fields = {"kind": "large", "liquidation": event.as_json()}
            return Alert(self.rule.name, text, fields, event.key)
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
        # Claimed per side and window (trade time divided into window_s slots): replicas that
        # began judging at different rows fire within the same slot, and send it once.
        slot = int(at.timestamp() // window_s)
        text = (f"Cascade: {_usd(total)} USD of {side} positions liquidated within "
                f"{window_s:g} s (to {event.symbol} on {event.venue})")  # fmt: skip
        return Alert(self.rule.name, text, {
            "kind": "cascade", "liquidated_side": side, "notional_usd": str(total),
            "window_s": window_s, "liquidations": len(recent),
            "first_trade_time": iso(recent[0][0]), "last_trade_time": iso(at),
        }, f"cascade:{side}:{slot}")  # fmt: skip


# Claim alerts ($1 rules, $2 keys); what comes back is this replica's to send.
_CLAIM = """INSERT INTO alert_claims (rule, key) SELECT * FROM unnest($1::text[], $2::text[])
 ON CONFLICT (rule, key) DO NOTHING RETURNING rule, key"""
_SENT = "UPDATE alert_claims SET sent_at = now() WHERE rule = $1 AND key = $2"
# A claim whose delivery a stop interrupted: released, so the restart claims and sends it.
_RELEASE = "DELETE FROM alert_claims WHERE rule = $1 AND key = $2 AND sent_at IS NULL"
# Claims far older than any row the alerts still judge ([feed] alerts_max_age_s) decide
# nothing: removed at most once an hour, by whichever replica, so the table stays small.
_PRUNE = "DELETE FROM alert_claims WHERE claimed_at < now() - make_interval(secs => $1)"
_PRUNE_EVERY_S = 3600.0
_KEEP_CLAIMS_S = 7 * 86400.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Alerts:
    """Every rule's judge and webhook sender; `run` is the component (a durable consumer)."""

    def __init__(
        self,
        rules: tuple[AlertConfig, ...],
        feed: Feed,
        config: FeedConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.rules = rules
        self.metrics = metrics
        self.max_age = timedelta(seconds=config.alerts_max_age_s)
        self.cursor = DurableCursor(
            config.alerts_cursor, feed, self.consume, metrics,
            batch_rows=config.consumer_batch_rows,
        )  # fmt: skip
        self._pool = feed.pool
        self._clock = clock
        self._now = now
        self._judges = [Judge(r) for r in rules]
        self._last_accepted: dict[str, float] = {}
        self._urls: dict[str, Secret] = {r.name: r.webhook_url() for r in rules}
        self._session: aiohttp.ClientSession | None = None
        self._pruned_at: float | None = None
        # The batch being handed over: judged once, however often it is retried (a judge's
        # cascade window and the rate limit must see each row once).
        self._judged_upto: Cursor | None = None
        self._fired: list[Alert] = []
        self._stop = asyncio.Event()
        for r in rules:  # every series exists from the start (0 is an answer)
            for counter in (metrics.alerts_sent, metrics.alerts_failed):
                counter.labels(r.name)
        metrics.alerts_rows_skipped.labels("too_old")

    async def run(self, stop: asyncio.Event) -> None:
        """Judge and deliver every committed row after the alerts' cursor until `stop`."""
        async with aiohttp.ClientSession() as session:
            self._session, self._stop = session, stop
            try:
                await self.cursor.run(stop)
            finally:
                self._session = None

    async def consume(self, batch: list[FeedEvent]) -> None:
        """Judge `batch`, claim what fires, deliver what this replica claimed. Returns once
        every claimed alert was sent or given up on; raises `ConsumerUnavailable` when a stop
        interrupted a delivery (its claim released, the batch not acknowledged)."""
        await self._prune()
        fresh = [e for e in batch if self._judged_upto is None or e.cursor > self._judged_upto]
        self._fired += self._judge(fresh)
        if fresh:
            self._judged_upto = fresh[-1].cursor
        fired = self._fired
        if fired:
            await self._claim_and_deliver(fired)
        self._fired = []

    async def _claim_and_deliver(self, fired: list[Alert]) -> None:
        rows = await self._pool.fetch(_CLAIM, [a.rule for a in fired], [a.key for a in fired])
        mine = {(r["rule"], r["key"]) for r in rows}
        by_rule: dict[str, list[Alert]] = {}
        for alert in fired:
            if (alert.rule, alert.key) in mine:
                by_rule.setdefault(alert.rule, []).append(alert)
            else:
                self.metrics.alerts_dropped.labels(alert.rule, "claimed").inc()
        rules = {r.name: r for r in self.rules}
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._deliver(rules[name], alerts))
                         for name, alerts in by_rule.items()]  # fmt: skip
        except ExceptionGroup as eg:  # a database error marking one sent: the batch is retried
            raise eg.exceptions[0] from None
        if not all(t.result() for t in tasks):
            raise ConsumerUnavailable("stopping: an alert's delivery was interrupted")

    async def _prune(self) -> None:
        now = self._clock()
        if self._pruned_at is None or now - self._pruned_at >= _PRUNE_EVERY_S:
            keep = max(_KEEP_CLAIMS_S, 2 * self.max_age.total_seconds())
            await self._pool.execute(_PRUNE, keep)
            self._pruned_at = now

    def _judge(self, batch: list[FeedEvent]) -> list[Alert]:
        cutoff = self._now() - self.max_age
        fired: list[Alert] = []
        per_rule: dict[str, int] = {}
        for event in batch:
            if event.received_at < cutoff:
                self.metrics.alerts_rows_skipped.labels("too_old").inc()
                continue
            for judge in self._judges:
                rule = judge.rule
                try:
                    alert = judge.judge(event)
                except Exception:  # a rule's bug must not stop the others; logged and counted
                    log.exception("alerts.judge_failed", rule=rule.name)
                    self.metrics.alerts_dropped.labels(rule.name, "error").inc()
                    continue
                if alert is None or not self._accept(rule):
                    continue
                if per_rule.get(rule.name, 0) >= rule.queue_max:
                    self.metrics.alerts_dropped.labels(rule.name, "queue_full").inc()
                    continue
                per_rule[rule.name] = per_rule.get(rule.name, 0) + 1
                fired.append(alert)
        return fired

    def _accept(self, rule: AlertConfig) -> bool:
        now = self._clock()
        last = self._last_accepted.get(rule.name)
        if last is not None and now - last < rule.min_interval_s:
            self.metrics.alerts_dropped.labels(rule.name, "rate_limited").inc()
            return False
        self._last_accepted[rule.name] = now
        return True

    async def _deliver(self, rule: AlertConfig, alerts: list[Alert]) -> bool:
        """Post `rule`'s claimed alerts in order; False when a stop interrupted one."""
        for i, alert in enumerate(alerts):
            outcome = await self._post(rule, alert)
            if outcome is None:  # stopped: this alert and the rest go back for the restart
                for left in alerts[i:]:
                    await self._pool.execute(_RELEASE, left.rule, left.key)
                return False
            if outcome:
                await self._pool.execute(_SENT, alert.rule, alert.key)
        return True

    async def _post(self, rule: AlertConfig, alert: Alert) -> bool | None:
        """Post `alert`, retrying with backoff up to `max_attempts`; count the outcome. True
        when sent, False when given up on, None when a stop came first."""
        session, stop = self._session, self._stop
        assert session is not None, "run() delivers"
        backoff = Policy(rule.retry_initial_s, rule.retry_max_s).backoff()
        body = alert.body(rule.format)
        timeout = aiohttp.ClientTimeout(total=rule.timeout_s)
        url = self._urls[rule.name].reveal()
        for attempt in range(1, rule.max_attempts + 1):
            try:
                async with session.post(url, json=body, timeout=timeout) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.metrics.alerts_sent.labels(rule.name).inc()
                        return True
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
                return None
        self.metrics.alerts_failed.labels(rule.name).inc()
        log.error("alerts.delivery_failed", rule=rule.name, error=error)
        return False
