"""Backfill and keep-up loops, one per (account, endpoint, scope) (docs/binance.md §4.5).

A scope's checkpoint holds `covered_until`: everything before it has been read and committed.
The first run starts at the backfill horizon (configured depth, never beyond a documented
retention) and walks forward in windows of at most `max_window_ms`, committing rows and the
checkpoint together per window. Once it reaches now the backfill is complete; every later poll
re-scans `overlap_s` before `covered_until` so late rows are caught.

Reading a window is `fetch` (bisection of full pages, paging), choosing windows `windows`,
enrichment `enrich`, the endpoint health `state`. A scope never stalls on one window: a full
page in a window too narrow to split is kept and the window dead-lettered (`window_truncated`);
a window Binance can only reject (`windows.can_only_fail`) is narrowed to the part it accepts
and the rest dead-lettered and recorded in the checkpoint (`window_unavailable`); any other
failure retries the whole poll with backoff (`retry.poll_retry`).
"""

from __future__ import annotations

import asyncio
import functools
import time

import structlog

from collector.exceptions import MalformedPayload
from collector.rest import store
from collector.rest.client import AuthError, RequestRejected, RestStopped, TransientRestError
from collector.rest.context import PollerContext
from collector.rest.endpoints import DAY_MS, Scope, depth_days
from collector.rest.enrich import enrich
from collector.rest.fetch import TRUNCATED, UNAVAILABLE, Fetched, WindowReader
from collector.rest.state import Health
from collector.rest.windows import (
    MIN_WINDOW_MS,
    RETENTION_MARGIN_MS,
    WINDOW_TOO_WIDE,
    can_only_fail,
    next_window,
)
from collector.retry import poll_retry, sleep_or_stop

log = structlog.get_logger(__name__)

# One backfill progress line per scope per this many seconds.
_PROGRESS_EVERY_S = 60.0
# Dead-letter kind -> the `collector_dead_letters_total` reason (prefixed `account_`).
_DEAD_LETTER_REASON = {"malformed": "row_malformed", "db_rejected": "row_rejected",
                       TRUNCATED: TRUNCATED, UNAVAILABLE: UNAVAILABLE}  # fmt: skip


class ScopePoller:
    """Backfills and then keeps up one scope; `run(stop)` returns only when `stop` is set."""

    def __init__(self, ctx: PollerContext, scope: Scope) -> None:
        self.ctx = ctx
        self.scope = scope
        self.spec = scope.spec
        self.window_ms = scope.spec.max_window_ms
        self.label = f"{scope.spec.path}#{scope.name}"
        self._backfill_logged = False
        # (monotonic time, cursor) of the last progress line and of the first backfill window.
        self._progress_at: tuple[float, int] | None = None
        self._progress_from = (0.0, 0)
        self._log = log.bind(account=ctx.account.name, endpoint=scope.spec.path, scope=scope.name)
        self.reader = WindowReader(ctx, scope, self._log)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `poll_interval_s` (fixed rate) until `stop`; isolate every REST failure.
        A failed poll is retried after a capped, jittered, doubling delay (`retry.poll_retry`,
        reset by a success), and the log says that delay."""
        rest = self.ctx.rest
        failures = poll_retry(rest.poll_interval_s, rest.poll_failure_backoff_max_s).backoff()
        while not stop.is_set():
            started = time.monotonic()
            delay: float | None = None
            try:
                await self.poll_once(stop)
                if self.spec.product == "margin" and rest.enrich_margin_orders:
                    await enrich(self.ctx, self.spec.path, stop, self._log)
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
        cp = await ctx.database(
            lambda: store.load_checkpoint(ctx.pool, account, self.spec.path, self.scope.name),
            stop,
            self._log,
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
                fresh = await self.reader.fetch((fresh_from, now_ms), stop)
                await self._commit(fresh, cp, labels, stop)
        while (window := next_window(cursor, now_ms, self.window_ms)) is not None:
            backfilling = not cp.backfill_complete
            if backfilling and windows and time.monotonic() - started >= interval_s:
                break  # the rest of the history after the next poll's fresh read
            self.reader.is_backfill = backfilling
            windows += 1
            try:
                fetched = await self.reader.fetch(window, stop)
            except RequestRejected as exc:
                if exc.code == WINDOW_TOO_WIDE and self.window_ms > MIN_WINDOW_MS:
                    self.window_ms = max(MIN_WINDOW_MS, self.window_ms // 2)
                    self._log.warning("account.window_shrunk", window_ms=self.window_ms)
                    continue
                if not can_only_fail(exc, self.window_ms):
                    raise
                fetched = await self.reader.read_what_is_available(
                    window, exc, self.window_ms, stop
                )
            finally:
                self.reader.is_backfill = False
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
        counts = await ctx.database(commit, stop, self._log)
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
