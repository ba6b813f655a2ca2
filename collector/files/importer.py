"""`collector import --format tardis`: Tardis.dev liquidations CSVs (gzip or not) into the store.

Each line becomes the row the live parser would have stored, as far as the line's fields
allow, with the content key the live parser computes (Bybit: every keyed field is in the line,
so the keys are the same; Binance and OKX: see `binance_row` and `okx_row`). A row already
stored, by key or by the fields the line has, is not stored again. One transaction per file:
its rows, then the coverage ledger's record of the span the file covers (`coverage_repairs`,
source `import:tardis`), so the ledger never claims rows that did not commit. A malformed line
is counted, reported (file:line) and skipped. docs/export.md has the consequences.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson

from collector.exceptions import MalformedPayload
from collector.files import tardis
from collector.files.tardis import TardisLine
from collector.sink.columns import FEED_LOCK
from collector.sources import binance_parse, bybit_parse, okx_parse
from collector.venues import Venue

SOURCE: Final = "import:tardis"
"""The ledger's `source` for imported spans, and Binance rows' `source_stream`."""
BATCH_ROWS: Final = 5_000
"""Rows parsed before they are copied to the server (memory per file stays bounded)."""

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS import_market (
    trade_time timestamptz, content_key bytea, symbol text, market text, side text,
    liquidated_side text, price numeric, amount numeric, received_at timestamptz, raw text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS import_venue (
    venue text, trade_time timestamptz, content_key bytea, market text, symbol text,
    base_asset text, liquidated_side text, price numeric, amount numeric, qty numeric,
    notional_usd numeric, received_at timestamptz, wire text, raw text
) ON COMMIT DELETE ROWS;
"""
# A Binance row is "already stored" when a FILLED row of the same symbol, millisecond, side,
# price and filled quantity exists: the fields Tardis keeps (its line lacks o.q and o.ap, which
# the live key includes). Equal numerics compare equal whatever their scale (9910 = 9910.0).
_INSERT_MARKET = """
INSERT INTO market_liquidations (
    trade_time, content_key, event_time, symbol, market, side, liquidated_side, status,
    orig_qty, price, avg_price, filled_qty, notional_usd, received_at, source_host,
    source_route, source_stream, raw)
SELECT s.trade_time, s.content_key, s.trade_time, s.symbol, s.market, s.side,
       s.liquidated_side, 'FILLED', s.amount, s.price, s.price, s.amount,
       CASE WHEN s.market = 'UM' THEN s.amount * s.price ELSE s.amount * y.contract_size END,
       s.received_at, 'import', '', $1, s.raw::jsonb
  FROM import_market s
  LEFT JOIN symbols y ON y.market = s.market AND y.symbol = s.symbol AND s.market = 'CM'
 WHERE NOT EXISTS (
       SELECT 1 FROM market_liquidations m
        WHERE m.trade_time = s.trade_time AND m.symbol = s.symbol AND m.market = s.market
          AND m.side = s.side AND m.price = s.price AND m.filled_qty = s.amount
          AND m.status = 'FILLED')
ON CONFLICT DO NOTHING
"""
# Bybit and OKX: the key decides (Bybit's is the live key); for OKX, whose live key includes a
# posSide the line lacks, also a row of the same instrument, millisecond, side, size and price.
_INSERT_VENUE = """
INSERT INTO venue_liquidations (
    trade_time, venue, content_key, market, symbol, base_asset, liquidated_side, price, qty,
    notional_usd, received_at, wire, raw, origin)
SELECT s.trade_time, s.venue, s.content_key, s.market, s.symbol, s.base_asset,
       s.liquidated_side, s.price, s.qty, s.notional_usd, s.received_at, s.wire::jsonb,
       s.raw::jsonb, 'import'
  FROM import_venue s
 WHERE NOT EXISTS (
       SELECT 1 FROM venue_liquidations v
        WHERE v.venue = s.venue AND v.symbol = s.symbol AND v.trade_time = s.trade_time
          AND v.liquidated_side = s.liquidated_side AND v.price = s.price
          AND (CASE v.venue WHEN 'bybit' THEN v.wire->>'v' ELSE v.wire->>'sz' END)::numeric
              = s.amount)
ON CONFLICT DO NOTHING
"""
_INSERT_COVERAGE = """
INSERT INTO coverage_repairs (venue, stream, repaired_from, repaired_to, source, rows, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (venue, stream, repaired_from, repaired_to, source) DO UPDATE
   SET rows = EXCLUDED.rows, recorded_at = EXCLUDED.recorded_at
"""
_MARKET_COLUMNS = ("trade_time", "content_key", "symbol", "market", "side", "liquidated_side",
                   "price", "amount", "received_at", "raw")  # fmt: skip
