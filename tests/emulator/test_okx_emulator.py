"""The OKX emulator against real aiohttp clients on loopback (docs/okx.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType

from collector.emulator.okx import OkxEmulator, OkxOptions, make_okx_detail
from collector.sources.okx_parse import parse_frame, parse_instruments, parse_liquidation_orders

Start = Callable[..., Awaitable[OkxEmulator]]
NOW_MS = 1_800_000_000_000
SUB = {"channel": "liquidation-orders", "instType": "SWAP"}


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start OKX emulators with option overrides; stop them after the test."""
    started: list[OkxEmulator] = []

    async def make(**changes: Any) -> OkxEmulator:
        emulator = OkxEmulator(OkxOptions(**changes))
        emulator.clock = lambda: NOW_MS / 1000
        emulator.liquidation_orders_limit.clock = lambda: 5.0
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


async def receive_text(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The next text frame, or TimeoutError after 5 s."""
    async with asyncio.timeout(5):
        msg = await ws.receive()
    assert msg.type is WSMsgType.TEXT, msg
    assert isinstance(msg.data, str)
    return msg.data


async def request(ws: aiohttp.ClientWebSocketResponse, body: dict[str, Any]) -> Any:
    """Send a request and return the decoded reply."""
    await ws.send_str(orjson.dumps(body).decode())
    return orjson.loads(await receive_text(ws))


async def test_subscribe_ping_and_push(start: Start, session: aiohttp.ClientSession) -> None:
    """Subscribe gets the documented ack, text ping a text pong, and a push reaches the
    subscribers of its instType only."""
    emulator = await start()
    async with session.ws_connect(emulator.ws_url + "/ws/v5/public") as ws:
        [conn] = await emulator.wait_for_connections(1)
        ack = await request(ws, {"id": "1512", "op": "subscribe", "args": [SUB]})
        assert ack == {"id": "1512", "event": "subscribe", "arg": SUB, "connId": conn.conn_id}
        await ws.send_str("ping")
        assert await receive_text(ws) == "pong"
        detail = make_okx_detail("buy", "short", "13", "0.007831", NOW_MS)
        assert await emulator.publish("IOST-USDT-SWAP", [detail]) == 1
        assert await emulator.publish("BTC-USDT-261225", [detail]) == 0  # FUTURES: unsubscribed
        [row] = parse_frame(await receive_text(ws), received_at=datetime.now(UTC))
        assert (row.symbol, row.wire_field("sz"), row.wire_field("instFamily")) == (
            "IOST-USDT-SWAP", "13", "IOST-USDT",
        )  # fmt: skip


async def test_error_events(start: Start, session: aiohttp.ClientSession) -> None:
    """Bad channels, ops, args and JSON get `error` events with OKX's codes."""
    emulator = await start()
    async with session.ws_connect(emulator.ws_url + "/ws/v5/public") as ws:
        bad_type = await request(
            ws, {"id": "1", "op": "subscribe", "args": [SUB | {"instType": "SPOT"}]}
        )
        assert (bad_type["id"], bad_type["event"], bad_type["code"]) == ("1", "error", "60018")
        assert (await request(ws, {"op": "login", "args": []}))["code"] == "60019"
        assert (await request(ws, {"op": "subscribe", "args": []}))["code"] == "60013"
        await ws.send_str("{nope")
        assert orjson.loads(await receive_text(ws))["code"] == "60012"
        assert emulator.connections[0].topics == []


async def test_no_data_cut_and_ping_keeps_alive(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """A subscribed connection that hears nothing for no_data_timeout_s is closed with 4004;
    pings (answered by pongs) keep one alive; no subscription at all is cut as well."""
    emulator = await start(no_data_timeout_s=0.4)
    async with session.ws_connect(emulator.ws_url + "/ws/v5/public") as quiet:
        await request(quiet, {"op": "subscribe", "args": [SUB]})
        async with session.ws_connect(emulator.ws_url + "/ws/v5/public") as pinging:
            await request(pinging, {"op": "subscribe", "args": [SUB]})
            closed = asyncio.ensure_future(quiet.receive())
            async with asyncio.timeout(5):
                # Ping every 0.1 s (a keep-alive cadence, as a client would) until the quiet
                # connection is cut, and a few times more.
                for _ in range(200):
                    if closed.done():
                        break
                    await pinging.send_str("ping")
                    assert await receive_text(pinging) == "pong"
                    await asyncio.sleep(0.1)
                msg = await closed
                for _ in range(3):
                    await pinging.send_str("ping")
                    assert await receive_text(pinging) == "pong"
                    await asyncio.sleep(0.1)
            assert (msg.type, quiet.close_code) == (WSMsgType.CLOSE, 4004)
            assert not pinging.closed
    async with session.ws_connect(emulator.ws_url + "/ws/v5/public") as idle:
        async with asyncio.timeout(5):
            await idle.receive()
        assert idle.close_code == 4004


async def test_oversized_request_and_faults(start: Start, session: aiohttp.ClientSession) -> None:
    """A request over 64 KB closes with 1009; raw frames and notices arrive; stalls hold data."""
    emulator = await start(max_request_bytes=1000)
    async with session.ws_connect(emulator.ws_url + "/ws/v5/public") as ws:
        await request(ws, {"op": "subscribe", "args": [SUB]})
        assert await emulator.send_raw('{"arg":') == 1
        assert await receive_text(ws) == '{"arg":'
        assert await emulator.send_notice() == 1
        assert orjson.loads(await receive_text(ws))["code"] == "64008"
        emulator.stall(60)
        detail = make_okx_detail("sell", "net", "1", "65000", NOW_MS)
        assert await emulator.publish("BTC-USDT-SWAP", [detail]) == 0
        await ws.send_str("x" * 1001)
        async with asyncio.timeout(5):
            assert (await ws.receive()).type is WSMsgType.CLOSE
        assert ws.close_code == 1009


async def test_instruments(start: Start, session: aiohttp.ClientSession) -> None:
    """Instruments per instType carry the contract terms the parser needs."""
    emulator = await start()
    async with session.get(
        emulator.rest_url + "/api/v5/public/instruments", params={"instType": "SWAP"}
    ) as r:
        rows = parse_instruments(await r.read())
    terms = {i.inst_id: (i.ct_val, i.ct_val_ccy) for i in rows}
    assert terms["BTC-USD-SWAP"] == (Decimal(100), "USD")
    assert terms["BTC-USDT-SWAP"] == (Decimal("0.01"), "BTC")


async def liquidation_orders(
    emulator: OkxEmulator, session: aiohttp.ClientSession, **params: str
) -> tuple[int, bytes]:
    async with session.get(
        emulator.rest_url + "/api/v5/public/liquidation-orders", params=params
    ) as r:
        return r.status, await r.read()


async def test_liquidation_orders_window_and_filters(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """REST serves filled liquidations of one family from the last day, newest first,
    including ones the stream never pushed."""
    emulator = await start()
    old = make_okx_detail("sell", "net", "1", "60000", NOW_MS - 86_400_001)
    missed = make_okx_detail("sell", "long", "2", "65000.5", NOW_MS - 5000)
    seen = make_okx_detail("buy", "net", "3", "65001", NOW_MS - 1000)
    await emulator.publish("BTC-USDT-SWAP", [old, missed], stream=False)
    await emulator.publish("BTC-USDT-SWAP", [seen])
    await emulator.publish("ETH-USDT-SWAP", [make_okx_detail("buy", "net", "1", "3000", NOW_MS)])
    status, body = await liquidation_orders(
        emulator, session, instType="SWAP", instFamily="BTC-USDT", state="filled"
    )
    assert status == 200
    rows = parse_liquidation_orders(body, received_at=datetime.now(UTC))
    assert [r.wire_field("sz") for r in rows] == ["3", "2"]
    _, by_uly = await liquidation_orders(
        emulator, session, instType="SWAP", uly="BTC-USDT", state="filled", after=str(NOW_MS - 2000)
    )
    assert [
        r.wire_field("sz") for r in parse_liquidation_orders(by_uly, received_at=datetime.now(UTC))
    ] == ["2"]
    _, unfilled = await liquidation_orders(
        emulator, session, instType="SWAP", instFamily="BTC-USDT"
    )
    assert orjson.loads(unfilled) == {"code": "0", "msg": "", "data": []}
    status, missing = await liquidation_orders(emulator, session, instType="SWAP")
    assert (status, orjson.loads(missing)["code"]) == (400, "50015")


async def test_liquidation_orders_rate_limit(start: Start, session: aiohttp.ClientSession) -> None:
    """The 41st request within 2 s gets 429 with code 50011."""
    emulator = await start()
    statuses = [
        (await liquidation_orders(emulator, session, instType="SWAP", instFamily="BTC-USDT"))[0]
        for _ in range(41)
    ]
    assert statuses == [200] * 40 + [429]
    _, body = await liquidation_orders(emulator, session, instType="SWAP", instFamily="BTC-USDT")
    assert orjson.loads(body) == {"code": "50011", "msg": "Too Many Requests", "data": []}


async def test_liquidation_orders_can_be_missing(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """The endpoint can answer 404 or the documented 'inactive' error, as it may in production."""
    emulator = await start(liquidation_orders_mode="not_found")
    status, _ = await liquidation_orders(emulator, session, instType="SWAP", instFamily="BTC-USDT")
    assert status == 404
    emulator.liquidation_orders_mode = "error"
    status, body = await liquidation_orders(
        emulator, session, instType="SWAP", instFamily="BTC-USDT"
    )
    assert (status, orjson.loads(body)["code"]) == (410, "50005")
    assert emulator.liquidation_orders_requests == 2


async def test_connection_rate_limit(start: Start, session: aiohttp.ClientSession) -> None:
    """Past connections_per_s upgrades in a second, upgrades are refused with 429."""
    emulator = await start(connections_per_s=1)
    async with session.ws_connect(emulator.ws_url + "/ws/v5/public"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(emulator.ws_url + "/ws/v5/public")
    assert refused.value.status == 429
