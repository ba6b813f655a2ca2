"""The Bybit emulator against real aiohttp clients on loopback (docs/bybit.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType

from collector.emulator.bybit import BybitEmulator, BybitOptions, make_bybit_liquidation
from collector.sources.bybit_parse import parse_instruments_page

Start = Callable[..., Awaitable[BybitEmulator]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start Bybit emulators with option overrides; stop them after the test."""
    started: list[BybitEmulator] = []

    async def make(**changes: Any) -> BybitEmulator:
        emulator = BybitEmulator(BybitOptions(**changes))
        started.append(emulator)
        await emulator.start()
        return emulator

    yield make
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as client:
        yield client


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The next text frame, decoded, or TimeoutError after 5 s."""
    async with asyncio.timeout(5):
        msg = await ws.receive()
    assert msg.type is WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def request(ws: aiohttp.ClientWebSocketResponse, body: dict[str, Any]) -> Any:
    """Send an op and return the reply."""
    await ws.send_str(orjson.dumps(body).decode())
    return await receive_json(ws)


async def test_subscribe_ping_and_batched_push(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """Subscribe and ping get the documented replies; one symbol's batch is one push frame."""
    emulator = await start()
    async with session.ws_connect(emulator.ws_url + "/v5/public/linear") as ws:
        [conn] = await emulator.wait_for_connections(1)
        reply = await request(
            ws, {"req_id": "s1", "op": "subscribe", "args": ["allLiquidation.BTCUSDT"]}
        )
        assert reply == {
            "success": True, "ret_msg": "", "conn_id": conn.conn_id, "req_id": "s1",
            "op": "subscribe",
        }  # fmt: skip
        assert await request(ws, {"op": "ping"}) == {
            "success": True, "ret_msg": "pong", "conn_id": conn.conn_id, "req_id": "",
            "op": "ping",
        }  # fmt: skip
        items = [
            make_bybit_liquidation("BTCUSDT", "Buy", "0.5", "60000.1", 1739502302929),
            make_bybit_liquidation("BTCUSDT", "Sell", "0.010", "60001", 1739502302930),
            make_bybit_liquidation("ETHUSDT", "Sell", "1", "3000", 1739502302931),
        ]
        assert await emulator.publish("linear", items) == 1  # ETHUSDT has no subscriber
        push = await receive_json(ws)
        assert (push["topic"], push["type"], push["data"]) == (
            "allLiquidation.BTCUSDT", "snapshot", items[:2],
        )  # fmt: skip
        assert await emulator.publish("inverse", [items[0]]) == 0  # another category's host