_VENUE_COLUMNS = ("venue", "trade_time", "content_key", "market", "symbol", "base_asset",
                  "liquidated_side", "price", "amount", "qty", "notional_usd", "received_at",
                  "wire", "raw")  # fmt: skip


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that was skipped: where, and why."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(slots=True)
class FileReport:
    """What one file gave: lines read (after the header), rows newly stored, lines whose row
    was stored already, and the skipped lines."""

    path: Path
    lines: int = 0
    stored: int = 0
    bad: list[BadLine] = field(default_factory=list)

    @property
    def known(self) -> int:
        """Valid lines whose liquidation the store already had."""
        return self.lines - len(self.bad) - self.stored

    def __str__(self) -> str:
        return (f"{self.path}\t{self.lines} lines\t{self.stored} stored\t{self.known} already "
                f"stored\t{len(self.bad)} malformed")  # fmt: skip


@dataclass(slots=True)
class _Span:
    """The lines of one (exchange, symbol) in a file: how many, and their time range."""

    rows: int = 0
    first_us: int | None = None
    last_us: int | None = None

    def add(self, timestamp_us: int) -> None:
        self.rows += 1
        self.first_us = timestamp_us if self.first_us is None else min(self.first_us, timestamp_us)
        self.last_us = timestamp_us if self.last_us is None else max(self.last_us, timestamp_us)


def _raw(path: Path, number: int, fields: list[str]) -> str:
    line = dict(zip(tardis.COLUMNS, fields, strict=True))
    return orjson.dumps({"file": path.name, "line": number, "tardis": line}).decode()


def binance_row(line: TardisLine, raw: str) -> tuple[Any, ...]:
    """A `market_liquidations` staging row for a binance-futures/-delivery line.

    Tardis keeps o.p (price) and o.z (amount), and only FILLED events. The live key also needs
    o.q and o.ap: the import takes q = z (a FILLED order filled its quantity) and ap = p, so the
    key equals the live one exactly when the live event had ap = p; otherwise the insert's
    field match finds the live row. event_time (E, not in the line) is the trade time.
    """
    _, market = tardis.EXCHANGES[line.exchange]
    trade_ms = line.timestamp_us // 1000
    side = "SELL" if line.side == "sell" else "BUY"
    key = binance_parse.content_key(line.symbol, trade_ms, side, line.amount, line.price,
                                    line.price, line.amount, "FILLED")  # fmt: skip
    return (tardis.from_micros(line.timestamp_us), key, line.symbol, market, side,
            line.liquidated_side.value, line.price, line.amount,
            tardis.from_micros(line.local_timestamp_us), raw)  # fmt: skip


def bybit_row(line: TardisLine, raw: str) -> tuple[Any, ...]:
    """A `venue_liquidations` staging row for a bybit line: Tardis keeps T, s, S (mapped to its
    side: Buy, a long liquidated, is `sell`), v and p, every field of the live key."""
    trade_ms = line.timestamp_us // 1000
    bybit_side = "Buy" if line.side == "sell" else "Sell"
    category = tardis.bybit_category(line.symbol)
    if category == "linear":
        qty, notional = line.amount, line.amount * line.price
    else:  # inverse sizes are USD (collector/sources/bybit_parse.py)
        qty, notional = None, line.amount
    wire = {"T": str(trade_ms), "s": line.symbol, "S": bybit_side, "v": line.amount_text,
            "p": line.price_text}  # fmt: skip
    key = bybit_parse.liquidation_key(line.symbol, trade_ms, bybit_side, line.amount, line.price)
    return (Venue.BYBIT.value, tardis.from_micros(line.timestamp_us), key, category,
            line.symbol, None, line.liquidated_side.value, line.price, line.amount, qty,
            notional, tardis.from_micros(line.local_timestamp_us),
            orjson.dumps(wire).decode(), raw)  # fmt: skip


