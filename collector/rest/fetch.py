"""Reading one window of one scope (docs/binance.md §4.1, §4.2, §4.5): the requests, and what
to keep or dead-letter from their answers. The loop that chooses the windows is `pollers`.

Limit-style endpoints: explicit startTime+endTime; a full page means the window may be
truncated, so it is bisected until no sub-window is full (independent of the undocumented sort
order). Page-style endpoints: endTime frozen for the pass, `current` = 1, 2, ... until a short
page or `total` rows. A window Binance can only reject (`windows.can_only_fail`) is narrowed to
the part it accepts (`read_what_is_available`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import structlog

from collector.rest import store
from collector.rest.client import RequestRejected
from collector.rest.context import PollerContext
from collector.rest.endpoints import Paging, Scope
from collector.rest.parse import AccountForceOrder, parse_rows
from collector.rest.windows import MIN_WINDOW_MS, Window, can_only_fail, split_window

TRUNCATED = "window_truncated"
UNAVAILABLE = "window_unavailable"


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


class WindowReader:
    """Reads windows of one scope; `is_backfill` (set by the poller while it reads history)
    makes its requests give way to every scope's fresh reads for weight (Budget.acquire)."""

    def __init__(
        self, ctx: PollerContext, scope: Scope, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.ctx = ctx
        self.scope = scope
        self.spec = scope.spec
        self.is_backfill = False
        self._log = log

    async def fetch(self, window: Window, stop: asyncio.Event) -> Fetched:
        """Every row of `window`, by the scope's paging; RequestRejected when Binance rejects
        the request (the caller decides whether the window can only fail)."""
        if self.spec.paging is Paging.LIMIT:
            return await self._fetch_limit(window, stop, set())
        return await self._fetch_pages(window, stop)

    async def read_what_is_available(
        self, window: Window, rejected: RequestRejected, window_ms: int, stop: asyncio.Event
    ) -> Fetched:
        """Binance can only reject `window` (at the scope's current width `window_ms`): find
        (by bisection on the start, to MIN_WINDOW_MS) the latest part `(cut, end)` it accepts,
        read that, and dead-letter `[start, cut]` as unavailable with the reason."""
        start, end = window
        low, cut = start, end  # (low, end) is rejected; (cut, end) accepted, or cut == end
        fetched = Fetched([], [])
        reason = rejected
        while cut - low > MIN_WINDOW_MS:
            mid = (low + cut) // 2
            try:
                got = await self.fetch((mid, end), stop)
            except RequestRejected as exc:
                if not can_only_fail(exc, window_ms):
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

    async def _get(self, params: list[tuple[str, str | int]], stop: asyncio.Event) -> object:
        return await self.ctx.client.get_signed(
            self.spec.family, self.spec.path, [*self.scope.params, *params],
            self.spec.weight, self.ctx.credentials, stop, is_backfill=self.is_backfill,
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
