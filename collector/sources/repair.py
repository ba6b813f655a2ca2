"""Gap repair as a venue capability: a venue that can read back `[start, end)` of its streams
from a history (`History`) gets its coverage gaps filled by one mechanism (`GapRepairer`).

The repairer puts the rows read back (same content keys as the stream, so the database keeps
one row per liquidation), flushes them, then puts one `RepairRecord` per stream for the part
of the gap the history covered, never more than was read. A history that is gone
(`HistoryUnavailable`: a 404, an error code) switches repair off for its venue with one log
line and the `collector_venue_repair_state` metric, and is never asked again; a failed read
(the network, a rate limit) gives up that gap only. OKX's `okx_repair.OkxHistory` is the
first; a venue with a documented public history (Gate.io's `GET /futures/{settle}/liq_orders`,
say) is one more class with `read_back`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog

from collector.metrics import Metrics
from collector.model import RepairRecord, Sink
from collector.venues import Venue, VenueLiquidation

log = structlog.get_logger(__name__)
_LOGGED_ERROR_CHARS = 300

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class HistoryUnavailable(Exception):
    """The venue's history endpoint is not there (404) or refuses with an error code: asking
    again will not help. `detail` says what it answered."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class HistoryFailed(Exception):
    """One read-back failed for a reason that may pass (the network, a rate limit, a 5xx)."""


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What a history returned for one `stream` (as the ledger names it, e.g.
    `liquidation-orders:SWAP`) and `[start, end)`: every row it holds from `covered_from` up to
    `end` (`covered_from` >= start: the history may not reach back to the gap's start)."""

    stream: str
    rows: list[VenueLiquidation]
    covered_from: datetime
    requests: int


class History(Protocol):
    """A venue's ability to read back what its streams carried in a past window."""

    venue: Venue
    source: str
    """Where repaired rows come from, for the ledger (e.g. `rest:okx:liquidation-orders`)."""

    async def read_back(self, start: datetime, end: datetime) -> list[ReadBack]:
        """Every liquidation of `[start, end)` the history still holds, per stream, and from
        when on each is complete; a stream it cannot read is left out. Raises
        `HistoryUnavailable` or `HistoryFailed`."""
        ...


@dataclass(frozen=True, slots=True)
class Gap:
    """A window in which the stream was not read: `[start, end)`; `why` labels it."""

    start: datetime
    end: datetime
    why: str


class GapRepairer:
    """Repairs the gaps handed to `submit`, one at a time, until switched off."""

    def __init__(
        self, history: History, sink: Sink, metrics: Metrics, *, clock: Clock = _utc_now
    ) -> None:
        self._history = history
        self._clock = clock
        self._sink = sink
        self._metrics = metrics
        self._venue = history.venue.value
        self._gaps: asyncio.Queue[Gap] = asyncio.Queue()
        self.is_on = True
        self.records: list[RepairRecord] = []
        """Every record put (tests and readiness read them)."""
        self.log = log.bind(venue=self._venue, source=history.source)
        metrics.set_repair_state(self._venue, "on")

    def submit(self, gap: Gap) -> None:
        """Queue `gap` for repair (ignored once repair is off, or when it is empty)."""
        if self.is_on and gap.start < gap.end:
            self._gaps.put_nowait(gap)

    async def run(self, stop: asyncio.Event) -> None:
        """Repair queued gaps until `stop` or until the history is found unavailable."""
        while self.is_on and not stop.is_set():
            getting = asyncio.ensure_future(self._gaps.get())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not getting.done():
                    getting.cancel()
            if getting.done() and not getting.cancelled():
                await self.repair(getting.result())

    def _switch_off(self, answer: str) -> None:
        """The history is gone: one log line, the state metric, and no request ever again."""
        self.is_on = False
        self._metrics.set_repair_state(self._venue, "off")
        self._metrics.venue_repairs.labels(self._venue, "failed").inc()
        self.log.error("repair.switched_off", answer=answer[:_LOGGED_ERROR_CHARS])

    async def repair(self, gap: Gap) -> list[RepairRecord]:
        """Read `gap` back; put its rows, flush them, then put one `RepairRecord` per stream
        the history covered (so the ledger never claims rows not committed). Empty when the
        history is off, failed, or reaches into the gap for no stream."""
        if not self.is_on:
            return []
        venue = self._venue
        try:
            found = await self._history.read_back(gap.start, gap.end)
        except HistoryUnavailable as exc:
            self._switch_off(exc.detail)
            return []
        except HistoryFailed as exc:
            self._metrics.venue_repairs.labels(venue, "failed").inc()
            self.log.warning(
                "repair.failed", why=gap.why, error=str(exc)[:_LOGGED_ERROR_CHARS],
                gap_start=gap.start.isoformat(), gap_end=gap.end.isoformat(),
            )  # fmt: skip
            return []
        covered: list[tuple[ReadBack, datetime, list[VenueLiquidation]]] = []
        for part in found:
            start = max(gap.start, part.covered_from)
            if start >= gap.end:
                self._metrics.venue_repairs.labels(venue, "skipped").inc()
                self.log.warning(
                    "repair.out_of_reach", why=gap.why, stream=part.stream,
                    gap_start=gap.start.isoformat(), gap_end=gap.end.isoformat(),
                    covered_from=part.covered_from.isoformat(),
                )  # fmt: skip
                continue
            rows = [r for r in part.rows if start <= r.trade_time < gap.end]
            covered.append((part, start, rows))
            for row in rows:
                await self._sink.put(row)
        if not covered:
            return []
        await self._sink.flush()
        records = []
        for part, start, rows in covered:
            record = RepairRecord(
                venue, part.stream, start, gap.end, self._history.source, len(rows),
                self._clock(),
            )  # fmt: skip
            await self._sink.put(record)
            records.append(record)
            self._metrics.venue_repair_rows.labels(venue).inc(len(rows))
            outcome = "repaired" if start == gap.start else "partial"
            self._metrics.venue_repairs.labels(venue, outcome).inc()
            self.log.info(
                "repair.done", why=gap.why, stream=part.stream, outcome=outcome, rows=len(rows),
                requests=part.requests, from_at=start.isoformat(), to_at=gap.end.isoformat(),
            )  # fmt: skip
        self.records.extend(records)
        return records