def okx_row(line: TardisLine, raw: str) -> tuple[Any, ...]:
    """A `venue_liquidations` staging row for an okex-swap/-futures line: Tardis keeps instId,
    ts, side, sz (contracts) and bkPx, not posSide, which the live key includes. The key takes
    the posSide a liquidation of that side closes (`sell`: long), as OKX's public feed reports
    it; a live row with another posSide is found by the insert's field match instead. The
    contract value is unknown here, so qty and notional_usd are NULL (as live rows are while
    an instrument's terms are unknown)."""
    _, market = tardis.EXCHANGES[line.exchange]
    assert market is not None
    trade_ms = line.timestamp_us // 1000
    pos_side = "long" if line.side == "sell" else "short"
    key = okx_parse.liquidation_key(line.symbol, trade_ms, line.side, pos_side, line.amount,
                                    line.price)  # fmt: skip
    base, sep, _ = line.symbol.partition("-")
    wire = {"instId": line.symbol, "instType": market, "side": line.side, "bkPx": line.price_text,
            "sz": line.amount_text, "ts": str(trade_ms)}  # fmt: skip
    return (Venue.OKX.value, tardis.from_micros(line.timestamp_us), key, market, line.symbol,
            base if sep and base else None, line.liquidated_side.value, line.price,
            line.amount, None, None, tardis.from_micros(line.local_timestamp_us),
            orjson.dumps(wire).decode(), raw)  # fmt: skip


def stream_of(exchange: str, symbol: str) -> str:
    """The ledger's stream name for one symbol of a Tardis exchange: Binance's per-symbol
    stream (`btcusdt@forceOrder`), Bybit's topic (`allLiquidation.BTCUSDT`), OKX's channel
    with the instrument type and id (`liquidation-orders:SWAP:BTC-USDT-SWAP`)."""
    venue, market = tardis.EXCHANGES[exchange]
    if venue is Venue.BINANCE:
        return f"{symbol.lower()}@forceOrder"
    if venue is Venue.BYBIT:
        return f"allLiquidation.{symbol}"
    return f"liquidation-orders:{market}:{symbol}"


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV record of `path`, gunzipped if it is gzip."""
    with path.open("rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
    with (
        gzip.open(path, "rb") if is_gzip else path.open("rb") as binary,
        io.TextIOWrapper(binary, encoding="utf-8", newline="") as text,
    ):
        reader = csv.reader(text)
        for fields in reader:
            yield reader.line_num, fields


class _Batch:
    """Staging rows of one file, copied to the server every `BATCH_ROWS` rows."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.market: list[tuple[Any, ...]] = []
        self.venue: list[tuple[Any, ...]] = []

    async def add(self, line: TardisLine, raw: str) -> None:
        venue, _ = tardis.EXCHANGES[line.exchange]
        if venue is Venue.BINANCE:
            self.market.append(binance_row(line, raw))
        elif venue is Venue.BYBIT:
            self.venue.append(bybit_row(line, raw))
        else:
            self.venue.append(okx_row(line, raw))
        if len(self.market) + len(self.venue) >= BATCH_ROWS:
            await self.copy()

    async def copy(self) -> None:
        if self.market:
            await self._conn.copy_records_to_table(
                "import_market", records=self.market, columns=_MARKET_COLUMNS
            )
            self.market = []
        if self.venue:
            await self._conn.copy_records_to_table(
                "import_venue", records=self.venue, columns=_VENUE_COLUMNS
            )
            self.venue = []


