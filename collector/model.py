"""Pure data: the records that flow from sources to the writer, and the narrow `Sink` interface
sources put them through. No I/O here."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from collector.venues import VenueLiquidation


class Market(StrEnum):
    """USD-M (UM) or COIN-M (CM) futures."""

    UM = "UM"
    CM = "CM"


class LiquidatedSide(StrEnum):
    """The position that was liquidated: a SELL force order closes a LONG."""

    LONG = "LONG"
    SHORT = "SHORT"


class MarketLiquidation(NamedTuple):
    """One `forceOrder` event from a market stream, every wire field kept exactly.

    `content_key` is the deterministic identity (the event has no id); the database enforces
    its uniqueness, so the same event seen on two connections is stored once. Each field is the
    column of its name (sink/columns.py); a tuple is cheap to build on the hot path.
    """

    trade_time: datetime  # o.T
    content_key: bytes  # 16 bytes, see binance_parse.content_key
    event_time: datetime  # E
    symbol: str  # o.s
    pair: str | None  # ps (top level or inside o)
    symbol_type: int | None  # st: 1 UM, 2 CM (after the 2026 merge)
    market: Market
    side: str  # o.S: the force order's side
    liquidated_side: LiquidatedSide
    order_type: str | None  # o.o
    time_in_force: str | None  # o.f
    status: str  # o.X
    orig_qty: Decimal  # o.q (UM: base asset; CM: contracts)
    price: Decimal  # o.p
    avg_price: Decimal  # o.ap
    last_filled_qty: Decimal | None  # o.l
    filled_qty: Decimal  # o.z
    notional_usd: Decimal | None  # UM: z x ap; CM: z x contractSize (None until known)
    received_at: datetime
    source_host: str  # "fstream" | "dstream"
    source_route: str  # "market" or "" where the host has no routes
    source_stream: str  # e.g. "!forceOrder@arr"
    raw: str  # the frame as received (JSON text)
    received_monotonic: float = 0.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be used as-is, kept verbatim for a person to look at.

    `kept` is true when the data itself was stored anyway (e.g. an unknown symbol) and this row
    only flags the anomaly.
    """

    received_at: datetime
    source: str
    reason: str
    detail: str
    raw: bytes
    kept: bool = False


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A snapshot of one websocket session for the coverage ledger (upserted by session_id)."""

    session_id: uuid.UUID
    connection: str
    host: str
    route: str
    url: str
    streams: tuple[str, ...]
    opened_at: datetime
    last_alive_at: datetime
    subscribed_at: datetime | None = None
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str | None = None
    events_received: int = 0
    venue: str = "binance"
    """Which venue's stream this session read (`collector.venues.Venue` values)."""


@dataclass(frozen=True, slots=True)
class RepairRecord:
    """The part [`from_at`, `to_at`) of a coverage gap of `venue`'s `stream` that was read
    back from `source` (e.g. a REST history), with the `rows` it yielded. Only what was read is
    claimed: a window the source no longer reaches stays a gap."""

    venue: str
    stream: str
    from_at: datetime
    to_at: datetime
    source: str
    rows: int


@dataclass(slots=True)
class Barrier:
    """A queue marker: `done` resolves once everything queued before it is committed."""

    done: asyncio.Future[None]


WriteItem = MarketLiquidation | DeadLetter | SessionRecord | Barrier


class Sink(Protocol):
    """Where sources put what they read: all they may know of the writer (`sink.writer.Writer`
    implements it), so that sources import nothing from the sink floor."""

    async def put(self, item: WriteItem, *, release: asyncio.Event | None = None) -> None:
        """Queue `item`; wait while the sink is full (backpressure), unless `release` is set:
        then take it at once, behind what is queued (a closing connection must not lose what it
        has read, nor wait on a slow database)."""

    async def flush(self) -> None:
        """Return once everything put before this call is committed (or dead-lettered)."""


class VenueSink(Protocol):
    """The `Sink` of the Bybit and OKX sources: it also takes their liquidations and the repair
    records of their gaps. (Until the writer's `WriteItem` includes `VenueLiquidation` and
    `RepairRecord`; then it is `Sink` itself.)"""

    async def put(
        self,
        item: WriteItem | VenueLiquidation | RepairRecord,
        *,
        release: asyncio.Event | None = None,
    ) -> None:
        """As `Sink.put`."""

    async def flush(self) -> None:
        """As `Sink.flush`."""
