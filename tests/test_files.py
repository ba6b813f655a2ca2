"""`collector export` and `collector import --format tardis` against real Postgres: exact Tardis
files (bytes, names, sides, microseconds), exact CSV, Parquet read back to the exact Decimals,
the Tardis round trip storing each row once with its coverage, and malformed lines reported."""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.parquet as pq
import pytest

from collector.config import WriterConfig
from collector.files import tardis
from collector.files.export import ExportRequest, Format, export
from collector.files.importer import BadLine, import_file
from collector.metrics import Metrics
from collector.model import MarketLiquidation
from collector.sink.writer import Writer
from collector.sources.binance_parse import Source, parse_force_order
from collector.venues import VenueLiquidation
from tests.factories import BYBIT_RECEIVED, bybit_liquidation, okx_liquidations, um_event

FAST = WriterConfig(queue_max=1000, batch_max_rows=100, batch_max_age_s=0.01,
                    retry_initial_s=0.01, retry_max_s=0.05, writers=1)  # fmt: skip
FROM = datetime(2026, 11, 18, tzinfo=UTC)
TO = datetime(2026, 11, 20, tzinfo=UTC)
FSTREAM = Source("fstream", "market", "!forceOrder@arr")
DSTREAM = Source("dstream", "", "!forceOrder@arr")
MS = timedelta(milliseconds=1)


def binance(
    event: dict[str, Any], received_at: datetime, source: Source = FSTREAM
) -> MarketLiquidation:
    return parse_force_order(event, source=source, received_at=received_at,
                             contract_sizes={"BTCUSD_PERP": D(100)})  # fmt: skip


def um_at(ms: int, **kwargs: Any) -> dict[str, Any]:
    return um_event(trade_time_ms=ms, **kwargs)


def rows() -> dict[str, MarketLiquidation | VenueLiquidation]:
    """One liquidation of each kind: Binance USD-M (a long: SELL; o.p differs from o.ap),
    USD-M on the next day, an EXPIRED USD-M event, COIN-M (a short: BUY), Bybit (a long:
    `Buy`), OKX (a short: `buy`)."""
    expired = um_at(1_795_000_000_500, qty="0.002", price="9900", avg_price="9900")
    expired["o"]["X"] = "EXPIRED"
    return {
        "um": binance(um_at(1_795_000_000_000, qty="0.014", price="9910.50", avg_price="9911"),
                      datetime(2026, 11, 18, 11, 6, 40, 250123, tzinfo=UTC)),
        "um_next_day": binance(
            um_at(1_795_100_000_000, symbol="ETHUSDT", side="BUY", qty="1.500",
                  price="3000.10", avg_price="3000.10"),
            datetime(2026, 11, 19, 14, 53, 20, 500000, tzinfo=UTC)),
        "um_expired": binance(expired, datetime(2026, 11, 18, 11, 6, 40, 600000, tzinfo=UTC)),
        "cm": binance(
            um_at(1_795_000_001_000, symbol="BTCUSD_PERP", side="BUY", qty="3",
                  price="97000.1", avg_price="97000.1", st=2),
            datetime(2026, 11, 18, 11, 6, 41, 7, tzinfo=UTC), DSTREAM),
        "bybit": bybit_liquidation(),
        "okx": okx_liquidations(received_at=datetime(2026, 11, 18, 12, 0, 0, 120000,
                                                     tzinfo=UTC))[0],
    }  # fmt: skip


DAY1 = date(2026, 11, 18)
BYBIT_US = tardis.micros(BYBIT_RECEIVED)
TARDIS_FILES = {
    "binance-delivery_liquidations_2026-11-18_BTCUSD_PERP.csv.gz":
        "binance-delivery,BTCUSD_PERP,1795000001000000,1795000001000007,,buy,97000.1,3\n",
    "binance-futures_liquidations_2026-11-18_BTCUSDT.csv.gz":
        "binance-futures,BTCUSDT,1795000000000000,1795000000250123,,sell,9910.5,0.014\n",
    "bybit_liquidations_2026-11-18_ROSEUSDT.csv.gz":
        f"bybit,ROSEUSDT,1795003200329000,{BYBIT_US},,sell,0.04499,20000\n",
    "okex-swap_liquidations_2026-11-18_IOST-USDT-SWAP.csv.gz":
        "okex-swap,IOST-USDT-SWAP,1795003200010000,1795003200120000,,buy,0.007831,13\n",
    "binance-futures_liquidations_2026-11-19_ETHUSDT.csv.gz":
        "binance-futures,ETHUSDT,1795100000000000,1795100000500000,,buy,3000.1,1.5\n",
}  # fmt: skip


