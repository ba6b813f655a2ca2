"""Every Postgres query in the provisioned Grafana dashboards, run against the real migrated schema.

Grafana's template variables and PostgreSQL macros are expanded the way Grafana expands them
(frontend: `$var`, `${var}`, `$__interval`; backend: pkg/tsdb/grafana-postgresql-datasource/
macros.go), then each query runs on a database seeded with a few known rows, including an interval
no collector session covered, and its result is compared with exact expected values.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.db.rollup import pending_minutes, refresh_pending
from collector.db.venue_rollup import refresh_venue_pending, venue_pending_minutes

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
PG_UID = "collector-postgres"
PROM_UID = "collector-prometheus"
MARKET = "collector-market-liquidations"
ACCOUNT = "collector-account-liquidations"
D = Decimal

# -- Grafana's expansion --------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One Postgres query of a dashboard: a panel target or a template variable's query."""

    dashboard: str
    title: str
    sql: str
    format: str


@dataclass(frozen=True)
class View:
    """What Grafana would substitute: the time range, `$__interval` and variable values."""

    time_from: datetime
    time_to: datetime
    interval: str
    values: Mapping[str, str | Sequence[str]] = field(default_factory=dict)


def load(path: Path) -> dict[str, Any]:
    """A dashboard document."""
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def all_dashboards() -> dict[str, dict[str, Any]]:
    """Every provisioned dashboard, by uid."""
    return {d["uid"]: d for d in map(load, sorted(DASHBOARDS.glob("*.json")))}


def panels(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def postgres_queries(doc: Mapping[str, Any]) -> list[Query]:
    """The Postgres targets of every panel and the Postgres template-variable queries."""
    found: list[Query] = []
    for panel in panels(doc):
        for target in panel.get("targets", []):
            if (target.get("datasource") or panel["datasource"])["uid"] == PG_UID:
                found.append(Query(doc["uid"], panel["title"], target["rawSql"], target["format"]))
    for var in doc["templating"]["list"]:
        if var["type"] == "query" and var["datasource"]["uid"] == PG_UID:
            found.append(Query(doc["uid"], f"variable {var['name']}", var["query"], "table"))
    return found


def rfc3339(at: datetime) -> str:
    """Go's time.RFC3339Nano in UTC, as Grafana formats the range."""
    at = at.astimezone(UTC)
    fraction = f".{at.microsecond:06d}".rstrip("0") if at.microsecond else ""
    return at.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def interval_s(text: str) -> float:
    """Grafana's gtime.ParseInterval for the forms dashboards use (`30s`, `5m`, `1h`, `1d`)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text.strip().strip("'"))
    if m is None:
        raise ValueError(f"unparseable interval {text!r}")
    return int(m[1]) * _UNITS_S[m[2]]


def go_number(x: float) -> str:
    """A float64 printed by Go's %v (integers without a decimal point)."""
    return str(int(x)) if x == int(x) else repr(x)


def interpolate(sql: str, view: View, variables: Mapping[str, Mapping[str, Any]]) -> str:
    """Grafana frontend: template variables (quoted lists for multi/all ones) and $__interval."""
    builtins = {
        "__interval": view.interval,
        "__interval_ms": go_number(interval_s(view.interval) * 1000),
    }

    def value(m: re.Match[str]) -> str:
        name = m[1] or m[2]
        if name in builtins:
            return builtins[name]
        if name not in variables:
            return m[0]  # a backend macro such as $__timeFrom, or a typo caught below
        raw = view.values[name]
        definition = variables[name]
        if definition.get("multi") or definition.get("includeAll"):
            items = [raw] if isinstance(raw, str) else list(raw)
            return ",".join("'" + v.replace("'", "''") + "'" for v in items)
        assert isinstance(raw, str), f"${name} is single-valued"
        return raw

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, sql)


def expand_macros(sql: str, view: View) -> str:
    """Grafana backend: the PostgreSQL macro engine (non-TimescaleDB)."""
    start, end = rfc3339(view.time_from), rfc3339(view.time_to)

    def macro(m: re.Match[str]) -> str:
        name, args = m[1], [a.strip() for a in m[2].split(",")]
        # Grafana: "$__timeGroup(...)," is the pre-5.3 spelling of $__timeGroupAlias.
        if name == "__timeGroup" and sql[m.end() : m.end() + 1] == ",":
            name = "__timeGroupAlias"
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{start}' AND '{end}'"
        if name == "__timeFrom":
            return f"'{start}'"
        if name == "__timeTo":
            return f"'{end}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            secs = go_number(interval_s(args[1]))
            group = f"floor(extract(epoch from {args[0]})/{secs})*{secs}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__unixEpochFilter":
            lo, hi = int(view.time_from.timestamp()), int(view.time_to.timestamp())
            return f"{args[0]} >= {lo} AND {args[0]} <= {hi}"
        raise AssertionError(f"macro ${name} is not expanded by this test; add it")

    return re.sub(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)", macro, sql)


def expand(query: Query, view: View, doc: Mapping[str, Any]) -> str:
    """The SQL Grafana would send to Postgres for `query` under `view`."""
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    sql = expand_macros(interpolate(query.sql, view, variables), view)
    assert "$" not in sql, f"{query.title}: unexpanded {sql[sql.index('$') :][:40]!r}"
    return sql


