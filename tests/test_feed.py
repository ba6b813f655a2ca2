"""The live feed, history and coverage API against a real database and real loopback sockets:
exact SSE bytes, filters, resume with Last-Event-ID, commit order across transactions, two
feeds over one database, slow consumers, the subscriber limit, paging, coverage, the token."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from collector.config import HttpConfig, load_config
from collector.exceptions import ConfigError
from collector.model import MarketLiquidation
from collector.sink.columns import (
    INSERT_ML_ONE,
    INSERT_VL_ONE,
    UPSERT_SESSION,
    ml_record,
    session_args,
    vl_record,
)
from tests.daemon import eventually, metric_value
from tests.factories import NOW, bybit_liquidation, liquidation, session
from tests.feed_harness import Stream, ids, insert, served


def fresh(i: int) -> MarketLiquidation:
    """liquidation(i), received now (within the look-back of a resume)."""
    return liquidation(i)._replace(received_at=datetime.now(UTC))


async def cursor_of(conn: asyncpg.Connection, symbol: str, trade_ms: int) -> str:
    row = await conn.fetchrow(
        "SELECT committed_xid::text AS x, seq FROM market_liquidations"
        " WHERE symbol = $1 AND trade_time = to_timestamp($2 / 1000.0)",
        symbol, trade_ms,
    )  # fmt: skip
    return f"{row['x']}-{row['seq']}"


async def test_a_committed_row_arrives_as_exact_sse_bytes(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A row committed after the stream opened arrives as exactly this frame."""
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.url}/v1/liquidations/stream") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            await insert(pg, liquidation(0))
            [frame] = await Stream(resp).events(1)
        cursor = await cursor_of(pg, "BTCUSDT", 1_795_000_000_000)
    assert frame == (
        b"id: " + cursor.encode() + b'\ndata: {"venue":"binance","symbol":"BTCUSDT",'
        b'"market":"UM","liquidated_side":"LONG","price":"9910","qty":"0.014",'
        b'"notional_usd":"138.740","trade_time":"2026-11-18T11:06:40.000000Z",'
        b'"received_time":"2026-11-21T12:00:00.000000Z"}\n\n'
    )


async def test_filters_pass_only_matching_rows(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """venue, repeated symbol and min_notional_usd together let through only what matches."""
    query = "venue=binance&symbol=ethusdt&symbol=BTCUSDT&min_notional_usd=1000"
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.url}/v1/liquidations/stream?{query}") as resp:
            await insert(pg, liquidation(1))  # BTCUSDT, 138.74 USD: too small
            async with pg.transaction():
                await pg.execute(INSERT_VL_ONE, *vl_record(bybit_liquidation()))  # bybit
            await insert(pg, liquidation(2, symbol="XRPUSDT", qty="1", avg_price="5000"))
            await insert(pg, liquidation(3, symbol="ETHUSDT", qty="1", avg_price="5000"))
            await insert(pg, liquidation(4, qty="1", avg_price="1000"))  # exactly the minimum
            frames = await Stream(resp).events(2)
    data = [orjson.loads(f.split(b"data: ", 1)[1]) for f in frames]
    assert [(d["symbol"], d["notional_usd"]) for d in data] == [
        ("ETHUSDT", "5000"),
        ("BTCUSDT", "1000"),
    ]


async def test_bad_parameters_are_a_400_with_a_message(pg_dsn: str) -> None:
    """An unknown venue, a bad number or cursor, an empty span: 400 saying which."""
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        cases = {
            "/v1/liquidations/stream?venue=kraken": "venue: unknown 'kraken'",
            "/v1/liquidations/stream?min_notional_usd=lots": "min_notional_usd: not a number",
            "/v1/liquidations?from=2026-11-21T12:00:00Z&to=2026-11-21T11:00:00Z":
                "from: must be before to",
            "/v1/liquidations?from=yesterday": "from: not an ISO-8601 time",
            "/v1/liquidations?limit=0": "limit: must be a whole number",
            "/v1/coverage?to=2026-11-21T12:00:00": "to: needs a UTC offset",
        }  # fmt: skip
        for path, message in cases.items():
            async with http.get(s.url + path) as resp:
                assert resp.status == 400, path
                assert (await resp.json())["error"].startswith(message), path
        headers = {"Last-Event-ID": "nonsense"}
        async with http.get(f"{s.url}/v1/liquidations/stream", headers=headers) as resp:
            assert resp.status == 400


