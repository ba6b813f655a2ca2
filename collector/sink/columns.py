"""How model rows map to the tables' columns, by name, and the statements that write them.

A column takes the model field of its own name (`operator.attrgetter`), so reordering the
fields of `model.MarketLiquidation` moves nothing; a column without a field of its name fails
at import. SQL is built here from these module constants only, never from input.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import orjson

from collector.model import DeadLetter, MarketLiquidation, RepairRecord, SessionRecord
from collector.venues import VenueLiquidation

# The staging table's columns, in COPY order; each is the `MarketLiquidation` field of its name.
# Numerics and the raw JSON travel as text and are cast by Postgres: asyncpg's binary numeric
# and jsonb encoders cost about three times the client CPU of text (measured: 8.8 vs 3.0 us per
# row), and the server parses text in C.
ML_STAGING: tuple[tuple[str, str], ...] = (
    ("trade_time", "timestamptz"),
    ("content_key", "bytea"),
    ("event_time", "timestamptz"),
    ("symbol", "text"),
    ("pair", "text"),
    ("symbol_type", "smallint"),
    ("market", "text"),
    ("side", "text"),
    ("liquidated_side", "text"),
    ("order_type", "text"),
    ("time_in_force", "text"),
    ("status", "text"),
    ("orig_qty", "numeric"),
    ("price", "numeric"),
    ("avg_price", "numeric"),
    ("last_filled_qty", "numeric"),
    ("filled_qty", "numeric"),
    ("notional_usd", "numeric"),
    ("received_at", "timestamptz"),
    ("source_host", "text"),
    ("source_route", "text"),
    ("source_stream", "text"),
    ("raw", "jsonb"),
)
ML_COLUMNS = tuple(name for name, _ in ML_STAGING)
# Model fields that are no column: the monotonic receive time only feeds a latency histogram.
ML_NOT_STORED = frozenset({"received_monotonic"})
_unknown = set(ML_COLUMNS) - set(MarketLiquidation._fields)
if _unknown:  # pragma: no cover  (tests/test_writer.py pins the mapping)
    raise ImportError(f"market_liquidations columns without a model field: {sorted(_unknown)}")

_AS_TEXT = {"numeric", "jsonb"}
STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ml_staging ("
    + ", ".join(f"{n} {'text' if t in _AS_TEXT else t}" for n, t in ML_STAGING)
    + ") ON COMMIT DELETE ROWS"
)
_CASTS = [f"{n}::{t}" if t in _AS_TEXT else n for n, t in ML_STAGING]
INSERT_ML = (
    f"INSERT INTO market_liquidations ({', '.join(ML_COLUMNS)}) "
    f"SELECT {', '.join(_CASTS)} FROM ml_staging ON CONFLICT DO NOTHING"
)
# The same insert from one JSON document (a list of rows, each a list in `ML_STAGING` order), in
# one statement: a batch of market rows alone commits in one round trip (autocommit), where
# BEGIN, COPY, INSERT and COMMIT take four. One text parameter, not one array per column:
# asyncpg checks every array element against three ABCs (43 Python-level isinstance calls a
# row), and orjson writes the document in C. Measured over 300 batches of 60 rows
# (client + backend CPU per row): arrays 43 + 60 us, this 19 + 60 us, COPY 63 + 70 us.
# The content key travels as hex; the raw frame is embedded as JSON (it parsed as JSON).
INSERT_ML_JSON = (
    f"INSERT INTO market_liquidations ({', '.join(ML_COLUMNS)}) SELECT "
    + ", ".join(
        f"decode(r->>{i}, 'hex')" if t == "bytea" else f"r->{i}" if t == "jsonb" else
        f"(r->>{i})::{t}"
        for i, (_, t) in enumerate(ML_STAGING)
    )
    + " FROM jsonb_array_elements($1::text::jsonb) AS r ON CONFLICT DO NOTHING"
)  # fmt: skip
INSERT_ML_ONE = (
    f"INSERT INTO market_liquidations ({', '.join(ML_COLUMNS)}) VALUES ("
    + ", ".join(
        f"${i + 1}::text::{t}" if t in _AS_TEXT else f"${i + 1}"
        for i, (_, t) in enumerate(ML_STAGING)
    )
    + ") ON CONFLICT DO NOTHING"
)

DL_COLUMNS = ("received_at", "source", "reason", "detail", "raw", "kept")

# The ledger's upsert: a later snapshot of a session never erases what an earlier one knew
# (`sink.batch.merge` applies the same rules inside one batch).
SESSION_COLUMNS = (
    "session_id", "connection", "host", "route", "url", "streams", "opened_at",
    "subscribed_at", "first_event_at", "last_event_at", "last_alive_at", "closed_at",
    "close_reason", "events_received", "venue",
)  # fmt: skip
UPSERT_SESSION = f"""
INSERT INTO ws_sessions ({", ".join(SESSION_COLUMNS)})
VALUES ({", ".join(f"${i + 1}" for i in range(len(SESSION_COLUMNS)))})
ON CONFLICT (session_id) DO UPDATE SET
    -- Streams only grow (a venue session subscribes after it opens, and adds new listings):
    -- the union, so snapshots committed out of order (two writer lanes) lose none.
    streams         = CASE WHEN ws_sessions.streams @> EXCLUDED.streams THEN ws_sessions.streams
                           ELSE ARRAY(SELECT DISTINCT s FROM unnest(ws_sessions.streams
                                      || EXCLUDED.streams) AS s ORDER BY s) END,
    subscribed_at   = coalesce(ws_sessions.subscribed_at, EXCLUDED.subscribed_at),
    first_event_at  = coalesce(ws_sessions.first_event_at, EXCLUDED.first_event_at),
    last_event_at   = greatest(ws_sessions.last_event_at, EXCLUDED.last_event_at),
    last_alive_at   = greatest(ws_sessions.last_alive_at, EXCLUDED.last_alive_at),
    closed_at       = coalesce(ws_sessions.closed_at, EXCLUDED.closed_at),
    close_reason    = coalesce(ws_sessions.close_reason, EXCLUDED.close_reason),
    events_received = greatest(ws_sessions.events_received, EXCLUDED.events_received)