async def run_all(
    conn: asyncpg.Connection, uid: str, view: View
) -> dict[str, list[dict[str, Any]]]:
    """Every Postgres query of dashboard `uid`, by title, as lists of row dicts."""
    doc = all_dashboards()[uid]
    results: dict[str, list[dict[str, Any]]] = {}
    for query in postgres_queries(doc):
        sql = expand(query, view, doc)
        try:
            rows = [dict(r) for r in await conn.fetch(sql)]
        except asyncpg.PostgresError as exc:
            raise AssertionError(f"{query.title}: {exc}\n{sql}") from exc
        if query.format == "time_series":
            assert rows, f"{query.title}: no rows"
            assert "time" in rows[0], f"{query.title}: a time series needs a 'time' column"
            times = [r["time"] for r in rows]
            assert times == sorted(times), f"{query.title}: Grafana needs rows ordered by time"
        results[query.title] = rows
    return results


# -- seed data ------------------------------------------------------------------------------------

T = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # the main view: 10:00-12:00 UTC, 5-minute buckets
GAP = (T + timedelta(minutes=40), T + timedelta(minutes=80))  # no all-market session 10:40-11:20
VALUES = {"market": ["UM", "CM"], "bucket": "5m", "top": "10", "symbol": "BTCUSDT",
          "venue": ["binance", "bybit", "okx"]}  # fmt: skip
MAIN = View(T, T + timedelta(hours=2), "1m", VALUES)
QUARTER = View(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC), "12h",
               {**VALUES, "bucket": "auto"})  # fmt: skip

_ML = """
INSERT INTO market_liquidations (trade_time, content_key, event_time, symbol, market, side,
    liquidated_side, status, orig_qty, price, avg_price, filled_qty, notional_usd, received_at,
    source_host, source_route, source_stream, raw)
VALUES ($1, $2, $1, $3, $4, $5, $6, 'FILLED', $7, $8, $8, $7, $9, $1, 'fstream', 'market',
        '!forceOrder@arr', '{}')
"""
# (minutes after T, symbol, market, liquidated side, filled qty, avg price, notional USD)
MARKET_ROWS = [
    (1 + 10 / 60, "BTCUSDT", "UM", "LONG", "0.5", "60000", "30000"),
    (1 + 40 / 60, "BTCUSDT", "UM", "SHORT", "0.1", "60100", "6010"),
    (7, "ETHUSDT", "UM", "LONG", "10", "3000.5", "30005"),
    (90, "BTCUSD_PERP", "CM", "LONG", "20", "59500", "2000"),
    (91, "ETHUSD_PERP", "CM", "SHORT", "5", "3010", None),  # contract size not known yet
    (105, "BTCUSDT", "UM", "LONG", "2", "59000", "118000"),
    (-30, "BTCUSDT", "UM", "LONG", "1", "61000", "61000"),  # before the main view
]


async def seed_market(conn: asyncpg.Connection) -> None:
    """Liquidations, symbols and websocket sessions around one morning."""
    for minutes, symbol, market, liquidated, qty, price, notional in MARKET_ROWS:
        side = "SELL" if liquidated == "LONG" else "BUY"  # a SELL force order closes a long
        await conn.execute(
            _ML, at(minutes), uuid.uuid4().bytes, symbol, market, side, liquidated, D(qty),
            D(price), None if notional is None else D(notional),
        )  # fmt: skip
    await conn.executemany(
        "INSERT INTO symbols (market, symbol, base_asset, contract_size, updated_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        [("UM", "BTCUSDT", "BTC", None, T), ("UM", "ETHUSDT", "ETH", None, T),
         ("CM", "BTCUSD_PERP", "BTC", D(100), T), ("CM", "ETHUSD_PERP", "ETH", D(10), T)],
    )  # fmt: skip
    sessions = [
        ("fstream/market#0", ["!forceOrder@arr"], T - timedelta(hours=1), GAP[0], GAP[0]),
        ("fstream/market#1", ["btcusdt@forceOrder"], GAP[0], at(60), at(60)),
        ("fstream/market#0", ["!forceOrder@arr"], GAP[1], at(150), None),
    ]  # fmt: skip
    for connection, streams, opened, alive, closed in sessions:
        await conn.execute(
            "INSERT INTO ws_sessions (session_id, connection, host, route, url, streams, opened_at,"
            " last_alive_at, closed_at, close_reason, events_received)"
            " VALUES ($1, $2, 'fstream', 'market', 'wss://example', $3, $4, $5, $6, $7, 3)",
            uuid.uuid4(), connection, streams, opened, alive, closed,
            None if closed is None else "rotation",
        )  # fmt: skip


def buckets(view: View, step: timedelta) -> list[datetime]:
    """The bucket starts of `view` at `step` (the view starts on a bucket boundary)."""
    n = int((view.time_to - view.time_from) / step)
    return [view.time_from + i * step for i in range(n)]


def is_gap(bucket: datetime, gap: tuple[datetime, datetime] = GAP) -> bool:
    """True when the 5-minute bucket lies inside the uncovered interval."""
    return gap[0] <= bucket and bucket + timedelta(minutes=5) <= gap[1]


def at(minutes: float) -> datetime:
    """T plus `minutes`."""
    return T + timedelta(minutes=minutes)