async def test_last_event_id_resumes_with_exactly_the_missed_rows(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """After a disconnect, Last-Event-ID brings the rows committed meanwhile, once each, then
    the live ones."""
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.url}/v1/liquidations/stream") as resp:
            await insert(pg, fresh(10), fresh(11))
            first = await Stream(resp).events(2)
        await insert(pg, fresh(12))
        await insert(pg, fresh(13), fresh(14))
        await eventually(lambda: s.feed.head, lambda h: str(h) != ids(first)[-1] and h)
        headers = {"Last-Event-ID": ids(first)[-1]}
        async with http.get(f"{s.url}/v1/liquidations/stream", headers=headers) as resp:
            stream = Stream(resp)
            missed = await stream.events(3)
            await insert(pg, fresh(15))
            [live] = await stream.events(1)
    expected = [await cursor_of(pg, "BTCUSDT", 1_795_000_000_000 + i) for i in range(10, 16)]
    assert ids(first) + ids(missed) + ids([live]) == expected


async def test_with_no_stream_open_the_head_follows_the_newest_row_unread(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """No subscriber: the feed reads no rows, its head just moves to the newest final one; a
    stream opened then gets only the rows committed after it."""
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        await insert(pg, fresh(20), fresh(21))
        await insert(pg, fresh(22))
        newest = await cursor_of(pg, "BTCUSDT", 1_795_000_000_022)
        await eventually(lambda: str(s.feed.head) == newest)
        assert metric_value(s.metrics.registry, "collector_feed_rows_total") == 0
        async with http.get(f"{s.url}/v1/liquidations/stream") as resp:
            await insert(pg, fresh(23))
            [frame] = await Stream(resp).events(1)
        assert metric_value(s.metrics.registry, "collector_feed_rows_total") == 1
    assert ids([frame]) == [await cursor_of(pg, "BTCUSDT", 1_795_000_000_023)]


async def test_a_cursor_beyond_the_lookback_or_unknown_gets_an_error_event(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A cursor older than [feed] lookback_s, or of no row, ends the stream with a reason."""
    await insert(pg, liquidation(20))  # received at NOW (2026-11-21), far beyond an hour
    old = await cursor_of(pg, "BTCUSDT", 1_795_000_000_020)
    async with served(pg_dsn, lookback_s=3600.0) as s, aiohttp.ClientSession() as http:
        for cursor, reason in ((old, "cursor_too_old"), ("1-999999", "cursor_unknown")):
            headers = {"Last-Event-ID": cursor}
            async with http.get(f"{s.url}/v1/liquidations/stream", headers=headers) as resp:
                body = await resp.read()
            assert body.startswith(b'event: error\ndata: {"reason":"%s"' % reason.encode())
            assert metric_value(s.metrics.registry, "collector_feed_disconnects_total",
                                reason=reason) == 1  # fmt: skip


async def test_a_transaction_committing_later_with_a_smaller_seq_is_delivered_first(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Row a takes its seq first but commits after row b: the feed waits for a, then sends
    a before b (a seq-only cursor would have passed a by for good)."""
    other = await asyncpg.connect(pg_dsn)
    try:
        async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
            async with http.get(f"{s.url}/v1/liquidations/stream") as resp:
                early = pg.transaction()
                await early.start()
                # a's xid, the older one, taken under the feed lock as writers do (0015)
                await pg.execute("SELECT liquidation_feed_lock(), pg_current_xact_id()")
                await pg.execute(INSERT_ML_ONE, *ml_record(liquidation(30)))
                await insert(other, liquidation(31))  # b commits first, with a larger seq
                # b is committed but not final while a runs: the feed may not hand it out yet
                # (a check at one moment; the order below is what proves nothing was skipped).
                assert metric_value(s.metrics.registry, "collector_feed_rows_total") == 0
                await early.commit()
                frames = await Stream(resp).events(2)
        a = await cursor_of(pg, "BTCUSDT", 1_795_000_000_030)
        b = await cursor_of(pg, "BTCUSDT", 1_795_000_000_031)
        assert int(a.split("-")[1]) < int(b.split("-")[1])
        assert ids(frames) == [a, b]
    finally:
        await other.close()


async def test_two_feeds_over_one_database_emit_the_same_sequence(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """Two replicas' feeds, rows from two connections with interleaved commits: one order."""
    other = await asyncpg.connect(pg_dsn)
    try:
        async with served(pg_dsn) as one, served(pg_dsn) as two, aiohttp.ClientSession() as http:
            async with (
                http.get(f"{one.url}/v1/liquidations/stream") as r1,
                http.get(f"{two.url}/v1/liquidations/stream") as r2,
            ):
                for i in range(0, 20, 2):
                    t1, t2 = pg.transaction(), other.transaction()
                    await t1.start()
                    await t2.start()
                    await pg.execute(INSERT_ML_ONE, *ml_record(liquidation(100 + i)))
                    await other.execute(INSERT_ML_ONE, *ml_record(liquidation(101 + i)))
                    await (t2 if i % 4 else t1).commit()
                    await (t1 if i % 4 else t2).commit()
                first, second = await Stream(r1).events(20), await Stream(r2).events(20)
    finally:
        await other.close()
    assert first == second
    assert len(set(ids(first))) == 20


async def test_a_slow_consumer_is_disconnected_with_its_reason_and_others_keep_receiving(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A client that stops reading is failed (`slow_consumer`) and told so; a reading client
    gets every row."""
    async with served(pg_dsn, page_rows=100, subscriber_buffer=1000, send_buffer=4096) as s:
        port = int(s.url.rsplit(":", 1)[1])
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(raw, ("127.0.0.1", port))
        await loop.sock_sendall(raw, b"GET /v1/liquidations/stream HTTP/1.0\r\n\r\n")
        await eventually(lambda: len(s.feed.subscriptions) == 1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{s.url}/v1/liquidations/stream") as resp:
                for batch in range(40):
                    await insert(pg, *(liquidation(1000 + batch * 100 + i) for i in range(100)))
                frames = await Stream(resp).events(4000)
                registry = s.metrics.registry
                await eventually(
                    lambda: (
                        any(x.failed for x in s.feed.subscriptions)
                        or metric_value(
                            registry, "collector_feed_disconnects_total", reason="slow_consumer"
                        )
                    )
                )
                received = b""
                while chunk := await loop.sock_recv(raw, 65536):
                    received += chunk
                raw.close()
                assert len(set(ids(frames))) == 4000
        assert b'event: error\ndata: {"reason":"slow_consumer"' in received
        assert metric_value(s.metrics.registry, "collector_feed_disconnects_total",
                            reason="slow_consumer") == 1  # fmt: skip


async def test_subscribers_beyond_the_limit_get_a_503(pg_dsn: str) -> None:
    """[feed] max_subscribers streams at most; the next is refused with 503."""
    async with served(pg_dsn, max_subscribers=1) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.url}/v1/liquidations/stream") as first:
            assert first.status == 200
            async with http.get(f"{s.url}/v1/liquidations/stream") as second:
                assert second.status == 503
                assert "too many subscribers (at most 1" in (await second.json())["error"]


async def test_a_heartbeat_comment_comes_when_nothing_happens(pg_dsn: str) -> None:
    """An idle stream carries `: ping` every heartbeat_s."""
    async with served(pg_dsn, heartbeat_s=0.05) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.url}/v1/liquidations/stream") as resp:
            assert await Stream(resp).frame() == b": ping\n\n"


async def test_history_pages_with_a_cursor(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """GET /v1/liquidations returns rows by trade time, `limit` a page, `next` to continue."""
    await insert(pg, *(liquidation(i) for i in range(5)))
    await insert(pg, liquidation(5, symbol="ETHUSDT"))
    span = "from=2026-11-18T11:06:40Z&to=2026-11-18T11:06:41Z&symbol=BTCUSDT"
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        pages, cursor = [], ""
        while True:
            async with http.get(f"{s.url}/v1/liquidations?{span}&limit=2{cursor}") as resp:
                body = await resp.json()
            pages.append([x["trade_time"] for x in body["liquidations"]])
            if body["next"] is None:
                break
            cursor = f"&cursor={body['next']}"
    assert pages == [
        ["2026-11-18T11:06:40.000000Z", "2026-11-18T11:06:40.001000Z"],
        ["2026-11-18T11:06:40.002000Z", "2026-11-18T11:06:40.003000Z"],
        ["2026-11-18T11:06:40.004000Z"],
    ]


async def test_coverage_shows_the_covered_interval_and_the_gap(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """A session from NOW-10min to NOW-5min: that is covered, the rest of the span a gap."""
    ended = NOW - timedelta(minutes=5)
    closed = session(opened_at=NOW - timedelta(minutes=10), last_alive_at=ended,
                     closed_at=ended, close_reason="shutdown")  # fmt: skip
    await pg.execute(UPSERT_SESSION, *session_args(closed))
    query = "from=2026-11-21T11:40:00Z&to=2026-11-21T12:00:00Z&venue=binance"
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.url}/v1/coverage?{query}") as resp:
            body = await resp.json()
    assert body["venues"] == [{
        "venue": "binance",
        "covered": [{"start": "2026-11-21T11:50:00.000000Z", "end": "2026-11-21T11:55:00.000000Z",
                     "repaired": False}],
        "gaps": [
            {"start": "2026-11-21T11:40:00.000000Z", "end": "2026-11-21T11:50:00.000000Z",
             "repaired": False, "repair_sources": None},
            {"start": "2026-11-21T11:55:00.000000Z", "end": "2026-11-21T12:00:00.000000Z",
             "repaired": False, "repair_sources": None},
        ],
    }]  # fmt: skip


def test_a_token_is_required_off_loopback(tmp_path: Path) -> None:
    """host 0.0.0.0 with the API and no api_token_file is a config error; with one it loads."""
    with pytest.raises(ConfigError) as err:
        load_config({"COLLECTOR_HTTP_HOST": "0.0.0.0"})
    assert err.value.problems == [
        "[http] api_token_file: required when host '0.0.0.0' is not loopback and api_enabled"
        " (or set api_enabled = false)"
    ]
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = {"COLLECTOR_HTTP_HOST": "0.0.0.0", "COLLECTOR_HTTP_API_TOKEN_FILE": str(token)}
    assert load_config(env).http.api_token_file == str(token)
    assert load_config({"COLLECTOR_HTTP_HOST": "::1"}).http.api_enabled


async def test_the_token_is_checked(pg_dsn: str, tmp_path: Path) -> None:
    """With api_token_file, /v1 needs `Authorization: Bearer <token>`; /healthz does not."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    http_config = HttpConfig(port=0, api_token_file=str(token))
    async with served(pg_dsn, http=http_config) as s, aiohttp.ClientSession() as http:
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                ({"Authorization": "Bearer s3cret"}, 200)):  # fmt: skip
            async with http.get(f"{s.url}/v1/liquidations", headers=headers) as resp:
                assert resp.status == status
        async with http.get(f"{s.url}/healthz") as resp:
            assert resp.status == 200