"""

_ml_values = operator.attrgetter(*ML_COLUMNS)
# Where the Decimals are (the raw JSON is text already).
_ML_NUMERIC_AT = tuple(i for i, (_, t) in enumerate(ML_STAGING) if t == "numeric")
_session_values = operator.attrgetter(*SESSION_COLUMNS)
_dl_values = operator.attrgetter(*DL_COLUMNS)


def ml_record(row: MarketLiquidation) -> list[Any]:
    """The row's values in `ML_STAGING` order, taken by name; numerics as text.

    (The hot path: 0.9 us per row, against 0.7 us for the slices by position it replaces.)
    """
    values = list(_ml_values(row))
    for i in _ML_NUMERIC_AT:
        value = values[i]
        if value is not None:
            values[i] = str(value)
    return values


_KEY_AT, _RAW_AT = ML_COLUMNS.index("content_key"), ML_COLUMNS.index("raw")


def ml_json(rows: Iterable[MarketLiquidation]) -> str:
    """The document `INSERT_ML_JSON` reads: each row's `ml_record`, its content key as hex and
    its raw frame embedded as the JSON it is (a row's raw is a frame that parsed as one JSON
    value, `binance_parse`; one that PostgreSQL still refuses fails the document, a data error:
    the batch is then written row by row and that row dead-lettered). Times are UTC (a naive
    one is taken as UTC)."""
    records = []
    for row in rows:
        values = ml_record(row)
        values[_KEY_AT] = row.content_key.hex()
        values[_RAW_AT] = orjson.Fragment(row.raw)
        records.append(values)
    return orjson.dumps(records, option=orjson.OPT_NAIVE_UTC).decode()


def session_args(s: SessionRecord) -> tuple[Any, ...]:
    """The snapshot's values in `SESSION_COLUMNS` order (streams as a list: a text[])."""
    values = _session_values(s)
    return tuple(list(v) if isinstance(v, tuple) else v for v in values)


def _nul_free(text: str) -> str:
    """Postgres text cannot hold NUL; a dead letter's labels may quote input that does."""
    return text.replace("\x00", "\\u0000")


def dead_letter_record(d: DeadLetter) -> tuple[Any, ...]:
    """The dead letter's values in `DL_COLUMNS` order, taken by name; text without NUL."""
    return tuple(_nul_free(v) if isinstance(v, str) else v for v in _dl_values(d))


# -- other venues' rows (venue_liquidations, migration 0008) ---------------------------------------

