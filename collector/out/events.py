"""The feed's rows: the cursor that orders them, their JSON and SSE encodings, and the SQL that
reads them in committed order (migrations/0009_feed.sql explains why this order never skips).

Pure data and SQL text; the I/O is `collector.out.feed`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

_CURSOR = re.compile(r"(\d{1,20})-(\d{1,19})")


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A row's place in committed order: its writing transaction, then its sequence number.
    Printed (and sent as the SSE `id:`) as `<xid>-<seq>`."""

    xid: int
    seq: int

    def __str__(self) -> str:
        return f"{self.xid}-{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor `text` prints; `ValueError` for anything else."""
        match = _CURSOR.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a cursor (expected <xid>-<seq>): {text[:40]!r}")
        return cls(int(match[1]), int(match[2]))


START = Cursor(0, 0)  # before every row


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds and a `Z`: fixed width, sortable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One normalised liquidation as the feed sends it. Decimals are kept as Postgres prints
    them (exact), times are UTC."""

    cursor: Cursor
    venue: str
    market: str
    symbol: str
    liquidated_side: str | None
    price: str | None
    qty: str | None
    notional_usd: str | None
    trade_time: datetime
    received_at: datetime
    # The row's identity within its venue (hex of its 16-byte content key; "" when not read).
    content_key: str = ""
    _sse: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The row's key, the same on every replica and after every restart:
        `<venue>:<content key in hex>` (the NATS `Nats-Msg-Id`, an alert's claim)."""
        return f"{self.venue}:{self.content_key}"

    @property
    def notional(self) -> Decimal | None:
        """notional_usd as an exact Decimal (None while unknown)."""
        return None if self.notional_usd is None else Decimal(self.notional_usd)

    def as_json(self) -> dict[str, Any]:
        """The JSON object of this liquidation (the stream's `data:` and a history item)."""
        return {
            "venue": self.venue,
            "symbol": self.symbol,
            "market": self.market,
            "liquidated_side": self.liquidated_side,
            "price": self.price,
            "qty": self.qty,
            "notional_usd": self.notional_usd,
            "trade_time": iso(self.trade_time),
            "received_time": iso(self.received_at),
        }

    def sse(self) -> bytes:
        """The Server-Sent Events frame, encoded once however many subscribers get it."""
        if not self._sse:
            data = orjson.dumps(self.as_json())
            self._sse.append(b"id: %s\ndata: %s\n\n" % (str(self.cursor).encode(), data))
        return self._sse[0]


def event_from_row(row: Mapping[str, Any]) -> FeedEvent:
    """A `FeedEvent` from a row of `PAGE`/`RANGE`/`HISTORY`."""
    return FeedEvent(
        Cursor(row["xid"], row["seq"]), row["venue"], row["market"], row["symbol"],
        row["liquidated_side"], row["price"], row["qty"], row["notional_usd"],
        row["trade_time"], row["received_at"], _hex(row.get("content_key")),
    )  # fmt: skip


def _hex(key: object) -> str:
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key).hex()
    return "" if key is None else str(key)


@dataclass(frozen=True, slots=True)
class Filter:
    """What one subscriber (or alert rule) wants: any of `venues`, any of `symbols` (empty: all),
    and at least `min_notional_usd` (an unknown notional never matches a minimum)."""

    venues: frozenset[str] = frozenset()
    symbols: frozenset[str] = frozenset()
    min_notional_usd: Decimal | None = None

    def matches(self, event: FeedEvent) -> bool:
        """Whether `event` passes every part of the filter."""
        if self.venues and event.venue not in self.venues:
            return False
        if self.symbols and event.symbol not in self.symbols:
            return False
        if self.min_notional_usd is not None:
            notional = event.notional
            return notional is not None and notional >= self.min_notional_usd
        return True


_COLUMNS = """committed_xid AS xid, seq, venue, market, symbol, liquidated_side,
       price::text AS price, qty::text AS qty, notional_usd::text AS notional_usd,
       trade_time, received_at, encode(content_key, 'hex') AS content_key"""
# The rows below this are final: every transaction that writes liquidations and is below it
# has ended (migration 0015: the writers' feed lock; other transactions on the server don't
# hold the feed back; until then it was the snapshot's xmin, 0009).
HORIZON = "SELECT liquidation_feed_horizon()"
# The newest final row's cursor ($1: a horizon). From the view's two tables, each newest first
# by its (committed_xid, seq) index: a backward index scan per partition. Through the view the
# planner cannot use the index order (its join with `symbols`) and sorts every row: 121 ms
# against 0.6 ms over 200,000 rows (EXPLAIN ANALYZE, generic plan).
HEAD = """SELECT xid, seq FROM (
 (SELECT committed_xid AS xid, seq FROM market_liquidations WHERE committed_xid < $1::xid8
   ORDER BY committed_xid DESC, seq DESC LIMIT 1)
 UNION ALL
 (SELECT committed_xid, seq FROM venue_liquidations WHERE committed_xid < $1::xid8
   ORDER BY committed_xid DESC, seq DESC LIMIT 1)
) AS newest ORDER BY xid DESC, seq DESC LIMIT 1"""
# (S608: the f-strings below join module constants only, never input.)
# The next final rows after $1-$2 ($3: a horizon), at most $4.
PAGE = f"""SELECT {_COLUMNS} FROM liquidation_feed
 WHERE (committed_xid, seq) > ($1::xid8, $2) AND committed_xid < $3::xid8
 ORDER BY committed_xid, seq LIMIT $4"""  # noqa: S608
# Rows after $1-$2 up to and including $3-$4 (every one final: at or below a read head), at
# most $5.
RANGE = f"""SELECT {_COLUMNS} FROM liquidation_feed
 WHERE (committed_xid, seq) > ($1::xid8, $2) AND (committed_xid, seq) <= ($3::xid8, $4)
 ORDER BY committed_xid, seq LIMIT $5"""  # noqa: S608
# When the row at cursor $1-$2 was received (no row: not a cursor of this database).
RECEIVED = "SELECT received_at FROM liquidation_feed WHERE committed_xid = $1::xid8 AND seq = $2"
