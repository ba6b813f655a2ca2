"""Pure data shared by every venue's parsers: the normalised liquidation and its content key.

One `VenueLiquidation` per liquidation, whatever the venue: the normalised columns dashboards
read (venue, market, symbol, base asset, liquidated side, price, base quantity, USD notional,
trade time) beside the venue's wire fields, kept exactly as received. No I/O here; the parsers
live in `collector/sources/<venue>_parse.py`, the wire facts in `docs/<venue>.md`.

Why content keys. Neither Bybit's `allLiquidation` nor OKX's `liquidation-orders` carries an id,
so a liquidation's identity is built from its own fields, as for Binance (`binance_parse`): the
fields that describe the fill (instrument, trade time, side, size, price), never the push time
or anything that differs per connection, and decimals in canonical spelling ("13" and "13.0"
are one value). OKX's REST `GET /api/v5/public/liquidation-orders` returns the same detail
fields as the stream, so the gap repair computes the same key from a REST row as the stream did
from the frame, and the database's unique constraint stores the liquidation once. The cost, as
for Binance: two distinct liquidations identical in every keyed field (same instrument, same
millisecond, side, size and price) are stored as one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final

from collector.exceptions import CollectorError

__all__ = [
    "USD_QUOTES",
    "LiquidatedSide",
    "SamplingPolicy",
    "Venue",
    "VenueApiError",
    "VenueLiquidation",
    "canonical_decimal",
    "content_key",
]

USD_QUOTES: Final = frozenset({"USD", "USDT", "USDC"})
"""Quote or settlement currencies whose amounts count as USD in `notional_usd` (Binance's
notional already treats USDT as USD; the rows keep the currency, so a reader can re-price)."""


class LiquidatedSide(StrEnum):
    """The position that was liquidated (a SELL force order on Binance closes a LONG; each
    venue's parser says how its side field maps)."""

    LONG = "LONG"
    SHORT = "SHORT"


class Venue(StrEnum):
    """An exchange the collector records liquidations from."""

    BINANCE = "binance"
    BYBIT = "bybit"
    OKX = "okx"


class SamplingPolicy(StrEnum):
    """What share of a venue's liquidations its public feed shows (stored with the venue)."""

    LATEST_PER_SYMBOL_PER_S = "latest_per_symbol_per_second"
    """Binance: at most the latest liquidation per symbol per 1000 ms."""
    ALL_BATCHED = "all_batched_500ms"
    """Bybit `allLiquidation`: every liquidation, pushed in 500 ms batches."""
    SAMPLE = "sample_not_total"
    """OKX `liquidation-orders`: a sample that "doesn't represent the total"."""


SAMPLING_POLICIES: Final = {
    Venue.BINANCE: SamplingPolicy.LATEST_PER_SYMBOL_PER_S,
    Venue.BYBIT: SamplingPolicy.ALL_BATCHED,
    Venue.OKX: SamplingPolicy.SAMPLE,
}


class VenueApiError(CollectorError):
    """A venue answered a REST call with an error code in its body (`retCode` != 0 on Bybit,
    `code` != "0" on OKX); `code` and `msg` are the venue's own."""

    def __init__(self, venue: Venue, code: str, msg: str) -> None:
        self.venue = venue
        self.code = code
        self.msg = msg
        super().__init__(venue, code, msg)

    def __str__(self) -> str:
        return f"{self.venue} error {self.code}: {self.msg}"


@dataclass(frozen=True, slots=True)
class VenueLiquidation:
    """One liquidation from Bybit or OKX, normalised, with its wire fields kept exactly.

    `wire` holds the venue's fields as received, as (name, text) pairs in wire order: for Bybit
    the push's `topic`, `type`, `ts` and the item's `T`, `s`, `S`, `v`, `p`; for OKX the item's
    `instId`, `instFamily`, `instType`, `uly` and the detail's `side`, `posSide`, `bkPx`, `sz`,
    `bkLoss`, `ccy`, `ts` (numbers as their decimal text, absent fields left out). `raw` is the
    whole frame or REST body the liquidation came in (several liquidations may share it).
    """

    venue: Venue
    market: str
    """Bybit: the category, `linear` or `inverse`; OKX: the instType, `SWAP`, `FUTURES`,
    `MARGIN`."""
    symbol: str
    """Bybit `s`, OKX `instId`, as on the wire."""
    base_asset: str | None
    """None while the instrument's terms are unknown."""
    liquidated_side: LiquidatedSide | None
    """The position that was liquidated. None only where the venue gives no usable side
    (OKX MARGIN rows, whose `side` the docs limit to FUTURES/SWAP)."""
    price: Decimal | None
    """Bybit `p`, OKX `bkPx` (both the bankruptcy price); None where OKX sends none (MARGIN)."""
    qty: Decimal | None
    """Base-asset quantity where it is a finite decimal: linear contracts and margin. None for
    inverse contracts (USD / price has no exact decimal) and while the contract terms are
    unknown."""
    notional_usd: Decimal | None
    """Exact USD value (USDT/USDC count as USD); None while contract terms are unknown, or when
    neither a price nor USD-denominated contracts give one."""
    trade_time: datetime
    """Bybit `T`, OKX `ts`, UTC."""
    received_at: datetime
    content_key: bytes
    """16 bytes, see `content_key`; REST rows of the same liquidation get the same one."""
    wire: tuple[tuple[str, str], ...]
    raw: str
    source: str
    """Where it came from: `ws` or `rest`."""

    def wire_field(self, name: str) -> str | None:
        """The wire field `name` as received, or None if the message did not have it."""
        for key, value in self.wire:
            if key == name:
                return value
        return None


def canonical_decimal(value: Decimal) -> str:
    """A decimal's canonical spelling: "13", "13.0" and "1.3E+1" are all "13"."""
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def content_key(venue: Venue, *parts: str | int | Decimal) -> bytes:
    """The deterministic 16-byte identity of a liquidation built from its own fields.

    Decimals are spelled canonically, so the stream's "13" and a REST row's "13.0" give one key.
    The venue is part of the key, so equal fields on two venues never collide.
    """
    texts = [venue.value]
    for part in parts:
        texts.append(canonical_decimal(part) if isinstance(part, Decimal) else str(part))
    return hashlib.blake2b("\x1f".join(texts).encode(), digest_size=16).digest()
