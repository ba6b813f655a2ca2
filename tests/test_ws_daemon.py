"""The daemon end to end: emulator websockets -> collector -> real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from decimal import Decimal

import aiohttp
import asyncpg
import orjson

from collector.emulator import Emulator, EmulatorOptions
from tests.daemon import (
    count_rows,
    eventually,
    exchange_info_loaded,
    make_config,
    metric_value,
    running,
    subscribed,
)
from tests.factories import um_event


def sample(daemon_metrics: object, name: str, labels: dict[str, str] | None = None) -> float:
    return metric_value(daemon_metrics.registry, name, **(labels or {}))  # type: ignore[attr-defined]


def cm_event(trade_time_ms: int) -> dict[str, object]:
    """A post-merge COIN-M event: `st` 2 at the top, `ps` inside `o` (docs/binance.md §1.3)."""
    return {
        "e": "forceOrder",
        "E": trade_time_ms + 5,
        "st": 2,
        "o": {
            "s": "BTCUSD_PERP",
            "ps": "BTCUSD",
            "S": "BUY",
            "o": "LIMIT",
            "f": "IOC",
            "q": "3",
            "p": "97000.1",
            "ap": "96999.9",
            "X": "FILLED",
            "l": "3",
            "z": "3",
            "T": trade_time_ms,
        },
    }


async def test_events_are_stored_exactly_with_notional(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """A UM and a CM event arrive as rows with every field exact and USD notional derived."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await emu.wait_for_connections(1, host="fstream")
        # exchangeInfo (contract sizes) loads concurrently; wait for it so CM notional is set.
        await eventually(
            lambda: pg.fetchval("SELECT count(*) FROM symbols WHERE market='CM'"), lambda n: n > 0
        )
        await eventually(
            lambda: asyncio.sleep(0, daemon.runtime.catalog.contract_sizes),
            lambda sizes: "BTCUSD_PERP" in sizes,
        )
        await emu.wait_until(lambda: all(c.streams for c in emu.connections))
        assert (
            await emu.publish(
                um_event(
                    "ETHUSDT", 1_795_000_000_123, qty="1.5", price="3000.10", avg_price="3001.25"
                )
            )
            == 1
        )
        assert await emu.publish(cm_event(1_795_000_000_456)) == 1
        await eventually(count_rows(pg), lambda n: n == 2)
        rows = await pg.fetch(
            "SELECT symbol, pair, symbol_type, market, side, liquidated_side, order_type, "
            "time_in_force, status, orig_qty, price, avg_price, last_filled_qty, filled_qty, "
            "notional_usd, extract(epoch from trade_time) * 1000 AS t, "
            "extract(epoch from event_time) * 1000 AS e, source_host, source_route, "
            "source_stream FROM market_liquidations ORDER BY trade_time"
        )
    assert [tuple(r) for r in rows] == [
        (
            "ETHUSDT",
            "ETHUSDT",
            1,
            "UM",
            "SELL",
            "LONG",
            "LIMIT",
            "IOC",
            "FILLED",
            Decimal("1.5"),
            Decimal("3000.10"),
            Decimal("3001.25"),
            Decimal("1.5"),
            Decimal("1.5"),
            Decimal("4501.875"),
            Decimal(1_795_000_000_123),
            Decimal(1_795_000_000_126),
            "fstream",
            "market",
            "!forceOrder@arr",
        ),
        (
            "BTCUSD_PERP",
            "BTCUSD",
            2,
            "CM",
            "BUY",
            "SHORT",
            "LIMIT",
            "IOC",
            "FILLED",
            Decimal(3),
            Decimal("97000.1"),
            Decimal("96999.9"),
            Decimal(3),
            Decimal(3),
            Decimal(300),
            Decimal(1_795_000_000_456),
            Decimal(1_795_000_000_461),
            "fstream",
            "market",
            "!forceOrder@arr",
        ),
    ]