def series(
    view: View,
    columns: Sequence[str],
    values: Mapping[datetime, Mapping[str, Decimal]],
    gap: tuple[datetime, datetime] = GAP,
) -> list[dict[str, Any]]:
    """Expected wide rows: 0 in covered buckets, None (no data) in uncovered ones."""
    rows = []
    for b in buckets(view, timedelta(minutes=5)):
        row: dict[str, Any] = {"time": b}
        for c in columns:
            row[c] = None if is_gap(b, gap) else values.get(b, {}).get(c, D(0))
        rows.append(row)
    return rows


def long_series(
    view: View, metrics: Sequence[str], values: Mapping[tuple[datetime, str], Decimal]
) -> dict[tuple[datetime, str], Decimal | None]:
    """Expected long-format rows (time, metric) -> value, None in uncovered buckets."""
    return {
        (b, m): None if is_gap(b) else values.get((b, m), D(0))
        for b in buckets(view, timedelta(minutes=5))
        for m in metrics
    }


def as_long(rows: list[dict[str, Any]]) -> dict[tuple[datetime, str], Decimal | None]:
    """Long-format result rows keyed by (time, metric)."""
    assert all(set(r) == {"time", "metric", "value"} for r in rows)
    keyed = {(r["time"], r["metric"]): r["value"] for r in rows}
    assert len(keyed) == len(rows), "one row per time and metric"
    return keyed


def band(text: str) -> str:
    """A heatmap price band's name: zero-padded to 24 characters, so names sort as numbers."""
    return text.rjust(24, "0")


def check_market_main(r: Mapping[str, list[dict[str, Any]]]) -> None:
    """The exact answers of every market panel over the main view."""
    assert r["Liquidated in range"] == [{
        "Longs liquidated": D("180005"), "Shorts liquidated": D("6010"),
        "Liquidation events": D(6), "Events with unknown notional": D(1),
    }]  # fmt: skip
    assert r["Coverage of range"] == [{"Covered": pytest.approx(80 / 120)}]
    assert r["Longs vs shorts liquidated (USD per bucket)"] == series(
        MAIN, ["Longs liquidated", "Shorts liquidated"],
        {at(0): {"Longs liquidated": D("30000"), "Shorts liquidated": D("6010")},
         at(5): {"Longs liquidated": D("30005")},
         at(90): {"Longs liquidated": D("2000")},
         at(105): {"Longs liquidated": D("118000")}},
    )  # fmt: skip
    assert r["USDⓈ-M vs COIN-M (USD per bucket)"] == series(
        MAIN, ["USDⓈ-M longs", "USDⓈ-M shorts", "COIN-M longs", "COIN-M shorts"],
        {at(0): {"USDⓈ-M longs": D("30000"), "USDⓈ-M shorts": D("6010")},
         at(5): {"USDⓈ-M longs": D("30005")},
         at(90): {"COIN-M longs": D("2000")},
         at(105): {"USDⓈ-M longs": D("118000")}},
    )  # fmt: skip
    assert as_long(r["By base asset (top $top, USD per bucket)"]) == long_series(
        MAIN, ["BTC longs", "BTC shorts", "ETH longs", "ETH shorts"],
        {(at(0), "BTC longs"): D("30000"), (at(0), "BTC shorts"): D("6010"),
         (at(5), "ETH longs"): D("30005"), (at(90), "BTC longs"): D("2000"),
         (at(105), "BTC longs"): D("118000")},
    )  # fmt: skip
    symbols = ["BTCUSDT", "ETHUSDT", "BTCUSD_PERP", "ETHUSD_PERP"]
    assert as_long(r["By symbol (top $top, USD per bucket)"]) == long_series(
        MAIN, [f"{s} {side}" for s in symbols for side in ("longs", "shorts")],
        {(at(0), "BTCUSDT longs"): D("30000"), (at(0), "BTCUSDT shorts"): D("6010"),
         (at(5), "ETHUSDT longs"): D("30005"), (at(90), "BTCUSD_PERP longs"): D("2000"),
         (at(105), "BTCUSDT longs"): D("118000")},
    )  # fmt: skip
    assert [tuple(row.values()) for row in r["Top symbols"]] == [
        ("BTCUSDT", "UM", "BTC", D("148000"), D("6010"), D("154010"), D(3), D("118000"), D(0)),
        ("ETHUSDT", "UM", "ETH", D("30005"), D(0), D("30005"), D(1), D("30005"), D(0)),
        ("BTCUSD_PERP", "CM", "BTC", D("2000"), D(0), D("2000"), D(1), D("2000"), D(0)),
        ("ETHUSD_PERP", "CM", "ETH", D(0), D(0), D(0), D(1), None, D(1)),
    ]
    largest = r["Largest liquidations"]
    assert [(x["Time"], x["Symbol"], x["Liquidated"], x["Order side"], x["Notional USD"])
            for x in largest] == [
        (at(105), "BTCUSDT", "LONG", "SELL", D("118000")),
        (at(7), "ETHUSDT", "LONG", "SELL", D("30005")),
        (at(1 + 10 / 60), "BTCUSDT", "LONG", "SELL", D("30000")),
        (at(1 + 40 / 60), "BTCUSDT", "SHORT", "BUY", D("6010")),
        (at(90), "BTCUSD_PERP", "LONG", "SELL", D("2000")),
    ]  # fmt: skip
    # The symbol's own stream covered 10:40-11:00 of the all-market gap.
    assert r["$symbol: longs vs shorts (USD per bucket)"] == series(
        MAIN, ["Longs liquidated", "Shorts liquidated"],
        {at(0): {"Longs liquidated": D("30000"), "Shorts liquidated": D("6010")},
         at(105): {"Longs liquidated": D("118000")}},
        gap=(at(60), GAP[1]),
    )  # fmt: skip
    epoch = T.timestamp()
    assert r["$symbol: liquidated USD by price"] == [  # 1-minute buckets, 10-USD price bands
        {"time": epoch + 60, "metric": band("60000"), "value": D("30000")},
        {"time": epoch + 60, "metric": band("60100"), "value": D("6010")},
        {"time": epoch + 105 * 60, "metric": band("59000"), "value": D("118000")},
    ]
    assert r["Covered share of each bucket"] == [
        {"time": b, "All-market stream covered": 0.0 if is_gap(b) else 1.0}
        for b in buckets(MAIN, timedelta(minutes=5))
    ]
    assert r["Gaps (no collector session)"] == [{"From": GAP[0], "To": GAP[1], "Duration": D(2400)}]
    assert [(s["Connection"], s["Open"], s["Streams"], s["Close reason"])
            for s in r["Websocket sessions"]] == [
        ("fstream/market#0", True, "!forceOrder@arr", ""),
        ("fstream/market#1", False, "btcusdt@forceOrder", "rotation"),
        ("fstream/market#0", False, "!forceOrder@arr", "rotation"),
    ]  # fmt: skip
    assert r["variable symbol"] == [
        {"symbol": s} for s in ("BTCUSDT", "ETHUSDT", "BTCUSD_PERP", "ETHUSD_PERP")
    ]


