"""Pure data: the records that flow from sources to the writer, and the narrow `Sink` interface
sources put them through. No I/O here."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple, Protocol, TypeAlias

from collector.venues import LiquidatedSide, VenueLiquidation


class Market(StrEnum):
    """USD-M (UM) or COIN-M (CM) futures."""

    UM = "UM"
    CM = "CM"


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
    """The venue whose stream the session read (a `collector.venues.Venue` value)."""


@dataclass(frozen=True, slots=True)
class RepairRecord:
    """A gap repair for the coverage ledger: `source` read back [repaired_from, repaired_to)
    of the venue's `stream` and returned `rows` liquidations there (`coverage_repairs`).

    Put it after the repaired rows and a `Sink.flush()`, so the ledger never claims a repair
    whose rows are not committed. One record per (venue, stream, interval, source) is kept.
    """

    venue: str
    stream: str
    repaired_from: datetime
    repaired_to: datetime
    source: str
    """What was read, e.g. `rest:okx:liquidation-orders`."""
    rows: int
    recorded_at: datetime


@dataclass(slots=True)
class Barrier:
    """A queue marker: `done` resolves once everything queued before it is committed."""

    done: asyncio.Future[None]


WriteItem: TypeAlias = (
    "MarketLiquidation | VenueLiquidation | DeadLetter | SessionRecord | RepairRecord | Barrier"
)


class Sink(Protocol):
    """Where sources put what they read: all they may know of the writer (`sink.writer.Writer`
    implements it), so that sources import nothing from the sink floor."""

    async def put(self, item: WriteItem, *, release: asyncio.Event | None = None) -> None:
        """Queue `item`; wait while the sink is full (backpressure), unless `release` is set:
        then take it at once, behind what is queued (a closing connection must not lose what it
        has read, nor wait on a slow database)."""

    async def flush(self) -> None:
        """Return once everything put before this call is committed (or dead-lettered)."""
