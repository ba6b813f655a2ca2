"""A real in-memory `model.Sink`: it records every item put, in order, so source tests can
assert exactly what a source wrote without a database (the end-to-end tests use the writer)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeVar

from collector.model import DeadLetter, RepairRecord, SessionRecord
from collector.venues import VenueLiquidation

T = TypeVar("T")


class RecordingSink:
    """Keeps what is put; `flush` has nothing to wait for."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def put(self, item: Any, *, release: asyncio.Event | None = None) -> None:
        self.items.append(item)

    async def flush(self) -> None:
        return None

    def of(self, kind: type[T]) -> list[T]:
        """The items of one kind, in the order they were put."""
        return [item for item in self.items if isinstance(item, kind)]

    @property
    def liquidations(self) -> list[VenueLiquidation]:
        return self.of(VenueLiquidation)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return self.of(DeadLetter)

    @property
    def repairs(self) -> list[RepairRecord]:
        return self.of(RepairRecord)

    def sessions(self) -> list[SessionRecord]:
        """Each session's latest snapshot (as the ledger's upsert keeps it), oldest first."""
        latest: dict[uuid.UUID, SessionRecord] = {}
        for record in self.of(SessionRecord):
            latest[record.session_id] = record
        return list(latest.values())