# -- by exchange (the liquidations view, the per-venue ledger) -------------------------------------

EXCHANGE_TITLES = {
    "By exchange in range", "Liquidated by exchange (USD per bucket)",
    "Largest liquidations across exchanges", "Gaps by exchange (repaired or not)", "variable venue",
}  # fmt: skip
OKX_GAP = (at(60), at(80))  # no OKX session 11:00-11:40; REST repaired 11:20-11:40
REST = "rest:okx:liquidation-orders"
_VL = """
INSERT INTO venue_liquidations (trade_time, venue, content_key, market, symbol, base_asset,
    liquidated_side, price, qty, notional_usd, received_at, wire, raw, origin)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $1, '{}', '{}', $11)
"""
# (minutes after T, venue, market, symbol, liquidated side, price, qty, notional USD, origin)
VENUE_ROWS = [
    (3, "bybit", "linear", "ROSEUSDT", "LONG", "0.04499", "20000", "899.80000", "ws"),
    (50, "bybit", "linear", "BTCUSDT", "SHORT", "60000", "2", "120000", "ws"),
    (10, "okx", "SWAP", "IOST-USDT-SWAP", "SHORT", "0.007831", "13000", "101.803000", "ws"),
    (12, "okx", "MARGIN", "BTC-USDT", None, None, "0.25", None, "ws"),  # no side, no price
    (85, "okx", "SWAP", "BTC-USDT-SWAP", "LONG", "50000", "0.01", "500", "rest"),
]


async def seed_venues(conn: asyncpg.Connection) -> None:
    """Bybit and OKX rows, sessions (OKX with a gap) and the repair of part of that gap."""
    for minutes, venue, market, symbol, side, price, qty, notional, origin in VENUE_ROWS:
        await conn.execute(
            _VL, at(minutes), venue, uuid.uuid4().bytes, market, symbol, symbol.split("-")[0],
            side, price and D(price), D(qty), notional and D(notional), origin,
        )  # fmt: skip
    # Bybit's venue-wide coverage is its `allLiquidation.*` row (every listed symbol held).
    sessions = [("bybit", "allLiquidation.ROSEUSDT", T - timedelta(hours=1), at(150)),
                ("bybit", "allLiquidation.*", T - timedelta(hours=1), at(150)),
                ("okx", "liquidation-orders:SWAP", T - timedelta(hours=1), OKX_GAP[0]),
                ("okx", "liquidation-orders:SWAP", at(100), at(150))]  # fmt: skip
    for venue, stream, opened, closed in sessions:
        await conn.execute(
            "INSERT INTO ws_sessions (session_id, venue, connection, host, route, url, streams,"
            " opened_at, subscribed_at, last_alive_at, closed_at, close_reason, events_received)"
            " VALUES ($1, $2, $2 || '#0', $2, '', 'wss://example', $3, $4, $4, $5, $5, 'rotation',"
            " 1)",
            uuid.uuid4(), venue, [stream], opened, closed,
        )  # fmt: skip
    await conn.execute(
        "INSERT INTO coverage_repairs (venue, stream, repaired_from, repaired_to, source, rows,"
        " recorded_at) VALUES ('okx', 'liquidation-orders:SWAP', $1, $2, $3, 1, $2)",
        OKX_GAP[1], at(100), REST,
    )  # fmt: skip


