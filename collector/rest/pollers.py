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

A scope never stalls on one window: a full page in a window too narrow to split is kept and the
window dead-lettered (`window_truncated`); a window Binance can only reject (see
`_can_only_fail`) is narrowed to the part it accepts and the rest dead-lettered and recorded in
the checkpoint (`window_unavailable`); any other failure retries the whole poll with backoff.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

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
from collector.retry import Backoff, is_transient, sleep_or_stop

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Stay this far inside a documented retention, so the oldest window never asks for expired data.
RETENTION_MARGIN_MS = 3_600_000
# -1127 "More than %s hours between startTime and endTime": halve the span, down to this.
MIN_WINDOW_MS = 3_600_000
WINDOW_TOO_WIDE = -1127
# One backfill progress line per scope per this many seconds.
_PROGRESS_EVERY_S = 60.0
INVALID_VALUE = -1130
# Other codes with which an endpoint rejects the time range itself, whatever else is sent.
TIME_RANGE_CODES = frozenset({-4166})
_NAMES_A_TIME = re.compile(r"\b(startTime|endTime)\b")
TRUNCATED = "window_truncated"
UNAVAILABLE = "window_unavailable"
# Dead-letter kind -> the `collector_dead_letters_total` reason (prefixed `account_`).
_DEAD_LETTER_REASON = {"malformed": "row_malformed", "db_rejected": "row_rejected",
                       TRUNCATED: TRUNCATED, UNAVAILABLE: UNAVAILABLE}  # fmt: skip


def can_only_fail(exc: RequestRejected, window_ms: int) -> bool:
    """Whether Binance rejected the window itself, so asking again can only fail: a span too
    wide (-1127) even at the narrowest window sent, a time it does not serve (-1130 naming
    startTime or endTime, e.g. beyond its retention), or another time-range code. Anything else
    (a 404, another parameter, no code) may be transient or a problem of the endpoint as a
    whole, and is retried with backoff."""
    if exc.code == WINDOW_TOO_WIDE:
        return window_ms <= MIN_WINDOW_MS
    if exc.code == INVALID_VALUE:
        return _NAMES_A_TIME.search(exc.msg) is not None
    return exc.code in TIME_RANGE_CODES


@dataclass(slots=True)
class Fetched:
    """What reading one window gave: the rows, and what to dead-letter beside them."""

    orders: list[AccountForceOrder]
    dead: list[store.BadRow]
    unavailable: str | None = None  # why part of the window was skipped, if it was

    def extend(self, other: Fetched) -> None:
        """Add the outcome of a sub-window."""
        self.orders.extend(other.orders)
        self.dead.extend(other.dead)


class Health(StrEnum):
    """The state of an account endpoint, worst first."""

    CREDENTIALS_REJECTED = "credentials_rejected"
    FAILING = "failing"
    OK = "ok"