async def test_overlapping_streams_store_one_row(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """The same event on fstream all-market, a per-symbol stream and dstream is one row."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, coin_m_all_market=True, usdm_symbols=("BTCUSDT",))
        async with running(config) as daemon:
            await emu.wait_for_connections(2)
            await emu.wait_until(lambda: sum(len(c.streams) for c in emu.connections) == 3)
            for i in range(5):
                # Two sockets; the fstream one carries both streams, so three frames per event.
                assert await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + i)) == 2
            await eventually(count_rows(pg), lambda n: n == 5)
            await daemon.runtime.writer.flush()
            metrics = daemon.runtime.metrics
            assert sample(metrics, "collector_duplicates_total", {"layer": "memory"}) == 10
            assert (
                sample(metrics, "collector_rows_inserted_total", {"table": "market_liquidations"})
                == 5
            )
            streams = await pg.fetch(
                "SELECT DISTINCT source_host, source_stream FROM market_liquidations"
            )
            assert len(streams) == 1


async def test_malformed_frames_are_dead_lettered_and_the_stream_goes_on(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Bad JSON, unknown events and bad fields land in dead_letters; good events still land."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await subscribed(emu)
        await emu.send_raw("{not json")
        await emu.send_raw('{"stream":"!forceOrder@arr","data":{"e":"markPriceUpdate","E":1}}')
        bad = um_event("BTCUSDT", 1_795_000_000_001, price="12,5")
        await emu.publish(bad)
        await emu.publish(um_event("BTCUSDT", 1_795_000_000_002))
        await eventually(count_rows(pg, "dead_letters"), lambda n: n == 3)
        await eventually(count_rows(pg), lambda n: n == 1)
        dead = await pg.fetch("SELECT source, reason, raw FROM dead_letters ORDER BY id")
        assert [(d["source"], d["reason"]) for d in dead] == [
            ("fstream/market", "malformed_json"),
            ("fstream/market", "unknown_event"),
            ("fstream/market", "malformed_event"),
        ]
        assert bytes(dead[0]["raw"]) == b"{not json"
        assert orjson.loads(dead[2]["raw"])["data"] == bad
        metrics = daemon.runtime.metrics
        assert sample(metrics, "collector_dead_letters_total", {"reason": "malformed_json"}) == 1
        assert sample(metrics, "collector_ws_connects_total", {"host": "fstream"}) == 1


async def test_server_drop_reconnects_and_the_ledger_records_the_gap(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A dropped connection is re-established; events on both sides land; the gap is recorded."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await subscribed(emu)
        await emu.publish(um_event("BTCUSDT", 1_795_000_000_001))
        await eventually(count_rows(pg), lambda n: n == 1)
        assert await emu.drop_connections() == 1
        await eventually(
            lambda: asyncio.sleep(
                0,
                sample(daemon.runtime.metrics, "collector_ws_connects_total", {"host": "fstream"}),
            ),
            lambda n: n == 2,
        )
        await emu.wait_until(
            lambda: len(emu.connections) == 1 and all(c.streams for c in emu.connections)
        )
        await emu.publish(um_event("BTCUSDT", 1_795_000_000_002))
        await eventually(count_rows(pg), lambda n: n == 2)
        sessions = await eventually(
            lambda: pg.fetch(
                "SELECT close_reason, opened_at, closed_at, events_received "
                "FROM ws_sessions ORDER BY opened_at"
            ),
            lambda rows: (
                len(rows) == 2
                and rows[0]["closed_at"] is not None
                and rows[1]["events_received"] == 1
            ),
        )
        assert [s["close_reason"] for s in sessions] == ["server_closed", None]
        assert sessions[0]["events_received"] == 1
        gaps = await pg.fetch(
            "SELECT gap_start, gap_end FROM coverage_gaps(ARRAY['!forceOrder@arr'], $1, $2)",
            sessions[0]["opened_at"],
            sessions[1]["opened_at"],
        )
        assert [tuple(g) for g in gaps] == [(sessions[0]["closed_at"], sessions[1]["opened_at"])]
    closed = await pg.fetch("SELECT close_reason FROM ws_sessions ORDER BY opened_at")
    assert [c["close_reason"] for c in closed] == ["server_closed", "shutdown"]


async def test_failed_upgrades_back_off_and_recover(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """Three 503s on upgrade are counted as reconnects by reason, then the stream connects."""
    async with Emulator(EmulatorOptions()) as emu:
        emu.fail_upgrades(3, status=503)
        async with running(make_config(emu, pg_dsn)) as daemon:
            await emu.wait_for_connections(1, timeout=10)
            metrics = daemon.runtime.metrics
            assert (
                sample(
                    metrics,
                    "collector_ws_reconnects_total",
                    {"host": "fstream", "reason": "http_503"},
                )
                == 3
            )
            assert emu.stats.upgrades_failed == 3


async def test_pings_are_answered_with_their_payload(pg_dsn: str) -> None:
    """Server pings get a pong with the same payload, so the pong deadline never cuts us."""
    # Pongs count toward Binance's 10 incoming messages/s, so ping at 5/s, not faster.
    options = EmulatorOptions(ping_interval_s=0.2, pong_timeout_s=0.5)
    async with Emulator(options) as emu, running(make_config(emu, pg_dsn)):
        [conn] = await emu.wait_for_connections(1)
        await emu.wait_until(lambda: conn.pongs_received >= 6, timeout=10)
        assert conn.last_pong_matched is True
        assert emu.stats.disconnects["pong_timeout"] == 0
        assert len(emu.connections) == 1


async def test_rotation_is_make_before_break_without_gap_or_duplicates(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Rotating ahead of the 24 h cut overlaps sessions: no coverage gap, no duplicate rows."""
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, rotate_after_s=0.4)
        async with running(config) as daemon:
            await emu.wait_for_connections(1)
            published = 0
            while (
                sample(daemon.runtime.metrics, "collector_ws_rotations_total", {"host": "fstream"})
                < 3
            ):
                await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + published))
                published += 1
                await asyncio.sleep(0.005)  # pacing the publisher, not waiting for a result
            await eventually(count_rows(pg), lambda n: n == published)
        sessions = await pg.fetch(
            "SELECT opened_at, closed_at, close_reason, events_received FROM ws_sessions "
            "ORDER BY opened_at"
        )
        assert [s["close_reason"] for s in sessions][:3] == ["rotated"] * 3
        gaps = await pg.fetch(
            "SELECT * FROM coverage_gaps(ARRAY['!forceOrder@arr'], $1, $2)",
            sessions[0]["opened_at"],
            sessions[-1]["closed_at"],
        )
        assert gaps == []
        assert sum(s["events_received"] for s in sessions) >= published