async def test_exchange_panels_are_exact(pg: asyncpg.Connection) -> None:
    """Every 'By exchange' panel gives the exact seeded answers: totals per exchange and bucket
    with each exchange's own gaps empty (a repaired part is data), shares, the largest rows
    across exchanges, each sampling policy, and the gaps with the repaired part named."""
    await seed_market(pg)
    await seed_venues(pg)

    binance = View(MAIN.time_from, MAIN.time_to, MAIN.interval, {**VALUES, "venue": ["binance"]})
    check_market_main(await run_all(pg, MARKET, binance))  # other venues change no Binance panel
    r = await run_all(pg, MARKET, MAIN)

    per_venue = {
        "binance": ({at(0): D("36010"), at(5): D("30005"), at(90): D(2000), at(105): D(118000)},
                    GAP),
        "bybit": ({at(0): D("899.80000"), at(50): D(120000)}, None),
        "okx": ({at(10): D("101.803000"), at(85): D(500)}, OKX_GAP),
    }  # fmt: skip
    assert as_long(r["Liquidated by exchange (USD per bucket)"]) == {
        (b, venue): None if gap and is_gap(b, gap) else values.get(b, D(0))
        for b in buckets(MAIN, timedelta(minutes=5))
        for venue, (values, gap) in per_venue.items()
    }
    shares = r["By exchange in range"]
    assert [(x["Exchange"], x["Longs USD"], x["Shorts USD"], x["Events"]) for x in shares] == [
        ("binance", D(180005), D(6010), 6),
        ("bybit", D("899.80000"), D(120000), 2),
        ("okx", D(500), D("101.803000"), 3),
    ]
    assert [(float(x["Long share"]), float(x["Short share"])) for x in shares] == [
        (pytest.approx(180005 / 186015), pytest.approx(6010 / 186015)),
        (pytest.approx(899.8 / 120899.8), pytest.approx(120000 / 120899.8)),
        (pytest.approx(500 / 601.803), pytest.approx(101.803 / 601.803)),
    ]
    assert [(x["Covered live"], x["Repaired"]) for x in shares] == [
        (pytest.approx(80 / 120), 0.0),
        (1.0, 0.0),
        (pytest.approx(80 / 120), pytest.approx(20 / 120)),
    ]
    notes = await pg.fetch("SELECT sampling_note FROM venues ORDER BY venue")
    assert [x["Sampling"] for x in shares] == [n["sampling_note"] for n in notes]
    assert [(x["Time"], x["Exchange"], x["Symbol"], x["Liquidated"], x["Notional USD"])
            for x in r["Largest liquidations across exchanges"]] == [
        (at(50), "bybit", "BTCUSDT", "SHORT", D(120000)),
        (at(105), "binance", "BTCUSDT", "LONG", D(118000)),
        (at(7), "binance", "ETHUSDT", "LONG", D(30005)),
        (at(1 + 10 / 60), "binance", "BTCUSDT", "LONG", D(30000)),
        (at(1 + 40 / 60), "binance", "BTCUSDT", "SHORT", D(6010)),
        (at(90), "binance", "BTCUSD_PERP", "LONG", D(2000)),
        (at(3), "bybit", "ROSEUSDT", "LONG", D("899.80000")),
        (at(85), "okx", "BTC-USDT-SWAP", "LONG", D(500)),
        (at(10), "okx", "IOST-USDT-SWAP", "SHORT", D("101.803000")),
    ]  # fmt: skip
    # COIN-M: 20 contracts of 100 USD over the average price 59,500, rounded to 18 places.
    assert [x["Qty"] for x in r["Largest liquidations across exchanges"]] == [
        D(2),
        D(2),
        D(10),
        D("0.5"),
        D("0.1"),
        D("0.033613445378151261"),
        D(20000),
        D("0.01"),
        D(13000),
    ]
    assert r["Gaps by exchange (repaired or not)"] == [
        {"Exchange": "okx", "From": OKX_GAP[1], "To": at(100), "Duration": D(1200),
         "Filled": f"repaired from {REST}"},
        {"Exchange": "okx", "From": OKX_GAP[0], "To": OKX_GAP[1], "Duration": D(1200),
         "Filled": "no data"},
        {"Exchange": "binance", "From": GAP[0], "To": GAP[1], "Duration": D(2400),
         "Filled": "no data"},
    ]  # fmt: skip
    assert r["variable venue"] == [{"venue": "binance"}, {"venue": "bybit"}, {"venue": "okx"}]


async def test_exchange_panels_are_exact_before_and_after_both_rollup_refreshes(
    pg: asyncpg.Connection, pg_dsn: str
) -> None:
    """The 'By exchange' panels read the rollups by venue (migration 0014): the same exact
    answers from marked minutes as from refreshed rollups, Binance's and the other venues'."""
    await seed_market(pg)
    await seed_venues(pg)
    before = await run_all(pg, MARKET, MAIN)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        assert await venue_pending_minutes(pool) == len(VENUE_ROWS)
        await refresh_pending(pool)
        assert await refresh_venue_pending(pool) == len(VENUE_ROWS)
        assert (await pending_minutes(pool), await venue_pending_minutes(pool)) == (0, 0)
    finally:
        await pool.close()
    assert await pg.fetchval("SELECT count(*) FROM venue_liquidations_1h") == len(VENUE_ROWS)
    after = await run_all(pg, MARKET, MAIN)
    assert {t: after[t] for t in EXCHANGE_TITLES} == {t: before[t] for t in EXCHANGE_TITLES}
    assert after == before


