"""Backfill and keep-up loops, one per (account, endpoint, scope) (docs/binance.md §4.5).

A scope's checkpoint holds `covered_until`: everything before it has been read and committed.
The first run starts at the backfill horizon (configured depth, never beyond a documented
retention) and walks forward in windows of at most `max_window_ms`, committing rows and the
checkpoint together per window. Once it reaches now the backfill is complete; every later poll
re-scans `overlap_s` before `covered_until` so late rows are caught.

Limit-style endpoints: explicit startTime+endTime; a full page means the window may be
truncated, so it is bisected until no sub-window is full (independent of the undocumented sort
order). Page-style endpoints: endTime frozen for the pass, `current` = 1, 2, ... until a short
page or `total` rows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import orjson
import structlog

from collector.config import AccountConfig, RestConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.rest import store
from collector.rest.client import (
    AuthError,
    Credentials,
    RequestRejected,
    RestClient,
    RestStopped,
    TransientRestError,
)
from collector.rest.endpoints import (
    DAY_MS,
    OrderLookupSpec,
    Paging,
    Scope,
    depth_days,
)
from collector.rest.parse import AccountForceOrder, parse_margin_order, parse_rows
from collector.rest.windows import Window, next_window, split_window
from collector.retry import sleep_or_stop

log = structlog.get_logger(__name__)

# Stay this far inside a documented retention, so the oldest window never asks for expired data.
RETENTION_MARGIN_MS = 3_600_000
# -1127 "More than %s hours between startTime and endTime": halve the span, down to this.
MIN_WINDOW_MS = 3_600_000
WINDOW_TOO_WIDE = -1127


@dataclass(slots=True)
class AccountState:
    """Health shared by an account's scopes: unhealthy while any scope has an auth error."""

    name: str
    metrics: Metrics
    failing: set[str] = field(default_factory=set)

    def ok(self, scope: str) -> None:
        """A scope's request succeeded."""
        self.failing.discard(scope)
        self._publish()

    def auth_failed(self, scope: str) -> None:
        """A scope got an auth or permission error."""
        self.failing.add(scope)
        self._publish()

    def _publish(self) -> None:
        self.metrics.account_healthy.labels(self.name).set(0 if self.failing else 1)


@dataclass(slots=True)
class PollerContext:
    """What every scope poller of one account shares."""

    account: AccountConfig
    credentials: Credentials
    client: RestClient
    pool: asyncpg.Pool
    metrics: Metrics
    rest: RestConfig
    state: AccountState
    lookup: OrderLookupSpec