@pytest.fixture
async def writer(pg_dsn: str) -> AsyncIterator[Writer]:
    """A running one-lane writer on the test's database; stopped after the test."""
    w = Writer(lambda: asyncpg.connect(pg_dsn), FAST, Metrics())
    task = asyncio.create_task(w.run())
    yield w
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture
async def stored(writer: Writer) -> dict[str, MarketLiquidation | VenueLiquidation]:
    """The `rows()` stored through the real writer."""
    made = rows()
    for row in made.values():
        await writer.put(row)
    await writer.flush()
    return made


def contents(directory: Path) -> dict[str, str]:
    """Every file of `directory` by name, gunzipped and decoded; no leftover temp files."""
    names = sorted(p.name for p in directory.iterdir())
    assert not [n for n in names if n.startswith(".")]
    return {n: gzip.decompress((directory / n).read_bytes()).decode() for n in names}


async def test_tardis_export_writes_tardis_files_exactly(
    stored: dict[str, Any], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """One gzip file per exchange, symbol and UTC day, named as Tardis names downloads, with
    Tardis' header, microseconds, sides (buy: a short liquidated) and Tardis' price/amount
    fields (Binance o.p and o.z); the EXPIRED Binance event is left out, as Tardis does."""
    summaries = await export(pg, ExportRequest(FROM, TO, Format.TARDIS, tmp_path))

    header = tardis.HEADER + "\n"
    assert contents(tmp_path) == {name: header + line for name, line in TARDIS_FILES.items()}
    # The files are written in query order: day, exchange, symbol.
    assert [s.path.name for s in summaries] == list(TARDIS_FILES)
    for summary in summaries:
        data = summary.path.read_bytes()
        assert (summary.rows, summary.bytes) == (1, len(data))
        # Deterministic gzip: deflate, no flags (no file name), mtime 0, XFL 0, OS unknown.
        assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        assert str(summary) == f"{summary.path}\t1 rows\t{len(data)} bytes"


async def test_tardis_export_filters_and_the_unfilled_flag(
    stored: dict[str, Any], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """--venue and --symbol narrow the files; --include-unfilled adds the EXPIRED event."""
    request = ExportRequest(FROM, TO, Format.TARDIS, tmp_path / "a", symbols=("BTCUSDT",),
                            include_unfilled=True)  # fmt: skip
    await export(pg, request)
    assert contents(tmp_path / "a") == {
        "binance-futures_liquidations_2026-11-18_BTCUSDT.csv.gz": tardis.HEADER + "\n"
        "binance-futures,BTCUSDT,1795000000000000,1795000000250123,,sell,9910.5,0.014\n"
        "binance-futures,BTCUSDT,1795000000500000,1795000000600000,,sell,9900,0.002\n",
    }  # fmt: skip
    from collector.venues import Venue

    await export(pg, ExportRequest(FROM, TO, Format.TARDIS, tmp_path / "b", venue=Venue.OKX))
    assert list(contents(tmp_path / "b")) == [
        "okex-swap_liquidations_2026-11-18_IOST-USDT-SWAP.csv.gz"
    ]
    assert await export(pg, ExportRequest(TO, TO + MS, Format.TARDIS, tmp_path / "c")) == []


CSV_HEADER = (
    "venue,market,symbol,base_asset,liquidated_side,price,qty,notional_usd,trade_time,received_at"
)


def csv_text(*rows: list[str]) -> str:
    """The CSV export's text: the header, then `rows`."""
    return "".join(",".join(r) + "\n" for r in [CSV_HEADER.split(","), *rows])


async def test_csv_export_is_every_column_exactly(
    stored: dict[str, Any], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """One gzip file per venue and UTC day; decimals exactly as stored (scale kept), NULL
    empty, ISO-8601 UTC microsecond times; every Binance event (the view's rows)."""
    await export(pg, ExportRequest(FROM, TO, Format.CSV, tmp_path))
    t18, t19 = "2026-11-18T", "2026-11-19T"
    assert contents(tmp_path) == {
        "binance_liquidations_2026-11-18.csv.gz": csv_text(
            ["binance", "UM", "BTCUSDT", "", "LONG", "9911", "0.014", "138.754",
             t18 + "11:06:40.000000Z", t18 + "11:06:40.250123Z"],
            ["binance", "UM", "BTCUSDT", "", "LONG", "9900", "0.002", "19.800",
             t18 + "11:06:40.500000Z", t18 + "11:06:40.600000Z"],
            ["binance", "CM", "BTCUSD_PERP", "", "SHORT", "97000.1", "", "300",
             t18 + "11:06:41.000000Z", t18 + "11:06:41.000007Z"],
        ),
        "binance_liquidations_2026-11-19.csv.gz": csv_text(
            ["binance", "UM", "ETHUSDT", "", "SHORT", "3000.10", "1.500", "4500.15000",
             t19 + "14:53:20.000000Z", t19 + "14:53:20.500000Z"],
        ),
        "bybit_liquidations_2026-11-18.csv.gz": csv_text(
            ["bybit", "linear", "ROSEUSDT", "ROSE", "LONG", "0.04499", "20000", "899.80000",
             t18 + "12:00:00.329000Z", "2026-11-21T12:00:01.000000Z"],
        ),
        "okx_liquidations_2026-11-18.csv.gz": csv_text(
            ["okx", "SWAP", "IOST-USDT-SWAP", "IOST", "SHORT", "0.007831", "13000",
             "101.803000", t18 + "12:00:00.010000Z", t18 + "12:00:00.120000Z"],
        ),
    }  # fmt: skip


async def test_parquet_export_reads_back_to_the_exact_decimals(
    stored: dict[str, Any], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Parquet files hold DECIMAL(38, 18) columns that read back to the stored Decimals, and
    microsecond UTC timestamps."""
    summaries = await export(pg, ExportRequest(FROM, TO, Format.PARQUET, tmp_path))
    assert [s.path.name for s in summaries] == [
        "binance_liquidations_2026-11-18.parquet", "binance_liquidations_2026-11-19.parquet",
        "bybit_liquidations_2026-11-18.parquet", "okx_liquidations_2026-11-18.parquet",
    ]  # fmt: skip
    table = pq.read_table(tmp_path / "binance_liquidations_2026-11-18.parquet")
    assert str(table.schema.field("price").type) == "decimal128(38, 18)"
    assert str(table.schema.field("trade_time").type) == "timestamp[us, tz=UTC]"
    assert table.to_pylist() == [
        {"venue": "binance", "market": "UM", "symbol": "BTCUSDT", "base_asset": None,
         "liquidated_side": "LONG", "price": D(9911), "qty": D("0.014"),
         "notional_usd": D("138.754"),
         "trade_time": datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC),
         "received_at": datetime(2026, 11, 18, 11, 6, 40, 250123, tzinfo=UTC)},
        {"venue": "binance", "market": "UM", "symbol": "BTCUSDT", "base_asset": None,
         "liquidated_side": "LONG", "price": D(9900), "qty": D("0.002"),
         "notional_usd": D("19.8"),
         "trade_time": datetime(2026, 11, 18, 11, 6, 40, 500000, tzinfo=UTC),
         "received_at": datetime(2026, 11, 18, 11, 6, 40, 600000, tzinfo=UTC)},
        {"venue": "binance", "market": "CM", "symbol": "BTCUSD_PERP", "base_asset": None,
         "liquidated_side": "SHORT", "price": D("97000.1"), "qty": None,
         "notional_usd": D(300),
         "trade_time": datetime(2026, 11, 18, 11, 6, 41, tzinfo=UTC),
         "received_at": datetime(2026, 11, 18, 11, 6, 41, 7, tzinfo=UTC)},
    ]  # fmt: skip
    okx = pq.read_table(tmp_path / "okx_liquidations_2026-11-18.parquet").to_pylist()
    assert [(r["price"], r["qty"], r["notional_usd"]) for r in okx] == [
        (D("0.007831"), D(13000), D("101.803"))
    ]


async def test_parquet_export_refuses_a_value_it_cannot_hold_exactly(
    stored: dict[str, Any], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A price with 19 decimal places stops the export with a message and leaves no file of
    that day behind (files completed before stay)."""
    from collector.files.export import ExportError

    await pg.execute(
        "UPDATE venue_liquidations SET price = 0.0078310000000000001 WHERE venue = 'okx'"
    )
    with pytest.raises(ExportError, match=r"okx_liquidations_2026-11-18.parquet: a price value"):
        await export(pg, ExportRequest(FROM, TO, Format.PARQUET, tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # noqa: ASYNC240
        "binance_liquidations_2026-11-18.parquet", "binance_liquidations_2026-11-19.parquet",
        "bybit_liquidations_2026-11-18.parquet",
    ]  # fmt: skip


async def coverage(pg: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await pg.fetch(
        "SELECT venue, stream, repaired_from, repaired_to, source, rows FROM coverage_repairs "
        "ORDER BY venue, stream, repaired_from"
    )
    return [tuple(r) for r in rows]


def day(d: int) -> datetime:
    return datetime(2026, 11, d, tzinfo=UTC)


EXPECTED_COVERAGE = [
    ("binance", "btcusd_perp@forceOrder", day(18), day(19), "import:tardis", 1),
    ("binance", "btcusdt@forceOrder", day(18), day(19), "import:tardis", 1),
    ("binance", "ethusdt@forceOrder", day(19), day(20), "import:tardis", 1),
    ("bybit", "allLiquidation.ROSEUSDT", day(18), day(19), "import:tardis", 1),
    ("okx", "liquidation-orders:SWAP:IOST-USDT-SWAP", day(18), day(19), "import:tardis", 1),
]


async def test_tardis_round_trip_stores_each_row_once_and_records_coverage(
    stored: dict[str, Any], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Importing our own Tardis export finds every row already stored (Binance and OKX by the
    fields the line has, Bybit by its key); into an empty store it stores each row once (a
    second import adds nothing), the ledger covers each file's day for its symbol, and the
    imported rows export to the same bytes."""
    summaries = await export(pg, ExportRequest(FROM, TO, Format.TARDIS, tmp_path / "out"))
    files = [s.path for s in summaries]

    reports = [await import_file(pg, f) for f in files]
    assert [(r.lines, r.stored, r.known, r.bad) for r in reports] == [(1, 0, 1, [])] * 5
    assert await pg.fetchval("SELECT count(*) FROM liquidations") == 6

    await pg.execute("DELETE FROM market_liquidations; DELETE FROM venue_liquidations; "
                     "DELETE FROM coverage_repairs")  # fmt: skip
    reports = [await import_file(pg, f) for f in files]
    assert [(r.lines, r.stored, r.known) for r in reports] == [(1, 1, 0)] * 5
    reports = [await import_file(pg, f) for f in files]
    assert [(r.lines, r.stored, r.known) for r in reports] == [(1, 0, 1)] * 5
    assert await pg.fetchval("SELECT count(*) FROM liquidations") == 5
    assert await coverage(pg) == EXPECTED_COVERAGE
    gaps = await pg.fetch(
        "SELECT * FROM coverage_gaps('binance', ARRAY['btcusdt@forceOrder'], $1, $2)", FROM, TO
    )
    assert [tuple(g) for g in gaps] == [
        (day(18), day(19), True, ["import:tardis"]), (day(19), day(20), False, None),
    ]  # fmt: skip
    # One imported symbol's day is not the whole venue's: asked for all of OKX, nothing is
    # covered; asked for that symbol's stream, its day is repaired by the import.
    venue_wide = await pg.fetch("SELECT * FROM coverage_gaps('okx', NULL, $1, $2)", FROM, TO)
    assert [tuple(g) for g in venue_wide] == [(FROM, TO, False, None)]
    okx_symbol = await pg.fetch(
        "SELECT * FROM coverage_gaps('okx', ARRAY['liquidation-orders:SWAP:IOST-USDT-SWAP'], "
        "$1, $2)", day(18), day(19),
    )  # fmt: skip
    assert [tuple(g) for g in okx_symbol] == [(day(18), day(19), True, ["import:tardis"])]

    await export(pg, ExportRequest(FROM, TO, Format.TARDIS, tmp_path / "again"))
    assert contents(tmp_path / "again") == contents(tmp_path / "out")
    imported = await pg.fetchrow(
        "SELECT source_host, source_stream, status, price, avg_price, notional_usd, event_time, "
        "received_at FROM market_liquidations WHERE symbol = 'BTCUSD_PERP'"
    )
    assert dict(imported) == {
        "source_host": "import", "source_stream": "import:tardis", "status": "FILLED",
        "price": D("97000.1"), "avg_price": D("97000.1"), "notional_usd": None,
        "event_time": datetime(2026, 11, 18, 11, 6, 41, tzinfo=UTC),
        "received_at": datetime(2026, 11, 18, 11, 6, 41, 7, tzinfo=UTC),
    }  # fmt: skip


async def test_an_imported_bybit_row_has_the_live_key(
    writer: Writer, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A Bybit line gives the live parser's content key (every keyed field is in the line), so
    the row the stream stores later is the same row."""
    live = bybit_liquidation()
    path = tmp_path / "bybit_liquidations_2026-11-18_ROSEUSDT.csv"
    path.write_text(tardis.HEADER + "\n" + TARDIS_FILES[path.name + ".gz"])
    assert (await import_file(pg, path)).stored == 1
    assert await pg.fetchval("SELECT content_key FROM venue_liquidations") == live.content_key
    await writer.put(live)
    await writer.flush()
    assert await pg.fetchval("SELECT origin FROM venue_liquidations") == "import"
    assert await pg.fetchval("SELECT count(*) FROM venue_liquidations") == 1


BAD_FILE = (
    tardis.HEADER + "\n"
    "binance-futures,BTCUSDT,1795000000000000,1795000000250123,,sell,9910.5,0.014\n"
    "binance-futures,BTCUSDT,1795000000000000,1795000000250123,,sell,9910.5\n"
    "binance-futures,BTCUSDT,17950000000.5,1795000000250123,,sell,9910.5,0.014\n"
    "kraken,XBTUSD,1795000000000000,1795000000250123,,sell,9910.5,0.014\n"
    "bybit,ROSEUSDT,1795003200329000,1795003200400000,,long,0.04499,20000\n"
    "bybit,ROSEUSDT,1795003200329000,1795003200400000,,sell,-1,20000\n"
    "bybit,ROSEUSDT,1795003200329000,1795003200400000,,sell,0.04499,NaN\n"
    "okex-swap,IOST-USDT-SWAP,1795003200010000,1795003200120000,,buy,0.007831,13\n"
)


async def test_malformed_lines_are_reported_and_skipped(
    pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Each bad line is reported with its file and line number and skipped; the good lines
    are stored, and a file that is not a Tardis liquidations CSV changes nothing."""
    path = tmp_path / "mixed.csv.gz"
    path.write_bytes(gzip.compress(BAD_FILE.encode()))
    report = await import_file(pg, path)
    assert report.bad == [
        BadLine(path, 3, "expected 8 columns, got 7"),
        BadLine(path, 4, "expected microseconds since the epoch, got '17950000000.5' "
                         "(field 'timestamp')"),
        BadLine(path, 5, "unsupported exchange 'kraken' (field 'exchange')"),
        BadLine(path, 6, "expected buy or sell, got 'long' (field 'side')"),
        BadLine(path, 7, "expected a positive number, got '-1' (field 'price')"),
        BadLine(path, 8, "expected a positive number, got 'NaN' (field 'amount')"),
    ]  # fmt: skip
    assert (report.lines, report.stored, report.known) == (8, 2, 0)
    assert await pg.fetchval("SELECT count(*) FROM liquidations") == 2
    # Not named like a Tardis download: the span is from the first to the last line.
    assert await coverage(pg) == [
        ("binance", "btcusdt@forceOrder", datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC),
         datetime(2026, 11, 18, 11, 6, 40, 1, tzinfo=UTC), "import:tardis", 1),
        ("okx", "liquidation-orders:SWAP:IOST-USDT-SWAP",
         datetime(2026, 11, 18, 12, 0, 0, 10000, tzinfo=UTC),
         datetime(2026, 11, 18, 12, 0, 0, 10001, tzinfo=UTC), "import:tardis", 1),
    ]  # fmt: skip

    other = tmp_path / "trades.csv"
    other.write_text("exchange,symbol,timestamp,local_timestamp,id,side,price,amount,extra\n")
    report = await import_file(pg, other)
    assert [str(b) for b in report.bad] == [
        f"{other}:1: not a Tardis liquidations header: expected '{tardis.HEADER}'"
    ]
    missing = await import_file(pg, tmp_path / "missing.csv.gz")
    assert [b.line for b in missing.bad] == [1]


async def test_an_empty_named_day_is_covered_with_no_rows(
    pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A Tardis file of a day without liquidations records that day covered with 0 rows."""
    path = tmp_path / "okex-futures_liquidations_2026-11-18_BTC-USD-261225.csv.gz"
    path.write_bytes(gzip.compress((tardis.HEADER + "\n").encode()))
    report = await import_file(pg, path)
    assert (report.lines, report.stored, report.bad) == (0, 0, [])
    assert await coverage(pg) == [
        ("okx", "liquidation-orders:FUTURES:BTC-USD-261225", day(18), day(19), "import:tardis", 0)
    ]


async def run_cli(*args: str, dsn: str) -> tuple[int, str, str]:
    env = {**os.environ, "COLLECTOR_DATABASE_DSN": dsn, "COLLECTOR_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_commands_print_a_line_per_file_and_exit_as_documented(
    stored: dict[str, Any], pg_dsn: str, tmp_path: Path
) -> None:
    """`collector export` prints path, rows and bytes per file and exits 0; `collector
    import` prints a line per file, reports bad lines on stderr and exits 1 when any was
    skipped; bad arguments exit 2 with one message."""
    out_dir = tmp_path / "out"
    code, out, err = await run_cli("export", "--from", "2026-11-18", "--to", "2026-11-19",
                                   "--venue", "bybit", "--format", "tardis", "--out",
                                   str(out_dir), dsn=pg_dsn)  # fmt: skip
    path = out_dir / "bybit_liquidations_2026-11-18_ROSEUSDT.csv.gz"
    assert (code, out, err) == (0, f"{path}\t1 rows\t{path.stat().st_size} bytes\n", "")

    bad = tmp_path / "bad.csv"
    bad.write_text(tardis.HEADER + "\nbybit,ROSEUSDT,1,2,,up,1,1\n")
    code, out, err = await run_cli("import", "--format", "tardis", str(path), str(bad), dsn=pg_dsn)
    assert code == 1
    assert out == (f"{path}\t1 lines\t0 stored\t1 already stored\t0 malformed\n"
                   f"{bad}\t1 lines\t0 stored\t0 already stored\t1 malformed\n")  # fmt: skip
    assert err == f"{bad}:2: expected buy or sell, got 'up' (field 'side')\n"

    code, out, err = await run_cli("export", "--from", "2026-11-19", "--to", "2026-11-18",
                                   "--format", "csv", "--out", str(out_dir),
                                   dsn=pg_dsn)  # fmt: skip
    assert (code, out, err) == (
        2,
        "",
        "collector export: --to (2026-11-18) must be after --from (2026-11-19)\n",
    )
    code, out, err = await run_cli("export", "--from", "yesterday", "--to", "2026-11-18",
                                   "--format", "csv", "--out", str(out_dir),
                                   dsn=pg_dsn)  # fmt: skip
    assert (code, err) == (
        2,
        "collector export: --from: not an ISO-8601 date or time: 'yesterday'\n",
    )


async def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path: Path) -> None:
    """With pyarrow not importable, `--format parquet` names the extra to install and exits 2
    before touching the database."""
    code = (
        "import sys; sys.modules['pyarrow'] = None; from collector.cli import main; "
        f"sys.exit(main(['export', '--from', '2026-11-18', '--to', '2026-11-19', "
        f"'--format', 'parquet', '--out', {str(tmp_path)!r}]))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code,
        env={**os.environ, "COLLECTOR_DATABASE_DSN": "postgresql://x@127.0.0.1:1/none"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out, err.decode()) == (
        2, b"", "collector export: --format parquet needs pyarrow, which is not installed: "
        "pip install 'collector[parquet]'\n",
    )  # fmt: skip