async def test_exchange_panels_follow_the_venue_variable(pg: asyncpg.Connection) -> None:
    """With only OKX selected, the exchange panels and the session list hold OKX alone; an
    exchange with neither coverage nor rows in range shows empty cells, never zeros."""
    await seed_market(pg)
    await seed_venues(pg)
    okx = View(MAIN.time_from, MAIN.time_to, MAIN.interval, {**MAIN.values, "venue": ["okx"]})
    r = await run_all(pg, MARKET, okx)
    assert {x["Exchange"] for x in r["Largest liquidations across exchanges"]} == {"okx"}
    assert [x["Exchange"] for x in r["Websocket sessions"]] == ["okx", "okx"]
    assert {m for _, m in as_long(r["Liquidated by exchange (USD per bucket)"])} == {"okx"}

    later = View(at(200), at(260), "1m", {**MAIN.values, "venue": ["okx"]})
    doc = all_dashboards()[MARKET]
    r = {q.title: [dict(x) for x in await pg.fetch(expand(q, later, doc))]
         for q in postgres_queries(doc) if q.title in EXCHANGE_TITLES}  # fmt: skip
    assert r["By exchange in range"] == [{
        "Exchange": "okx", "Longs USD": None, "Shorts USD": None, "Long share": None,
        "Short share": None, "Events": None, "Covered live": 0.0, "Repaired": 0.0,
        "Sampling": 'A sample: OKX says the channel "doesn\'t represent the total"',
    }]  # fmt: skip
    values = [x["value"] for x in r["Liquidated by exchange (USD per bucket)"]]
    assert values == [None] * 12


# -- static checks --------------------------------------------------------------------------------

MARKET_TITLES = {
    "Liquidated in range", "Coverage of range", "Longs vs shorts liquidated (USD per bucket)",
    "USDⓈ-M vs COIN-M (USD per bucket)", "By base asset (top $top, USD per bucket)",
    "By symbol (top $top, USD per bucket)", "Top symbols", "Largest liquidations",
    "$symbol: longs vs shorts (USD per bucket)", "$symbol: liquidated USD by price",
    "Covered share of each bucket", "Gaps (no collector session)", "Websocket sessions",
    "variable symbol", *EXCHANGE_TITLES,
}  # fmt: skip
ACCOUNT_TITLES = {
    "Force orders in range", "Notional in range",
    "Force orders per interval (by account and kind)",
    "Notional per interval (by account, product and asset)", "By symbol", "Latest force orders",
    "Polling and backfill", "variable account",
}  # fmt: skip


def test_every_postgres_query_has_exact_checks() -> None:
    """The Postgres queries of the dashboards are exactly the ones this module checks."""
    found = {(q.dashboard, q.title) for d in all_dashboards().values() for q in postgres_queries(d)}
    assert found == {(MARKET, t) for t in MARKET_TITLES} | {(ACCOUNT, t) for t in ACCOUNT_TITLES}


def test_dashboards_are_well_formed() -> None:
    """Unique uids and panel ids, known data sources, panels inside the 24-column grid."""
    docs = all_dashboards()
    assert set(docs) == {MARKET, ACCOUNT, "collector-health"}
    for doc in docs.values():
        ids = [p["id"] for p in panels(doc)]
        assert len(ids) == len(set(ids)), doc["uid"]
        for panel in panels(doc):
            pos = panel["gridPos"]
            assert pos["x"] >= 0, panel["title"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in (PG_UID, PROM_UID), panel["title"]
            assert panel.get("description"), f"{panel['title']}: say what the panel shows"
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], panel["title"]


# -- running the queries --------------------------------------------------------------------------


async def test_market_panels_are_exact_before_and_after_the_rollup_refresh(
    pg: asyncpg.Connection, pg_dsn: str
) -> None:
    """Every market panel gives exact seeded answers from marked minutes and from the rollups."""
    await seed_market(pg)
    before = await run_all(pg, MARKET, MAIN)
    check_market_main(before)

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        await refresh_pending(pool)
        assert await pending_minutes(pool) == 0
    finally:
        await pool.close()
    after = await run_all(pg, MARKET, MAIN)
    assert after == before


async def test_market_panels_over_a_quarter_read_daily_buckets(
    pg: asyncpg.Connection, pg_dsn: str
) -> None:
    """Over 90 days the auto bucket is one day, read from the hourly rollup; gaps stay empty."""
    await seed_market(pg)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        await refresh_pending(pool)
    finally:
        await pool.close()

    r = await run_all(pg, MARKET, QUARTER)

    day = datetime(2026, 3, 2, tzinfo=UTC)
    days = r["Longs vs shorts liquidated (USD per bucket)"]
    assert len(days) == 90
    assert [d for d in days if d["Longs liquidated"] is not None] == [
        {"time": day, "Longs liquidated": D("241005"), "Shorts liquidated": D("6010")}
    ]
    assert r["Top symbols"][0]["Total USD"] == D("215010")
    assert r["Liquidated in range"][0]["Longs liquidated"] == D("241005")
    assert [x["Notional USD"] for x in r["Largest liquidations"]] == [
        D("118000"), D("61000"), D("30005"), D("30000"), D("6010"), D("2000"),
    ]  # fmt: skip
    assert r["$symbol: liquidated USD by price"] == [  # 12-hour buckets, 100-USD price bands
        {"time": day.timestamp(), "metric": band("59000"), "value": D("118000")},
        {"time": day.timestamp(), "metric": band("60000"), "value": D("30000")},
        {"time": day.timestamp(), "metric": band("60100"), "value": D("6010")},
        {"time": day.timestamp(), "metric": band("61000"), "value": D("61000")},
    ]