def _inserted(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


def _months(first: datetime, last: datetime) -> tuple[datetime, int]:
    start = first.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (last.year - start.year) * 12 + last.month - start.month + 1


async def import_file(
    conn: asyncpg.Connection, path: Path, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> FileReport:
    """Import one Tardis liquidations CSV in one transaction; return what it gave.

    The covered span of each (exchange, symbol) is the UTC day in the file's name when it is
    named as Tardis names downloads (an empty day is then covered with 0 rows), else from its
    first to its last line's timestamp. A file that cannot be read, or whose first line is not
    Tardis' header, is reported as one bad line 1 and changes nothing.
    """
    report = FileReport(path)
    named = tardis.parse_file_name(path.name)
    spans: dict[tuple[str, str], _Span] = {}
    await conn.execute(_STAGING)
    try:
        async with conn.transaction():
            await conn.execute(FEED_LOCK)  # before the staging COPYs: see sink.columns
            batch = _Batch(conn)
            records = _records(path)
            header = next(records, None)
            if header is None or header[1] != list(tardis.COLUMNS):
                report.bad.append(BadLine(path, 1, f"not a Tardis liquidations header: "
                                                   f"expected {tardis.HEADER!r}"))  # fmt: skip
                return report
            for number, fields in records:
                report.lines += 1
                try:
                    line = tardis.parse_line(fields)
                except MalformedPayload as exc:
                    report.bad.append(BadLine(path, number, str(exc)))
                    continue
                spans.setdefault((line.exchange, line.symbol), _Span()).add(line.timestamp_us)
                await batch.add(line, _raw(path, number, fields))
            if named is not None and named[0] in tardis.EXCHANGES:
                spans.setdefault((named[0], named[2]), _Span())  # an empty day is covered too
            await batch.copy()
            await _ensure_partitions(conn, spans)
            report.stored = _inserted(await conn.execute(_INSERT_MARKET, SOURCE))
            report.stored += _inserted(await conn.execute(_INSERT_VENUE))
            recorded_at = now()
            for (exchange, symbol), span in spans.items():
                lo, hi = _covered(span, exchange, named)
                venue, _ = tardis.EXCHANGES[exchange]
                await conn.execute(_INSERT_COVERAGE, venue.value, stream_of(exchange, symbol),
                                   lo, hi, SOURCE, span.rows, recorded_at)  # fmt: skip
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as exc:
        report.bad.append(BadLine(path, report.lines + 1, f"cannot read the file: {exc}"))
        report.stored = 0
    return report


def _covered(
    span: _Span, exchange: str, named: tuple[str, date, str] | None
) -> tuple[datetime, datetime]:
    """The span a file covers for one exchange: its named day (widened to any line outside
    it), else its lines' first to last timestamp (the last one included)."""
    if named is not None and named[0] == exchange:
        lo = datetime(named[1].year, named[1].month, named[1].day, tzinfo=UTC)
        hi = lo + timedelta(days=1)
        if span.first_us is not None and span.last_us is not None:
            lo = min(lo, tardis.from_micros(span.first_us))
            hi = max(hi, tardis.from_micros(span.last_us + 1))
        return lo, hi
    assert span.first_us is not None
    assert span.last_us is not None
    return tardis.from_micros(span.first_us), tardis.from_micros(span.last_us + 1)


async def _ensure_partitions(conn: asyncpg.Connection, spans: dict[tuple[str, str], _Span]) -> None:
    """Monthly partitions for the imported months, so history does not pile up in DEFAULT."""
    firsts = [s.first_us for s in spans.values() if s.first_us is not None]
    lasts = [s.last_us for s in spans.values() if s.last_us is not None]
    if not firsts:
        return
    start, months = _months(tardis.from_micros(min(firsts)), tardis.from_micros(max(lasts)))
    for table in ("market_liquidations", "venue_liquidations"):
        await conn.execute(
            "SELECT collector_ensure_monthly_partitions($1::regclass, $2, $3)", table, start, months
        )
