"""Tardis.dev's normalised `liquidations` CSV: its exchange names, file names, header and lines.

Pure: no I/O. The facts come from Tardis' docs and its own client (docs/export.md cites them):
the columns and units (https://docs.tardis.dev/downloadable-csv-files), the exchange names and
how each venue's fields become a line (tardis-node `src/mappers/{binance,bybit,okex}.ts`), and
the download file names (tardis-node `src/downloaddatasets.ts`, `getFilenameDefault`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Final

from collector.exceptions import MalformedPayload
from collector.venues import LiquidatedSide, Venue

HEADER: Final = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
COLUMNS: Final = tuple(HEADER.split(","))

EXCHANGES: Final[dict[str, tuple[Venue, str | None]]] = {
    # Tardis exchange -> (our venue, our market). Bybit's one Tardis exchange holds linear and
    # inverse contracts alike (`bybit_category` tells them apart by symbol). OKX margin (`okex`)
    # has no liquidations dataset at Tardis: OKX MARGIN rows are not exported in this format.
    "binance-futures": (Venue.BINANCE, "UM"),
    "binance-delivery": (Venue.BINANCE, "CM"),
    "bybit": (Venue.BYBIT, None),
    "okex-swap": (Venue.OKX, "SWAP"),
    "okex-futures": (Venue.OKX, "FUTURES"),
}

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# tardis-node sanitizeForFilename: these characters become '-' in a download's file name.
_UNSAFE = re.compile(r'[:\\/?*<>|"]')
_FILE_NAME = re.compile(
    r"(?P<exchange>[a-z0-9-]+)_liquidations_(?P<day>\d{4}-\d{2}-\d{2})_(?P<symbol>[^/]+)\.csv(\.gz)?"
)
# Bybit inverse contracts: BTCUSD (perpetual) and BTCUSDH26 (a quarterly: month code, year).
# Everything else Bybit lists is linear: ...USDT, ...USDC, BTCPERP, BTC-26DEC25, BTCUSDT-26DEC25.
_BYBIT_INVERSE = re.compile(r"[A-Z0-9]+USD([FGHJKMNQUVXZ]\d{2})?")


def file_name(exchange: str, day: date, symbol: str) -> str:
    """The name Tardis' clients give a download, e.g.
    `binance-futures_liquidations_2026-11-21_BTCUSDT.csv.gz`."""
    return f"{exchange}_liquidations_{day.isoformat()}_{_UNSAFE.sub('-', symbol)}.csv.gz"


def parse_file_name(name: str) -> tuple[str, date, str] | None:
    """(exchange, day, symbol) from a file named as Tardis names downloads (the symbol as the
    name spells it); None for any other name."""
    match = _FILE_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return match["exchange"], date.fromisoformat(match["day"]), match["symbol"]
    except ValueError:
        return None


def side(liquidated: LiquidatedSide) -> str:
    """Tardis' `side`: `buy` when a short was liquidated (the closing order buys), `sell` when
    a long was."""
    return "buy" if liquidated is LiquidatedSide.SHORT else "sell"


def bybit_category(symbol: str) -> str:
    """`inverse` or `linear`: Bybit's category of `symbol`, which Tardis' line does not carry."""
    return "inverse" if _BYBIT_INVERSE.fullmatch(symbol) else "linear"


def micros(moment: datetime) -> int:
    """Microseconds since the epoch, exact (no float on the way)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The UTC datetime `value` microseconds after the epoch."""
    return EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True, slots=True)
class TardisLine:
    """One line of a Tardis liquidations CSV, checked: a known exchange, integer microsecond
    times, `buy`/`sell`, positive finite decimals (exact: read as text, never as a float)."""

    exchange: str
    symbol: str
    timestamp_us: int
    local_timestamp_us: int
    id: str
    side: str
    price: Decimal
    amount: Decimal
    price_text: str
    amount_text: str

    @property
    def liquidated_side(self) -> LiquidatedSide:
        """The position that was liquidated: a `sell` closed a long, a `buy` a short."""
        return LiquidatedSide.LONG if self.side == "sell" else LiquidatedSide.SHORT


def _int(text: str, name: str) -> int:
    if not text.isdigit():
        raise MalformedPayload(f"expected microseconds since the epoch, got {text!r}", field=name)
    return int(text)


def _positive(text: str, name: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise MalformedPayload(f"expected a decimal number, got {text!r}", field=name) from None
    if not value.is_finite() or value <= 0:
        raise MalformedPayload(f"expected a positive number, got {text!r}", field=name)
    return value


def parse_line(fields: list[str]) -> TardisLine:
    """Check one CSV record (already split) of a Tardis liquidations file.

    Raises `MalformedPayload` naming the first bad column.
    """
    if len(fields) != len(COLUMNS):
        raise MalformedPayload(f"expected {len(COLUMNS)} columns, got {len(fields)}")
    exchange, symbol, timestamp, local_timestamp, ident, side_text, price, amount = fields
    if exchange not in EXCHANGES:
        raise MalformedPayload(f"unsupported exchange {exchange!r}", field="exchange")
    if not symbol:
        raise MalformedPayload("empty symbol", field="symbol")
    if side_text not in ("buy", "sell"):
        raise MalformedPayload(f"expected buy or sell, got {side_text!r}", field="side")
    return TardisLine(
        exchange=exchange,
        symbol=symbol,
        timestamp_us=_int(timestamp, "timestamp"),
        local_timestamp_us=_int(local_timestamp, "local_timestamp"),
        id=ident,
        side=side_text,
        price=_positive(price, "price"),
        amount=_positive(amount, "amount"),
        price_text=price,
        amount_text=amount,
    )