async def test_market_panels_follow_the_market_variable(pg: asyncpg.Connection) -> None:
    """With only COIN-M selected, the totals and the symbol list hold COIN-M rows alone."""
    await seed_market(pg)
    coin_m = View(MAIN.time_from, MAIN.time_to, MAIN.interval, {**MAIN.values, "market": ["CM"]})

    r = await run_all(pg, MARKET, coin_m)

    assert r["Liquidated in range"][0]["Longs liquidated"] == D("2000")
    assert r["variable symbol"] == [{"symbol": "BTCUSD_PERP"}, {"symbol": "ETHUSD_PERP"}]
    assert [x["Symbol"] for x in r["Largest liquidations"]] == ["BTCUSD_PERP"]


# -- own accounts ---------------------------------------------------------------------------------

ACCOUNT_VIEW = View(T, T + timedelta(hours=2), "1h",
                    {"account": ["main", "pm"], "product": ["um", "cm", "margin"],
                     "kind": ["LIQUIDATION", "ADL"]})  # fmt: skip

_AFO = """
INSERT INTO account_force_orders (account, product, symbol, order_id, endpoint, auto_close_type,
    side, position_side, status, price, avg_price, orig_qty, executed_qty, notional,
    notional_asset, order_time, update_time, first_seen_at, last_seen_at, raw)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $11, $12, $13, $14, $14, $14, $14, '{}')
"""
ACCOUNT_ROWS = [
    ("main", "um", "BTCUSDT", 1, "/fapi/v1/forceOrders", "LIQUIDATION", "SELL", "BOTH", "FILLED",
     D("59010"), D("0.1"), D("5901"), "USDT", at(5)),
    ("main", "cm", "BTCUSD_PERP", 2, "/dapi/v1/forceOrders", "ADL", "BUY", "SHORT", "FILLED",
     D("60000"), D("3"), D("300"), "USD", at(20)),
    ("pm", "margin", "ETHUSDT", 3, "/papi/v1/margin/forceOrders", "LIQUIDATION", "SELL", None,
     None, D("3000"), D("2"), D("6000"), "USDT", at(70)),
    ("main", "um", "BTCUSDT", 4, "/fapi/v1/forceOrders", "LIQUIDATION", "SELL", "BOTH", "FILLED",
     D("50000"), D("1"), D("50000"), "USDT", datetime(2026, 2, 1, tzinfo=UTC)),
]  # fmt: skip


async def seed_accounts(conn: asyncpg.Connection) -> None:
    """Three force orders in the view (two accounts, three products), one before it."""
    await conn.executemany(_AFO, ACCOUNT_ROWS)
    await conn.execute(
        "INSERT INTO account_poll_checkpoints (account, endpoint, scope, horizon_at, covered_until,"
        " backfill_complete, last_poll_at, updated_at)"
        " VALUES ('main', '/fapi/v1/forceOrders', 'LIQUIDATION', $1, $2, true, $2, $2)",
        datetime(2025, 9, 1, tzinfo=UTC), at(119),
    )  # fmt: skip


async def test_account_panels_are_exact(pg: asyncpg.Connection) -> None:
    """Every own-account panel gives the exact seeded answers; side SELL reads as a closed LONG."""
    await seed_accounts(pg)

    r = await run_all(pg, ACCOUNT, ACCOUNT_VIEW)

    assert r["Force orders in range"] == [
        {"Liquidations": 2, "ADL": 1, "Symbols": 3, "Accounts": 2}
    ]
    assert [tuple(x.values()) for x in r["Notional in range"]] == [
        ("USD", "cm", "ADL", 1, D("300")),
        ("USDT", "margin", "LIQUIDATION", 1, D("6000")),
        ("USDT", "um", "LIQUIDATION", 1, D("5901")),
    ]
    h10, h11 = T.timestamp(), T.timestamp() + 3600
    assert r["Force orders per interval (by account and kind)"] == [
        {"time": h10, "metric": "main adl", "value": 1},
        {"time": h10, "metric": "main liquidation", "value": 1},
        {"time": h11, "metric": "pm liquidation", "value": 1},
    ]
    assert r["Notional per interval (by account, product and asset)"] == [
        {"time": h10, "metric": "main cm (USD)", "value": D("300")},
        {"time": h10, "metric": "main um (USDT)", "value": D("5901")},
        {"time": h11, "metric": "pm margin (USDT)", "value": D("6000")},
    ]
    assert [tuple(x.values()) for x in r["By symbol"]] == [
        ("main", "cm", "BTCUSD_PERP", "ADL", "SHORT", 1, D("3"), D("300"), "USD", at(20)),
        ("main", "um", "BTCUSDT", "LIQUIDATION", "LONG", 1, D("0.1"), D("5901"), "USDT", at(5)),
        ("pm", "margin", "ETHUSDT", "LIQUIDATION", "LONG", 1, D("2"), D("6000"), "USDT", at(70)),
    ]
    latest = r["Latest force orders"]
    assert [(x["Order id"], x["Side"], x["Closed"], x["Status"]) for x in latest] == [
        (3, "SELL", "LONG", ""), (2, "BUY", "SHORT", "FILLED"), (1, "SELL", "LONG", "FILLED"),
    ]  # fmt: skip
    assert r["Polling and backfill"] == [{
        "Account": "main", "Endpoint": "/fapi/v1/forceOrders", "Scope": "LIQUIDATION",
        "Backfill complete": True, "Horizon": datetime(2025, 9, 1, tzinfo=UTC),
        "Covered until": at(119), "Last poll": at(119),
    }]  # fmt: skip
    assert r["variable account"] == [{"account": "main"}, {"account": "pm"}]