@dataclass(slots=True)
class AccountState:
    """Health of an account's endpoints: each endpoint is in the worst state of its scopes, as
    `collector_account_state{account, endpoint, state}` (1 for that state, 0 for the others)."""

    name: str
    metrics: Metrics
    scopes: dict[str, tuple[str, Health]] = field(default_factory=dict)

    def set(self, endpoint: str, scope: str, health: Health) -> None:
        """Scope `scope` of `endpoint` is in state `health` now."""
        if self.scopes.get(scope) == (endpoint, health):
            return
        self.scopes[scope] = (endpoint, health)
        worst = self.of(endpoint)
        for state in Health:
            self.metrics.account_state.labels(self.name, endpoint, state.value).set(
                int(state is worst)
            )

    def of(self, endpoint: str) -> Health | None:
        """The state of `endpoint`: the worst of its scopes' (None before any outcome)."""
        states = {health for e, health in self.scopes.values() if e == endpoint}
        return next((state for state in Health if state in states), None)


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
        self._backfill_logged = False
        # True while this poller reads history (or enriches): its requests give way to every
        # scope's fresh reads for weight (Budget.acquire).
        self._is_backfill = False
        # (monotonic time, cursor) of the last progress line and of the first backfill window.
        self._progress_at: tuple[float, int] | None = None
        self._progress_from = (0.0, 0)
        self._log = log.bind(account=ctx.account.name, endpoint=scope.spec.path, scope=scope.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `poll_interval_s` (fixed rate) until `stop`; isolate every REST failure.
        A failed poll is retried after a capped, jittered, doubling delay (reset by a success),
        and the log says that delay."""
        rest = self.ctx.rest
        failures = Backoff(
            rest.poll_interval_s, max(rest.poll_interval_s, rest.poll_failure_backoff_max_s)
        )
        while not stop.is_set():
            started = time.monotonic()
            delay: float | None = None
            try:
                await self.poll_once(stop)
                if self.spec.product == "margin" and rest.enrich_margin_orders:
                    await self.enrich(stop)
                failures.reset()
                self._health(Health.OK)
            except RestStopped:
                return
            except AuthError as exc:
                self._health(Health.CREDENTIALS_REJECTED)
                self._log.error(
                    "account.auth_failed", code=exc.code, status=exc.status, msg=exc.msg,
                    hint="check the API key, its type, IP whitelist and read permission",
                    retry_in_s=rest.auth_failure_backoff_s,
                )  # fmt: skip
                delay = rest.auth_failure_backoff_s
            except (TransientRestError, RequestRejected, MalformedPayload) as exc:
                self._health(Health.FAILING)
                delay = failures.next_delay()
                self._log.warning("account.poll_failed", error=str(exc), failures=failures.attempt,
                                  retry_in_s=round(delay, 3))  # fmt: skip
            if delay is None:
                delay = max(0.0, rest.poll_interval_s - (time.monotonic() - started))
            if await sleep_or_stop(delay, stop):
                return

    def _health(self, health: Health) -> None:
        self.ctx.state.set(self.spec.path, self.label, health)

    async def _db(self, operation: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        """Run a database operation, waiting out a database that is down or restarting (capped,
        jittered backoff) with what was fetched kept in memory; other errors propagate."""
        rest = self.ctx.rest
        backoff = Backoff(rest.retry_initial_s, rest.retry_max_s)
        while True:
            try:
                result = await operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                self._log.warning("account.database_unavailable", error=type(exc).__name__,
                                  detail=str(exc)[:200], retry_in_s=round(delay, 3))  # fmt: skip
                if await sleep_or_stop(delay, stop):
                    raise RestStopped("database") from None
                continue
            if backoff.attempt:
                self._log.info("account.database_available")
            return result

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
        cp = await self._db(
            lambda: store.load_checkpoint(ctx.pool, account, self.spec.path, self.scope.name), stop
        )
        if cp is None:
            horizon = now_ms - int(depth_days(self.spec, ctx.account.backfill_days) * DAY_MS)
            if floor is not None:
                horizon = max(horizon, floor)
            cp = store.Checkpoint(horizon, horizon, backfill_complete=False)
            if not self._backfill_logged:  # once per scope, not once per failed first poll
                self._backfill_logged = True
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
        started, interval_s, windows = time.monotonic(), ctx.rest.poll_interval_s, 0
        if not cp.backfill_complete:
            # Fresh first: the recent window (the overlap before now) is read before any
            # history, so a liquidation that happens during a long backfill is stored within a
            # poll interval. Its rows commit; the checkpoint stays where the history is.
            fresh_from = max(cursor, now_ms - int(ctx.rest.overlap_s * 1000),
                             now_ms - self.window_ms)  # fmt: skip
            if fresh_from > cursor:
                await self._commit(await self._fetch((fresh_from, now_ms), stop), cp, labels, stop)
        while (window := next_window(cursor, now_ms, self.window_ms)) is not None:
            backfilling = not cp.backfill_complete
            if backfilling and windows and time.monotonic() - started >= interval_s:
                break  # the rest of the history after the next poll's fresh read
            self._is_backfill = backfilling
            windows += 1
            try:
                fetched = await self._fetch(window, stop)
            except RequestRejected as exc:
                if exc.code == WINDOW_TOO_WIDE and self.window_ms > MIN_WINDOW_MS:
                    self.window_ms = max(MIN_WINDOW_MS, self.window_ms // 2)
                    self._log.warning("account.window_shrunk", window_ms=self.window_ms)
                    continue
                if not self._can_only_fail(exc):
                    raise
                fetched = await self._read_what_is_available(window, exc, stop)
            finally:
                self._is_backfill = False
            cursor = window[1]
            was_complete = cp.backfill_complete
            complete = was_complete or cursor >= now_ms
            cp = store.Checkpoint(cp.horizon_ms, max(cp.covered_until_ms, cursor), complete,
                                  fetched.unavailable)  # fmt: skip
            await self._commit(fetched, cp, labels, stop)
            ctx.metrics.account_backfill_complete.labels(*labels).set(int(complete))
            lag_s = max(0.0, (ctx.client.clocks.now_ms(self.spec.family) - cursor) / 1000)
            ctx.metrics.account_poll_lag.labels(*labels).set(lag_s)
            if complete and not was_complete:
                self._log.info("account.backfill_complete", horizon_ms=cp.horizon_ms)
            elif not complete:
                self._progress(cp, cursor, now_ms)
        self._log.debug("account.poll_done", covered_until_ms=cp.covered_until_ms)

    def _progress(self, cp: store.Checkpoint, cursor_ms: int, now_ms: int) -> None:
        """During a backfill, one log line per scope per minute: days done of the total, and
        when it should end at the pace since this process started it."""
        at = time.monotonic()
        if self._progress_at is None:
            self._progress_at, self._progress_from = (at, cursor_ms), (at, cursor_ms)
            return
        if at - self._progress_at[0] < _PROGRESS_EVERY_S:
            return
        self._progress_at = (at, cursor_ms)
        began_at, began_ms = self._progress_from
        pace_ms_per_s = (cursor_ms - began_ms) / max(at - began_at, 1e-9)
        eta_s = (now_ms - cursor_ms) / pace_ms_per_s if pace_ms_per_s > 0 else None
        self._log.info(
            "account.backfill_progress",
            days_done=round((cursor_ms - cp.horizon_ms) / DAY_MS, 1),
            days_total=round((now_ms - cp.horizon_ms) / DAY_MS, 1),
            eta_s=None if eta_s is None else round(eta_s),
        )

    async def _commit(
        self, fetched: Fetched, cp: store.Checkpoint, labels: tuple[str, str], stop: asyncio.Event
    ) -> None:
        """Commit `fetched` with checkpoint `cp` (waiting out a database outage); count it."""
        ctx, account = self.ctx, self.ctx.account.name
        commit = functools.partial(
            store.commit_window, ctx.pool, account, self.spec.path, self.scope.name,
            fetched.orders, cp, bad_rows=fetched.dead,
        )  # fmt: skip
        counts = await self._db(commit, stop)
        self._health(Health.OK)
        for result, n in (("new", counts.new), ("updated", counts.updated),
                          ("unchanged", counts.unchanged),
                          ("rejected", counts.rejected)):  # fmt: skip
            ctx.metrics.account_rows.labels(account, self.spec.path, result).inc(n)
        for dead in counts.dead_lettered:
            ctx.metrics.dead_letters.labels(f"account_{_DEAD_LETTER_REASON[dead.kind]}").inc()
            if dead.kind == TRUNCATED:
                ctx.metrics.account_windows_truncated.labels(*labels).inc()
            elif dead.kind == UNAVAILABLE:
                ctx.metrics.account_windows_unavailable.labels(*labels).inc()

    def _can_only_fail(self, exc: RequestRejected) -> bool:
        return can_only_fail(exc, self.window_ms)

    async def _read_what_is_available(
        self, window: Window, rejected: RequestRejected, stop: asyncio.Event
    ) -> Fetched:
        """Binance can only reject `window`: find (by bisection on the start, to
        MIN_WINDOW_MS) the latest part `(cut, end)` it accepts, read that, and dead-letter
        `[start, cut]` as unavailable with the reason."""
        start, end = window
        low, cut = start, end  # (low, end) is rejected; (cut, end) accepted, or cut == end
        fetched = Fetched([], [])
        reason = rejected
        while cut - low > MIN_WINDOW_MS:
            mid = (low + cut) // 2
            try:
                got = await self._fetch((mid, end), stop)
            except RequestRejected as exc:
                if not self._can_only_fail(exc):
                    raise
                low, reason = mid, exc
                continue
            fetched, cut = got, mid
        why = f"[{start}, {cut}] ms unavailable: {reason}"
        self._log.warning("account.window_unavailable", start_ms=start, end_ms=cut,
                          code=reason.code, msg=reason.msg)  # fmt: skip
        detail = {"scope": self.scope.name, "startTime": start, "endTime": cut,
                  "status": reason.status, "code": reason.code, "msg": reason.msg}  # fmt: skip
        fetched.dead.append(store.BadRow(orjson.dumps(detail), why, UNAVAILABLE))
        fetched.unavailable = why
        return fetched

    async def _fetch(self, window: Window, stop: asyncio.Event) -> Fetched:
        if self.spec.paging is Paging.LIMIT:
            return await self._fetch_limit(window, stop, set())
        return await self._fetch_pages(window, stop)

    async def _get(self, params: list[tuple[str, str | int]], stop: asyncio.Event) -> object:
        return await self.ctx.client.get_signed(
            self.spec.family, self.spec.path, [*self.scope.params, *params],
            self.spec.weight, self.ctx.credentials, stop, is_backfill=self._is_backfill,
        )  # fmt: skip

    def _bad_rows(self, bad: list[tuple[object, str]]) -> list[store.BadRow]:
        return [store.BadRow(orjson.dumps(raw), why) for raw, why in bad]

    async def _fetch_limit(
        self, window: Window, stop: asyncio.Event, truncated_pages: set[frozenset[object]]
    ) -> Fetched:
        """One window, bisected while a response is a full page. A window too narrow to split
        that is still full (more than a page of rows in one millisecond) keeps the page it got
        and is dead-lettered once (the overlapping halves may reach the same rows twice), so the
        scope moves on."""
        start, end = window
        limit = self.spec.page_size
        payload = await self._get([("startTime", start), ("endTime", end), ("limit", limit)], stop)
        page = parse_rows(payload, self.ctx.account.name, self.scope)
        if page.received < limit:
            return Fetched(page.orders, self._bad_rows(page.bad))
        halves = split_window(window)
        if halves is None:
            keys = frozenset(order.key for order in page.orders)
            if keys in truncated_pages:
                return Fetched(page.orders, self._bad_rows(page.bad))
            truncated_pages.add(keys)
            self._log.warning("account.window_truncated", start_ms=start, end_ms=end, limit=limit)
            detail = {"scope": self.scope.name, "startTime": start, "endTime": end,
                      "limit": limit, "received": page.received}  # fmt: skip
            truncated = store.BadRow(
                orjson.dumps(detail),
                f"a full page of {limit} rows in [{start}, {end}] ms, too narrow to split: "
                "rows beyond the page were not read",
                TRUNCATED,
            )
            return Fetched(page.orders, [*self._bad_rows(page.bad), truncated])
        fetched = Fetched([], [])
        for half in halves:
            fetched.extend(await self._fetch_limit(half, stop, truncated_pages))
        return fetched

    async def _fetch_pages(self, window: Window, stop: asyncio.Event) -> Fetched:
        """Every page of one frozen window."""
        start, end = window
        fetched = Fetched([], [])
        current = received = 0
        while True:
            current += 1
            payload = await self._get(
                [("startTime", start), ("endTime", end), ("current", current),
                 ("size", self.spec.page_size)], stop,
            )  # fmt: skip
            page = parse_rows(payload, self.ctx.account.name, self.scope)
            fetched.extend(Fetched(page.orders, self._bad_rows(page.bad)))
            received += page.received
            if page.received < self.spec.page_size or received >= page.total:
                return fetched

    async def enrich(self, stop: asyncio.Event) -> None:
        """Look up the full order of up to `enrich_per_poll` margin force orders not yet
        enriched. Rows stay whatever happens; a final failure is written to the row."""
        ctx, account = self.ctx, self.ctx.account.name
        pending = await self._db(
            lambda: store.pending_enrichment(
                ctx.pool, account, self.spec.path, ctx.rest.enrich_per_poll
            ),
            stop,
        )
        outcome = ctx.metrics.account_enrichment
        for symbol, order_id, is_isolated in pending:
            params: list[tuple[str, str | int]] = [("symbol", symbol), ("orderId", order_id)]
            if self.lookup_is_sapi and is_isolated:
                params.append(("isIsolated", "TRUE"))
            try:
                payload = await ctx.client.get_signed(
                    ctx.lookup.family, ctx.lookup.path, params, ctx.lookup.weight,
                    ctx.credentials, stop, is_backfill=True,  # after every fresh read
                )  # fmt: skip
                enrichment = parse_margin_order(payload)
            except (RequestRejected, MalformedPayload) as exc:
                outcome.labels(account, "failed").inc()
                failed = functools.partial(
                    store.store_enrichment_error, ctx.pool, account, symbol, order_id, str(exc)
                )
                await self._db(failed, stop)
                continue
            except AuthError as exc:
                outcome.labels(account, "auth_error").inc()
                self._log.warning("account.enrichment_auth_failed", code=exc.code, msg=exc.msg)
                return
            except TransientRestError as exc:
                outcome.labels(account, "retry_later").inc()
                self._log.warning("account.enrichment_deferred", error=str(exc))
                return
            await self._db(
                functools.partial(
                    store.store_enrichment, ctx.pool, account, symbol, order_id, enrichment
                ),
                stop,
            )
            outcome.labels(account, "ok").inc()

    @property
    def lookup_is_sapi(self) -> bool:
        """Classic margin lookups need `isIsolated=TRUE` for isolated pairs."""
        return self.ctx.lookup.family == "sapi"