async def test_subscribe_errors_change_nothing(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """Unknown symbols, other topics, duplicates and unknown ops are refused with success false."""
    emulator = await start()
    async with session.ws_connect(emulator.ws_url + "/v5/public/inverse") as ws:
        ok = await request(ws, {"op": "subscribe", "args": ["allLiquidation.BTCUSD"]})
        assert ok["success"] is True
        cases = [
            (["allLiquidation.BTCUSDT"], "Invalid symbol :[allLiquidation.BTCUSDT]"),
            (["orderbook.1.BTCUSD"], "error:handler not found,topic:orderbook.1.BTCUSD"),
            (["allLiquidation.BTCUSD"], "error:already subscribed,topic:allLiquidation.BTCUSD"),
        ]
        for args, message in cases:
            reply = await request(ws, {"op": "subscribe", "args": ["allLiquidation.ETHUSD", *args]})
            assert (reply["success"], reply["ret_msg"]) == (False, message)
        reply = await request(ws, {"op": "auth", "args": []})
        assert (reply["success"], reply["ret_msg"], reply["op"]) == (
            False, "error:unknown op auth", "auth",
        )  # fmt: skip
        [conn] = emulator.connections
        assert conn.topics == ["inverse:allLiquidation.BTCUSD"]


async def test_args_limit_counts_the_json_text(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """Subscriptions whose JSON args array would pass max_args_chars are refused."""
    emulator = await start(max_args_chars=len(orjson.dumps(["allLiquidation.BTCUSDT"])))
    async with session.ws_connect(emulator.ws_url + "/v5/public/linear") as ws:
        first = await request(ws, {"op": "subscribe", "args": ["allLiquidation.BTCUSDT"]})
        second = await request(ws, {"op": "subscribe", "args": ["allLiquidation.ETHUSDT"]})
        assert (first["success"], second["success"]) == (True, False)
        assert second["ret_msg"] == "error:args length exceeds 26 characters"


async def test_faults_malformed_drop_and_idle_cut(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """A raw malformed frame arrives as sent; drops end the socket; silence past the idle
    timeout closes it."""
    emulator = await start(idle_timeout_s=0.3)
    async with session.ws_connect(emulator.ws_url + "/v5/public/linear") as ws:
        await emulator.wait_for_connections(1)
        assert await emulator.send_raw('{"topic":') == 1
        async with asyncio.timeout(5):
            assert (await ws.receive()).data == '{"topic":'
        assert emulator.drop_connections() == 1
        async with asyncio.timeout(5):
            assert (await ws.receive()).type in (WSMsgType.CLOSED, WSMsgType.ERROR)
    async with session.ws_connect(emulator.ws_url + "/v5/public/linear") as ws:
        async with asyncio.timeout(5):
            msg = await ws.receive()
        assert (msg.type, ws.close_code) == (WSMsgType.CLOSE, 1000)
    assert emulator.stats.disconnects["idle"] == 1


async def test_refused_upgrades(start: Start, session: aiohttp.ClientSession) -> None:
    """Scripted failures and the connection-rate limit refuse upgrades with their status."""
    emulator = await start(connections_per_window=2)
    emulator.fail_upgrades(1, 503)
    with pytest.raises(aiohttp.WSServerHandshakeError) as failed:
        await session.ws_connect(emulator.ws_url + "/v5/public/linear")
    assert failed.value.status == 503
    for _ in range(2):
        ws = await session.ws_connect(emulator.ws_url + "/v5/public/linear")
        await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as limited:
        await session.ws_connect(emulator.ws_url + "/v5/public/linear")
    assert limited.value.status == 429
    assert (emulator.stats.upgrades_failed, emulator.stats.upgrades_rate_limited) == (1, 1)


async def test_instruments_info_pages_with_a_cursor(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """instruments-info pages by cursor until an empty nextPageCursor; delistings drop out."""
    symbols = tuple(f"SYM{i}USDT" for i in range(5))
    emulator = await start(linear_symbols=symbols)
    emulator.delist("linear", "SYM4USDT")
    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        params = {"category": "linear", "limit": "2"} | ({"cursor": cursor} if cursor else {})
        async with session.get(
            emulator.rest_url + "/v5/market/instruments-info", params=params
        ) as r:
            page = parse_instruments_page(await r.read(), category="linear")
        seen += [i.symbol for i in page.instruments]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ["SYM0USDT", "SYM1USDT", "SYM2USDT", "SYM3USDT"]
    async with session.get(
        emulator.rest_url + "/v5/market/instruments-info", params={"category": "spot"}
    ) as r:
        assert (await r.json())["retCode"] == 10001


async def test_rest_rate_limit(start: Start, session: aiohttp.ClientSession) -> None:
    """Past rest_limit requests in one window the answer is 403 "access too frequent"."""
    emulator = await start(rest_limit=3)
    emulator.rest_limit.clock = lambda: 100.0  # the whole burst in one window
    statuses = []
    for _ in range(4):
        async with session.get(
            emulator.rest_url + "/v5/market/instruments-info", params={"category": "inverse"}
        ) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 200, 403]
    emulator.rest_limit.clock = lambda: 106.0  # the window has passed
    async with session.get(
        emulator.rest_url + "/v5/market/instruments-info", params={"category": "inverse"}
    ) as r:
        assert r.status == 200


async def test_generator_pushes_seeded_batches(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """With a rate, subscribers get batched pushes of well-formed liquidations."""
    emulator = await start(rate_per_s=200, push_interval_s=0.05, linear_symbols=("BTCUSDT",))
    async with session.ws_connect(emulator.ws_url + "/v5/public/linear") as ws:
        await request(ws, {"op": "subscribe", "args": ["allLiquidation.BTCUSDT"]})
        push = await receive_json(ws)
        assert push["topic"] == "allLiquidation.BTCUSDT"
        assert all(set(item) == {"T", "s", "S", "v", "p"} for item in push["data"])