async def test_account_panels_follow_the_kind_and_account_variables(pg: asyncpg.Connection) -> None:
    """Choosing ADL only, or one account, narrows every count to the matching rows."""
    await seed_accounts(pg)
    adl = View(T, ACCOUNT_VIEW.time_to, "1h", {**ACCOUNT_VIEW.values, "kind": ["ADL"]})
    pm = View(T, ACCOUNT_VIEW.time_to, "1h", {**ACCOUNT_VIEW.values, "account": ["pm"]})

    by_kind = await run_all(pg, ACCOUNT, adl)
    by_account = await run_all(pg, ACCOUNT, pm)

    assert by_kind["Force orders in range"] == [
        {"Liquidations": 0, "ADL": 1, "Symbols": 1, "Accounts": 1}
    ]
    assert [x["Order id"] for x in by_account["Latest force orders"]] == [3]
    assert by_account["Polling and backfill"] == []


HEATMAP = "$symbol: liquidated USD by price"


async def heatmap_bands(pg: asyncpg.Connection, prices: Sequence[str]) -> list[str]:
    """The heatmap query's band names, in the order Grafana gets them, for BTCUSDT rows at
    `prices` (one per minute from T)."""
    for i, price in enumerate(prices):
        await pg.execute(
            _ML, at(i), uuid.uuid4().bytes, "BTCUSDT", "UM", "SELL", "LONG", D(1), D(price), D(1)
        )
    doc = all_dashboards()[MARKET]
    query = next(q for q in postgres_queries(doc) if q.title == HEATMAP)
    rows = await pg.fetch(expand(query, View(T, at(len(prices)), "1h", VALUES), doc))
    return [r["metric"] for r in rows]


async def test_heatmap_price_bands_sort_as_numbers_as_text(pg: asyncpg.Connection) -> None:
    """Across a change in the number of digits (9950 / 10050) and in fractional bands, the band
    names' text order is their numeric order, each one name long and parsing as its band."""
    names = await heatmap_bands(pg, ["10050", "9950", "10020", "9990"])
    assert names == [band("9950"), band("9990"), band("10020"), band("10050")]
    assert names == sorted(names)
    assert [D(n) for n in names] == [D(9950), D(9990), D(10020), D(10050)]


async def test_heatmap_fractional_bands_keep_one_scale(pg: asyncpg.Connection) -> None:
    """Bands narrower than 1 (cheap coins) keep the same number of decimals in every name."""
    names = await heatmap_bands(pg, ["0.0995", "0.1004", "0.1"])
    assert names == [band("0.09950"), band("0.10000"), band("0.10040")]
    assert names == sorted(names)


async def test_account_panels_say_no_accounts_when_none_is_configured(
    pg: asyncpg.Connection,
) -> None:
    """No accounts: the variable has no values; every panel's query returns no row at all (the
    count stat included: no zeros), so each panel shows its `noValue`, which names the cause."""
    doc = all_dashboards()[ACCOUNT]
    variable = next(q for q in postgres_queries(doc) if q.title == "variable account")
    assert await pg.fetch(expand(variable, ACCOUNT_VIEW, doc)) == []
    # Grafana sends an empty All as nothing (ARRAY[]), a variable with no values as ''.
    for accounts in ([], [""]):
        view = View(T, ACCOUNT_VIEW.time_to, "1h", {**ACCOUNT_VIEW.values, "account": accounts})
        for query in postgres_queries(doc):
            assert await pg.fetch(expand(query, view, doc)) == [], (query.title, accounts)
    no_value = {p["title"]: p["fieldConfig"]["defaults"].get("noValue")
                for p in panels(doc) if p["type"] != "row"}  # fmt: skip
    assert no_value == {
        "Force orders in range": "No accounts configured",
        "Polling and backfill": "No accounts configured (or none has polled yet)",
        **dict.fromkeys((
            "Notional in range", "Force orders per interval (by account and kind)",
            "Notional per interval (by account, product and asset)", "By symbol",
            "Latest force orders",
        ), "No force orders in range (or no accounts configured)"),
    }  # fmt: skip


async def test_account_variable_lists_polled_accounts_without_force_orders(
    pg: asyncpg.Connection,
) -> None:
    """An account that is polled but never had a force order is still offered, and its count
    stat reads zeros rather than the no-accounts message."""
    await pg.execute(
        "INSERT INTO account_poll_checkpoints (account, endpoint, scope, horizon_at, covered_until,"
        " updated_at) VALUES ('quiet', '/fapi/v1/forceOrders', 'LIQUIDATION', $1, $1, $1)",
        T,
    )
    view = View(T, ACCOUNT_VIEW.time_to, "1h", {**ACCOUNT_VIEW.values, "account": ["quiet"]})
    doc = all_dashboards()[ACCOUNT]
    r = {q.title: [dict(x) for x in await pg.fetch(expand(q, view, doc))]
         for q in postgres_queries(doc)}  # fmt: skip
    assert r["variable account"] == [{"account": "quiet"}]
    assert r["Force orders in range"] == [
        {"Liquidations": 0, "ADL": 0, "Symbols": 0, "Accounts": 0}
    ]
