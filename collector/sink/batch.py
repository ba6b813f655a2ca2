"""One flush worth of write items, split by kind; session snapshots merged as the ledger does."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from collector.model import (
    Barrier,
    DeadLetter,
    MarketLiquidation,
    RepairRecord,
    SessionRecord,
    WriteItem,
)
from collector.venues import VenueLiquidation


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def merge(earlier: SessionRecord, later: SessionRecord) -> SessionRecord:
    """Two snapshots of one session as one, by the same rules as the ledger's upsert
    (`sink.columns.UPSERT_SESSION`)."""
    return dataclasses.replace(
        later,
        subscribed_at=earlier.subscribed_at or later.subscribed_at,
        first_event_at=earlier.first_event_at or later.first_event_at,
        last_event_at=_latest(earlier.last_event_at, later.last_event_at),
        last_alive_at=max(earlier.last_alive_at, later.last_alive_at),
        closed_at=earlier.closed_at or later.closed_at,
        close_reason=earlier.close_reason or later.close_reason,
        events_received=max(earlier.events_received, later.events_received),
    )


@dataclass(slots=True)
class Batch:
    """One flush worth of items, split by kind."""

    liquidations: list[MarketLiquidation] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    sessions: dict[Any, SessionRecord] = field(default_factory=dict)
    barriers: list[Barrier] = field(default_factory=list)
    venue_rows: list[VenueLiquidation] = field(default_factory=list)
    repairs: list[RepairRecord] = field(default_factory=list)
    # Other batches in flight when this batch took its barrier: they hold every item queued
    # before the barrier that this batch does not, so the barrier waits for them.
    waits_for: set[int] = field(default_factory=set)
    size: int = 0

    def add(self, item: WriteItem) -> None:
        """Add one item; a session snapshot merges into the batch's earlier one, if any."""
        self.size += 1
        if isinstance(item, MarketLiquidation):
            self.liquidations.append(item)
        elif isinstance(item, DeadLetter):
            self.dead_letters.append(item)
        elif isinstance(item, SessionRecord):
            earlier = self.sessions.get(item.session_id)
            self.sessions[item.session_id] = item if earlier is None else merge(earlier, item)
        elif isinstance(item, VenueLiquidation):
            self.venue_rows.append(item)
        elif isinstance(item, RepairRecord):
            self.repairs.append(item)
        else:
            self.barriers.append(item)

    def items(self) -> list[WriteItem]:
        """The batch's data items (no barriers): sessions, then liquidations (Binance's, then
        other venues'), then repairs, then dead letters."""
        return [
            *self.sessions.values(),
            *self.liquidations,
            *self.venue_rows,
            *self.repairs,
            *self.dead_letters,
        ]