# The staging table's columns, in COPY order. Each is the `VenueLiquidation` field of its name,
# except `origin` (the field `source`: ws or rest) and `wire` (the pairs as a JSON object).
# Numerics and JSON travel as text, as for Binance's rows.
VL_STAGING: tuple[tuple[str, str], ...] = (
    ("trade_time", "timestamptz"),
    ("venue", "text"),
    ("content_key", "bytea"),
    ("market", "text"),
    ("symbol", "text"),
    ("base_asset", "text"),
    ("liquidated_side", "text"),
    ("price", "numeric"),
    ("qty", "numeric"),
    ("notional_usd", "numeric"),
    ("received_at", "timestamptz"),
    ("wire", "jsonb"),
    ("raw", "jsonb"),
    ("origin", "text"),
)
VL_COLUMNS = tuple(name for name, _ in VL_STAGING)
# Columns whose value is not the model field of the same name.
VL_RENAMED = {"origin": "source"}
_vl_fields = set(VenueLiquidation.__dataclass_fields__)
_vl_unknown = {VL_RENAMED.get(n, n) for n in VL_COLUMNS} - _vl_fields
if _vl_unknown:  # pragma: no cover  (tests/test_venue_store.py pins the mapping)
    raise ImportError(f"venue_liquidations columns without a model field: {sorted(_vl_unknown)}")

VL_STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS vl_staging ("
    + ", ".join(f"{n} {'text' if t in _AS_TEXT else t}" for n, t in VL_STAGING)
    + ") ON COMMIT DELETE ROWS"
)
# What a new writer connection runs once: both staging tables, in one round trip.
CONNECTION_DDL = f"{STAGING_DDL}; {VL_STAGING_DDL}"
_VL_CASTS = [f"{n}::{t}" if t in _AS_TEXT else n for n, t in VL_STAGING]
INSERT_VL = (
    f"INSERT INTO venue_liquidations ({', '.join(VL_COLUMNS)}) "
    f"SELECT {', '.join(_VL_CASTS)} FROM vl_staging ON CONFLICT DO NOTHING"
)
INSERT_VL_ONE = (
    f"INSERT INTO venue_liquidations ({', '.join(VL_COLUMNS)}) VALUES ("
    + ", ".join(
        f"${i + 1}::text::{t}" if t in _AS_TEXT else f"${i + 1}"
        for i, (_, t) in enumerate(VL_STAGING)
    )
    + ") ON CONFLICT DO NOTHING"
)
_vl_values = operator.attrgetter(*(VL_RENAMED.get(n, n) for n in VL_COLUMNS))
_VL_NUMERIC_AT = tuple(i for i, (_, t) in enumerate(VL_STAGING) if t == "numeric")
_VL_WIRE_AT = VL_COLUMNS.index("wire")


def vl_record(row: VenueLiquidation) -> list[Any]:
    """The row's values in `VL_STAGING` order, taken by name; numerics as text, the wire
    fields as a JSON object of their texts (the raw frame is text already)."""
    values = list(_vl_values(row))
    for i in _VL_NUMERIC_AT:
        value = values[i]
        if value is not None:
            values[i] = str(value)
    values[_VL_WIRE_AT] = orjson.dumps(dict(row.wire)).decode()
    return values


# The ledger's repairs: a record replayed (from a spill file) or put twice is one row.
REPAIR_COLUMNS = (
    "venue", "stream", "repaired_from", "repaired_to", "source", "rows", "recorded_at",
)  # fmt: skip
INSERT_REPAIR = (
    f"INSERT INTO coverage_repairs ({', '.join(REPAIR_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(REPAIR_COLUMNS)))}) "
    "ON CONFLICT (venue, stream, repaired_from, repaired_to, source) DO NOTHING"
)
_repair_values = operator.attrgetter(*REPAIR_COLUMNS)


def repair_args(r: RepairRecord) -> tuple[Any, ...]:
    """The repair's values in `REPAIR_COLUMNS` order, taken by name."""
    values: tuple[Any, ...] = _repair_values(r)
    return values


# A transaction writing liquidations takes the feed lock before its first write (COPY into a
# staging table is a write): the live feed reads below the oldest holder (migration 0015). An
# INSERT alone takes it by trigger; in a transaction, take it first, outside any savepoint.
FEED_LOCK = "SELECT liquidation_feed_lock()"