class ScopePoller:
    """Backfills and then keeps up one scope; `run(stop)` returns only when `stop` is set."""

    def __init__(self, ctx: PollerContext, scope: Scope) -> None:
        self.ctx = ctx
        self.scope = scope
        self.spec = scope.spec
        self.window_ms = scope.spec.max_window_ms
        self.label = f"{scope.spec.path}#{scope.name}"
        self._log = log.bind(account=ctx.account.name, endpoint=scope.spec.path, scope=scope.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `poll_interval_s` (fixed rate) until `stop`; isolate every REST failure."""
        rest = self.ctx.rest
        while not stop.is_set():
            started = time.monotonic()
            delay: float | None = None
            try:
                await self.poll_once(stop)
                if self.spec.product == "margin" and rest.enrich_margin_orders:
                    await self.enrich(stop)
            except RestStopped:
                return
            except AuthError as exc:
                self.ctx.state.auth_failed(self.label)
                self._log.error(
                    "account.auth_failed", code=exc.code, status=exc.status, msg=exc.msg,
                    hint="check the API key, its type, IP whitelist and read permission",
                    retry_in_s=rest.auth_failure_backoff_s,
                )  # fmt: skip
                delay = rest.auth_failure_backoff_s
            except (TransientRestError, RequestRejected, MalformedPayload) as exc:
                self._log.warning("account.poll_failed", error=str(exc),
                                  retry_in_s=rest.poll_interval_s)  # fmt: skip
            if delay is None:
                delay = max(0.0, rest.poll_interval_s - (time.monotonic() - started))
            if await sleep_or_stop(delay, stop):
                return

    async def _now_ms(self, stop: asyncio.Event) -> int:
        family = self.spec.family
        await self.ctx.client.clock_ready(family, stop)
        return self.ctx.client.clocks.now_ms(family)

    def _retention_floor_ms(self, now_ms: int) -> int | None:
        if self.spec.retention_days is None:
            return None
        return now_ms - int(self.spec.retention_days * DAY_MS) + RETENTION_MARGIN_MS

    async def poll_once(self, stop: asyncio.Event) -> None:
        """Read from the checkpoint (minus the overlap, once backfilled) up to now."""
        ctx, account = self.ctx, self.ctx.account.name
        now_ms = await self._now_ms(stop)
        floor = self._retention_floor_ms(now_ms)
        cp = await store.load_checkpoint(ctx.pool, account, self.spec.path, self.scope.name)
        if cp is None:
            horizon = now_ms - int(depth_days(self.spec, ctx.account.backfill_days) * DAY_MS)
            if floor is not None:
                horizon = max(horizon, floor)
            cp = store.Checkpoint(horizon, horizon, backfill_complete=False)
            self._log.info("account.backfill_started", horizon_ms=horizon)
        labels = (account, self.spec.path)
        ctx.metrics.account_backfill_horizon.labels(*labels).set(cp.horizon_ms / 1000)
        ctx.metrics.account_backfill_complete.labels(*labels).set(int(cp.backfill_complete))
        cursor = cp.covered_until_ms
        if cp.backfill_complete:
            cursor = max(cp.horizon_ms, cursor - int(ctx.rest.overlap_s * 1000))
        if floor is not None and cursor < floor:
            self._log.warning("account.retention_gap", lost_until_ms=floor)
            cursor = floor
        while (window := next_window(cursor, now_ms, self.window_ms)) is not None:
            try:
                orders, bad = await self._fetch(window, stop)
            except RequestRejected as exc:
                if exc.code == WINDOW_TOO_WIDE and self.window_ms > MIN_WINDOW_MS:
                    self.window_ms = max(MIN_WINDOW_MS, self.window_ms // 2)
                    self._log.warning("account.window_shrunk", window_ms=self.window_ms)
                    continue
                raise
            cursor = window[1]
            was_complete = cp.backfill_complete
            complete = was_complete or cursor >= now_ms
            cp = store.Checkpoint(cp.horizon_ms, max(cp.covered_until_ms, cursor), complete)
            counts = await store.commit_window(
                ctx.pool, account, self.spec.path, self.scope.name, orders, cp,
                bad_rows=[store.BadRow(orjson.dumps(raw), why) for raw, why in bad],
            )  # fmt: skip
            ctx.state.ok(self.label)
            for result, n in (("new", counts.new), ("updated", counts.updated),
                              ("unchanged", counts.unchanged)):  # fmt: skip
                ctx.metrics.account_rows.labels(account, self.spec.path, result).inc(n)
            if bad:
                ctx.metrics.dead_letters.labels("account_row_malformed").inc(len(bad))
            ctx.metrics.account_backfill_complete.labels(*labels).set(int(complete))
            lag_s = max(0.0, (ctx.client.clocks.now_ms(self.spec.family) - cursor) / 1000)
            ctx.metrics.account_poll_lag.labels(*labels).set(lag_s)
            if complete and not was_complete:
                self._log.info("account.backfill_complete", horizon_ms=cp.horizon_ms)
        self._log.debug("account.poll_done", covered_until_ms=cp.covered_until_ms)

    async def _fetch(
        self, window: Window, stop: asyncio.Event
    ) -> tuple[list[AccountForceOrder], list[tuple[object, str]]]:
        if self.spec.paging is Paging.LIMIT:
            return await self._fetch_limit(window, stop)
        return await self._fetch_pages(window, stop)

    async def _get(self, params: list[tuple[str, str | int]], stop: asyncio.Event) -> object:
        return await self.ctx.client.get_signed(
            self.spec.family, self.spec.path, [*self.scope.params, *params],
            self.spec.weight, self.ctx.credentials, stop,
        )  # fmt: skip

    async def _fetch_limit(
        self, window: Window, stop: asyncio.Event
    ) -> tuple[list[AccountForceOrder], list[tuple[object, str]]]:
        """One window, bisected while a response is a full page."""
        start, end = window
        payload = await self._get(
            [("startTime", start), ("endTime", end), ("limit", self.spec.page_size)], stop
        )
        page = parse_rows(payload, self.ctx.account.name, self.scope)
        if page.received < self.spec.page_size:
            return page.orders, page.bad
        halves = split_window(window)
        if halves is None:
            self._log.warning("account.window_unsplittable", start_ms=start, end_ms=end)
            return page.orders, page.bad
        orders, bad = [], []
        for half in halves:
            more, more_bad = await self._fetch_limit(half, stop)
            orders.extend(more)
            bad.extend(more_bad)
        return orders, bad

    async def _fetch_pages(
        self, window: Window, stop: asyncio.Event
    ) -> tuple[list[AccountForceOrder], list[tuple[object, str]]]:
        """Every page of one frozen window."""
        start, end = window
        orders: list[AccountForceOrder] = []
        bad: list[tuple[object, str]] = []
        current = received = 0
        while True:
            current += 1
            payload = await self._get(
                [("startTime", start), ("endTime", end), ("current", current),
                 ("size", self.spec.page_size)], stop,
            )  # fmt: skip
            page = parse_rows(payload, self.ctx.account.name, self.scope)
            orders.extend(page.orders)
            bad.extend(page.bad)
            received += page.received
            if page.received < self.spec.page_size or received >= page.total:
                return orders, bad

    async def enrich(self, stop: asyncio.Event) -> None:
        """Look up the full order of up to `enrich_per_poll` margin force orders not yet
        enriched. Rows stay whatever happens; a final failure is written to the row."""
        ctx, account = self.ctx, self.ctx.account.name
        pending = await store.pending_enrichment(
            ctx.pool, account, self.spec.path, ctx.rest.enrich_per_poll
        )
        outcome = ctx.metrics.account_enrichment
        for symbol, order_id, is_isolated in pending:
            params: list[tuple[str, str | int]] = [("symbol", symbol), ("orderId", order_id)]
            if self.lookup_is_sapi and is_isolated:
                params.append(("isIsolated", "TRUE"))
            try:
                payload = await ctx.client.get_signed(
                    ctx.lookup.family, ctx.lookup.path, params, ctx.lookup.weight,
                    ctx.credentials, stop,
                )  # fmt: skip
                enrichment = parse_margin_order(payload)
            except (RequestRejected, MalformedPayload) as exc:
                outcome.labels(account, "failed").inc()
                await store.store_enrichment_error(ctx.pool, account, symbol, order_id, str(exc))
                continue
            except AuthError as exc:
                outcome.labels(account, "auth_error").inc()
                self._log.warning("account.enrichment_auth_failed", code=exc.code, msg=exc.msg)
                return
            except TransientRestError as exc:
                outcome.labels(account, "retry_later").inc()
                self._log.warning("account.enrichment_deferred", error=str(exc))
                return
            await store.store_enrichment(ctx.pool, account, symbol, order_id, enrichment)
            outcome.labels(account, "ok").inc()

    @property
    def lookup_is_sapi(self) -> bool:
        """Classic margin lookups need `isIsolated=TRUE` for isolated pairs."""
        return self.ctx.lookup.family == "sapi"