async def test_rotation_while_the_database_is_slow_loses_nothing(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Rotations while a slow database keeps the writer's queue full: each old connection
    drains what it read (up to the UNSUBSCRIBE reply) behind the queue instead of being
    cancelled holding it, so every published event is stored and nothing is dropped."""
    await pg.execute(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$"
    )
    await pg.execute(
        "CREATE TRIGGER slow BEFORE INSERT ON market_liquidations "
        "FOR EACH ROW EXECUTE FUNCTION slow_insert()"
    )
    async with Emulator(EmulatorOptions()) as emu:
        # The old connection may wait 0.5 s for room: less than the backlog takes to commit.
        config = make_config(emu, pg_dsn, rotate_after_s=0.4, open_timeout_s=0.5)
        config = dataclasses.replace(
            config,
            writer=dataclasses.replace(config.writer, queue_max=20, writers=1, batch_max_rows=5),
        )
        async with running(config) as daemon:
            metrics = daemon.runtime.metrics
            await emu.wait_for_connections(1)
            published = 0
            while sample(metrics, "collector_ws_rotations_total", {"host": "fstream"}) < 2:
                await emu.publish(um_event("BTCUSDT", 1_795_000_000_000 + published))
                published += 1
                await asyncio.sleep(0.003)  # pacing the publisher, not waiting for a result
            await eventually(count_rows(pg), lambda n: n == published, timeout=60)
            assert daemon.runtime.writer.items_dropped == 0


async def test_metrics_and_health_answer(pg_dsn: str) -> None:
    """/metrics, /healthz and /readyz answer on the daemon's port; readiness tracks streams."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await emu.wait_for_connections(1)
        # The ledger's first commit marks the writer healthy; before it, a queued session
        # record alone fails the database check.
        await daemon.runtime.writer.flush()
        base = f"http://127.0.0.1:{daemon.runtime.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert (r.status, await r.json()) == (200, {"status": "ok"})

            async def ready() -> tuple[int, object]:
                async with http.get(f"{base}/readyz") as r:
                    return r.status, await r.json()

            _, body = await eventually(ready, lambda sb: sb[0] == 200)
            one_up = {"fstream/market#0": {"up": 1, "wanted": 1, "connections": ["up"]}}
            assert body == {
                "ok": ["database", "event_age", "streams"],
                "failing": {},
                "streams": {"state": "ok", "shards": one_up},
            }
            emu.fail_upgrades(1000)
            await emu.drop_connections()
            _status, body = await eventually(ready, lambda sb: sb[0] == 503)
            assert body["failing"] == {"streams": "not connected: fstream/market#0"}  # type: ignore[index]
            emu.fail_upgrades(0)
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
        assert 'collector_ws_connections{host="fstream"}' in text
        assert "collector_queue_capacity 20000.0" in text


async def test_data_silence_is_not_death_but_total_silence_is(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Quiet streams with pings stay connected; a link with no frame at all is replaced."""
    options = EmulatorOptions(ping_interval_s=0.2)
    async with Emulator(options) as emu:
        config = make_config(emu, pg_dsn, idle_timeout_s=0.8)
        async with running(config) as daemon:
            [conn] = await emu.wait_for_connections(1)
            # Four idle timeouts without a single event, only pings: still the first connection.
            await emu.wait_until(lambda: conn.pings_sent >= 16, timeout=10)
            assert emu.connections == [conn]
            metrics = daemon.runtime.metrics
            assert sample(metrics, "collector_ws_connects_total", {"host": "fstream"}) == 1
    async with Emulator(EmulatorOptions(ping_interval_s=3600)) as emu:
        config = make_config(emu, pg_dsn, idle_timeout_s=0.5)
        async with running(config) as daemon:
            await emu.wait_for_connections(1)
            metrics = daemon.runtime.metrics
            await eventually(
                lambda: asyncio.sleep(
                    0,
                    sample(
                        metrics,
                        "collector_ws_reconnects_total",
                        {"host": "fstream", "reason": "idle_timeout"},
                    ),
                ),
                lambda n: n >= 1,
            )
    reasons = await pg.fetch("SELECT DISTINCT close_reason FROM ws_sessions ORDER BY 1")
    assert [r["close_reason"] for r in reasons] == ["idle_timeout", "shutdown"]


async def test_unknown_symbols_and_fields_keep_the_row_and_flag_it(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """An unlisted symbol or an undocumented field is stored, counted and flagged once."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await subscribed(emu)
        await exchange_info_loaded(daemon)
        new_listing = um_event("NEWCOINUSDT", 1_795_000_000_001)
        extra = {**um_event("BTCUSDT", 1_795_000_000_002), "x": 1}
        for event in (new_listing, new_listing | {"E": 1}, extra):
            await emu.publish(event)
        await eventually(count_rows(pg), lambda n: n == 2)
        await eventually(count_rows(pg, "dead_letters"), lambda n: n == 2)
        flagged = await pg.fetch("SELECT reason, detail, kept FROM dead_letters ORDER BY id")
        assert [tuple(f) for f in flagged] == [
            ("unknown_symbol", "UM:NEWCOINUSDT", True),
            ("unknown_field", "x", True),
        ]
        metrics = daemon.runtime.metrics
        assert sample(metrics, "collector_payload_anomalies_total", {"kind": "unknown_symbol"}) == 2
        assert sample(metrics, "collector_payload_anomalies_total", {"kind": "unknown_field"}) == 1
        symbols = await pg.fetch("SELECT symbol FROM market_liquidations ORDER BY trade_time")
        assert [s["symbol"] for s in symbols] == ["NEWCOINUSDT", "BTCUSDT"]


async def test_run_without_a_database_starts_an_embedded_one() -> None:
    """With no DSN configured, the daemon runs its own PostgreSQL and stores rows there."""
    # Not pytest's tmp_path: as root the embedded server runs as `pgserver`, which must be able
    # to enter every directory above its data, and pytest keeps its base directory at 0700.
    tmp_path = tempfile.mkdtemp(prefix="collector-embedded-")
    try:
        await _run_on_embedded_database(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


async def _run_on_embedded_database(tmp_path: str) -> None:
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, "unused")
        config = dataclasses.replace(
            config,
            database=dataclasses.replace(
                config.database, dsn=None, embedded_dir=f"{tmp_path}/pgdata", migrate_on_start=True
            ),
        )
        async with running(config) as daemon:
            await subscribed(emu)
            await emu.publish(um_event("BTCUSDT", 1_795_000_000_001))
            conn = await asyncpg.connect(daemon.runtime.dsn)
            try:
                await eventually(count_rows(conn), lambda n: n == 1)
                assert daemon.runtime.dsn.endswith(f"?host={tmp_path}/pgdata")
            finally:
                await conn.close()
        assert await daemon.task == 0


async def test_many_streams_are_subscribed_at_a_paced_rate(pg_dsn: str) -> None:
    """1,024 streams on one connection: 50 in the URL, the rest in SUBSCRIBEs paced under the
    10 messages/s Binance allows (eleven unpaced messages would get the connection dropped)."""
    symbols = tuple(f"SYM{i:04d}USDT" for i in range(1023))
    async with Emulator(EmulatorOptions()) as emu:
        config = make_config(emu, pg_dsn, usdm_symbols=symbols, control_messages_per_s=8.0)
        async with running(config) as daemon:
            [conn] = await emu.wait_for_connections(1)
            shard = daemon.runtime.shards[0]
            await eventually(
                lambda: asyncio.sleep(0, shard.current), lambda c: c is not None, timeout=15
            )
            assert shard.current is not None
            await asyncio.wait_for(shard.current.subscribed.wait(), 15)
            assert len(conn.streams) == 1024
            assert emu.stats.disconnects["rate_limit"] == 0
            # 10 SUBSCRIBE messages (9 x 100 + 74 streams) and one LIST_SUBSCRIPTIONS.
            assert conn.messages_received == 11


async def test_a_nul_in_a_symbol_is_dead_lettered_and_the_stream_goes_on(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A symbol holding NUL (valid JSON, invalid Postgres text) costs only its own row."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await subscribed(emu)
        await exchange_info_loaded(daemon)
        await emu.publish(um_event("BAD\u0000USDT", 1_795_000_000_001))
        await emu.publish(um_event("BTCUSDT", 1_795_000_000_002))
        await eventually(count_rows(pg, "dead_letters"), lambda n: n == 2)
        await eventually(count_rows(pg), lambda n: n == 1)
        dead = await pg.fetch("SELECT reason, detail, kept FROM dead_letters ORDER BY id")
        assert sorted((d["reason"], d["kept"]) for d in dead) == [
            ("db_rejected", False),
            ("unknown_symbol", True),
        ]
        assert "UM:BAD\\u0000USDT" in [d["detail"] for d in dead]
        assert daemon.task.done() is False


async def test_a_value_out_of_range_is_dead_lettered_and_the_stream_goes_on(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """`"ap":"1E600000"` (its notional overflows Python's decimals) costs only its own frame."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await subscribed(emu)
        huge = um_event("BTCUSDT", 1_795_000_000_001, qty="1E600000", avg_price="1E600000")
        await emu.publish(huge)
        await emu.publish(um_event("BTCUSDT", 1_795_000_000_002))
        await eventually(count_rows(pg), lambda n: n == 1)
        await eventually(count_rows(pg, "dead_letters"), lambda n: n == 1)
        dead = await pg.fetchrow("SELECT reason, detail, raw FROM dead_letters")
        assert (dead["reason"], dead["detail"]) == (
            "malformed_event",
            "decimal out of range: '1E600000' (field 'o.q')",
        )
        assert orjson.loads(dead["raw"])["data"] == huge
        stored = await pg.fetchval(
            "SELECT extract(epoch from trade_time) * 1000 FROM market_liquidations"
        )
        assert stored == 1_795_000_000_002
        metrics = daemon.runtime.metrics
        assert sample(metrics, "collector_dead_letters_total", {"reason": "malformed_event"}) == 1
        assert sample(metrics, "collector_ws_connects_total", {"host": "fstream"}) == 1
