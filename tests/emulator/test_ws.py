"""The Binance emulator against real aiohttp clients on loopback (docs/binance.md §1,
§3, §6), plus its pure event generator."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import WSMsgType, web

from collector.emulator import (
    Emulator,
    EmulatorOptions,
    EventGenerator,
    make_force_order_event,
    run_simulator,
    synthetic_symbols,
)
from collector.emulator.events import market_spec
from collector.emulator.market_rest import add_route_weight

StartEmulator = Callable[..., Awaitable[Emulator]]

BTCUSDT = make_force_order_event(
    "BTCUSDT", "SELL", "0.014", "9910", "9910", 1782800000120, 1782800000123, symbol_type=1
)
ETHUSDT = make_force_order_event(
    "ETHUSDT", "BUY", "1.5", "3210.5", "3201.25", 1782800000200, 1782800000210, symbol_type=1
)
BTCUSD_PERP = make_force_order_event(
    "BTCUSD_PERP", "SELL", "1", "9425.5", "9496.5", 1782800000949, 1782800000950, symbol_type=2
)


@pytest.fixture
async def start_emulator() -> AsyncIterator[StartEmulator]:
    """Start emulators with the given option overrides and stop them after the test."""
    started: list[Emulator] = []

    async def start(**changes: Any) -> Emulator:
        emulator = Emulator(EmulatorOptions(**changes))
        started.append(emulator)
        await emulator.start()
        return emulator

    yield start
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as client:
        yield client


Connect = Callable[..., AbstractAsyncContextManager[list[aiohttp.ClientWebSocketResponse]]]


@pytest.fixture
def connect(session: aiohttp.ClientSession) -> Connect:
    """`async with connect(emulator, "fstream/market/ws", "dstream/ws") as [a, b]`: websockets
    to those paths of the emulator's hosts (`ws_connect` keywords apply to each), once the
    emulator counts them all open (`wait=False`: at once); closed on leaving the block."""

    @contextlib.asynccontextmanager
    async def connected(
        emulator: Emulator, *targets: str, wait: bool = True, **kwargs: Any
    ) -> AsyncIterator[list[aiohttp.ClientWebSocketResponse]]:
        async with contextlib.AsyncExitStack() as stack:
            sockets = []
            for target in targets:
                host, _, path = target.partition("/")
                url = f"{emulator.urls[host]}/{path}"
                sockets.append(await stack.enter_async_context(session.ws_connect(url, **kwargs)))
            if wait:
                await emulator.wait_for_connections(len(targets))
            yield sockets

    return connected


async def next_frame(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The next frame from the server, or TimeoutError after 5 s."""
    async with asyncio.timeout(5):
        return await ws.receive()


async def next_text(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The next frame, which must be a text frame."""
    msg = await next_frame(ws)
    assert msg.type is WSMsgType.TEXT, msg
    assert isinstance(msg.data, str)
    return msg.data


async def request(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> str:
    """Send a control message and return the next text frame."""
    await ws.send_str(dumps(message))
    return await next_text(ws)


def dumps(value: Any) -> str:
    """Serialise like the emulator does (compact orjson)."""
    return orjson.dumps(value).decode()


def wrapped(stream: str, event: dict[str, Any]) -> str:
    """The combined-stream envelope of `event` (§1.2)."""
    return dumps({"stream": stream, "data": event})


# -- routing and envelopes (§1.1, §1.2) ------------------------------------------------------


async def test_market_route_raw_and_combined(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """`/market/stream` gets the envelope and `/market/ws/<stream>` the bare event."""
    emulator = await start_emulator()
    async with connect(
        emulator,
        "fstream/market/stream?streams=!forceOrder@arr",
        "fstream/market/ws/!forceOrder@arr",
    ) as [combined, raw]:
        connections = await emulator.wait_for_connections(2)
        assert [(c.route, c.is_combined) for c in connections] == [
            ("market", True),
            ("market", False),
        ]
        assert await emulator.publish(BTCUSDT) == 2
        assert await next_text(combined) == wrapped("!forceOrder@arr", BTCUSDT)
        assert await next_text(raw) == dumps(BTCUSDT)


@pytest.mark.parametrize(
    "path",
    [
        "/ws/!forceOrder@arr",
        "/stream?streams=!forceOrder@arr",
        "/public/stream?streams=!forceOrder@arr",
        "/private/ws/!forceOrder@arr",
    ],
)
async def test_force_orders_silent_off_market_route(
    start_emulator: StartEmulator, connect: Connect, path: str
) -> None:
    """fstream connections outside `/market` are accepted but never get liquidations."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream" + path) as [ws]:
        assert await emulator.publish(BTCUSDT) == 0
        # The reply to a later request is the first frame: nothing was sent before it.
        reply = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert reply == '{"result":["!forceOrder@arr"],"id":1}'


async def test_one_message_per_matching_stream(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """A connection on both `!forceOrder@arr` and `btcusdt@forceOrder` gets the event twice."""
    emulator = await start_emulator()
    url = "fstream/market/stream?streams=!forceOrder@arr/btcusdt@forceOrder"
    async with connect(emulator, url) as [ws]:
        assert await emulator.publish(BTCUSDT) == 1
        assert await emulator.publish(ETHUSDT) == 1
        assert await next_text(ws) == wrapped("!forceOrder@arr", BTCUSDT)
        assert await next_text(ws) == wrapped("btcusdt@forceOrder", BTCUSDT)
        assert await next_text(ws) == wrapped("!forceOrder@arr", ETHUSDT)
    assert emulator.stats.frames_sent == 3


async def test_merged_universe_on_both_hosts(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """After the merge both hosts carry UM and CM events, per-symbol streams included."""
    emulator = await start_emulator(merged=True)
    async with connect(
        emulator,
        "fstream/market/stream?streams=!forceOrder@arr",
        "dstream/stream?streams=!forceOrder@arr",
        "fstream/market/ws/btcusd_perp@forceOrder",
        "dstream/ws/btcusdt@forceOrder",
    ) as [f_all, d_all, f_cm, d_um]:
        assert await emulator.publish(BTCUSD_PERP) == 3
        assert await emulator.publish(BTCUSDT) == 3
        assert await next_text(f_all) == wrapped("!forceOrder@arr", BTCUSD_PERP)
        assert await next_text(f_all) == wrapped("!forceOrder@arr", BTCUSDT)
        assert await next_text(d_all) == wrapped("!forceOrder@arr", BTCUSD_PERP)
        assert await next_text(d_all) == wrapped("!forceOrder@arr", BTCUSDT)
        assert await next_text(f_cm) == dumps(BTCUSD_PERP)
        assert await next_text(d_um) == dumps(BTCUSDT)


async def test_unmerged_hosts_carry_their_own_universe(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """Before the merge UM events only reach fstream and CM events only dstream."""
    emulator = await start_emulator(merged=False)
    cm_event = make_force_order_event(
        "BTCUSD_PERP", "SELL", "1", "9425.5", "9496.5", 1591154240949, 1591154240950, pair="BTCUSD"
    )
    um_event = make_force_order_event("BTCUSDT", "SELL", "0.014", "9910", "9910", 5, 6)
    async with connect(
        emulator, "fstream/market/ws/!forceOrder@arr", "dstream/ws/!forceOrder@arr"
    ) as [fstream, dstream]:
        assert await emulator.publish(cm_event) == 1
        assert await emulator.publish(um_event) == 1
        assert await next_text(dstream) == dumps(cm_event)
        assert await next_text(fstream) == dumps(um_event)
        # `ps` inside `o` alone marks a COIN-M event (§1.3); no `st` before the merge.
        assert '"o":{"s":"BTCUSD_PERP","ps":"BTCUSD",' in dumps(cm_event)
        assert "st" not in cm_event


# -- live control (§1.5) -----------------------------------------------------------------------


async def test_live_subscribe_list_unsubscribe_and_combined(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """SUBSCRIBE, LIST_SUBSCRIPTIONS, UNSUBSCRIBE and the `combined` property, with data."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream/market/ws") as [ws]:
        subscribe = {
            "method": "SUBSCRIBE",
            "params": ["btcusdt@forceOrder", "!forceOrder@arr"],
            "id": 1,
        }
        assert await request(ws, subscribe) == '{"result":null,"id":1}'
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2}) == (
            '{"result":["btcusdt@forceOrder","!forceOrder@arr"],"id":2}'
        )
        get_combined = {"method": "GET_PROPERTY", "params": ["combined"], "id": 3}
        assert await request(ws, get_combined) == '{"result":false,"id":3}'
        assert await emulator.publish(ETHUSDT) == 1
        assert await next_text(ws) == dumps(ETHUSDT)

        unsubscribe = {"method": "UNSUBSCRIBE", "params": ["!forceOrder@arr"], "id": 312}
        assert await request(ws, unsubscribe) == '{"result":null,"id":312}'
        assert await emulator.publish(ETHUSDT) == 0
        set_combined = {"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}
        assert await request(ws, set_combined) == '{"result":null,"id":5}'
        assert await emulator.publish(BTCUSDT) == 1
        assert await next_text(ws) == wrapped("btcusdt@forceOrder", BTCUSDT)
        assert emulator.connections[0].streams == {"btcusdt@forceOrder"}
        assert emulator.connections[0].messages_received == 5


_UNKNOWN_METHOD = (
    "Invalid request: unknown variant FOO, expected one of SUBSCRIBE, UNSUBSCRIBE, "
    "LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY"
)


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        (
            {"method": "SUBSCRIBE", "params": ["btcusdt@forceOrder"], "id": "a"},
            {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
             "id": None},
        ),
        (
            {"method": "LIST_SUBSCRIPTIONS", "id": -1},
            {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
             "id": None},
        ),
        ({"method": "FOO", "id": 4}, {"error": {"code": 2, "msg": _UNKNOWN_METHOD}, "id": 4}),
        (
            {"params": [], "id": 5},
            {"error": {"code": 2, "msg": "Invalid request: missing field `method`"}, "id": 5},
        ),
        (
            {"method": "LIST_SUBSCRIPTIONS", "params": ["x"], "id": 6},
            {"error": {"code": 2, "msg": "Invalid request: too many parameters"}, "id": 6},
        ),
        (
            {"method": "GET_PROPERTY", "params": ["combined", "x"], "id": 7},
            {"error": {"code": 2, "msg": "Invalid request: too many parameters"}, "id": 7},
        ),
        (
            {"method": "SET_PROPERTY", "params": ["compressed", True], "id": 8},
            {"error": {"code": 0, "msg": "Unknown property"}, "id": 8},
        ),
        (
            {"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 9},
            {"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": 9},
        ),
        (
            {"method": "GET_PROPERTY", "params": [1], "id": 10},
            {"error": {"code": 2, "msg": "Invalid request: property name must be a string"},
             "id": 10},
        ),
    ],
)  # fmt: skip
async def test_control_error_replies(
    start_emulator: StartEmulator,
    connect: Connect,
    message: dict[str, Any],
    reply: dict[str, Any],
) -> None:
    """A bad control request gets the documented error reply and the connection stays open."""
    emulator = await start_emulator()
    async with connect(emulator, "dstream/ws") as [ws]:
        assert await request(ws, message) == dumps(reply)
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 11}) == (
            '{"result":[],"id":11}'
        )


async def test_invalid_json_gets_error_then_disconnect(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """Invalid JSON is answered with code 3 and the connection is closed."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream/market/ws") as [ws]:
        await ws.send_str("hello")
        assert await next_text(ws) == (
            '{"error":{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"}}'
        )
        closing = await next_frame(ws)
        assert (closing.type, ws.close_code) == (WSMsgType.CLOSE, 1008)
    await emulator.wait_until(lambda: not emulator.connections)
    assert emulator.stats.disconnects == {"invalid_json": 1}


async def test_stream_limit_on_url_and_subscribe(
    start_emulator: StartEmulator, session: aiohttp.ClientSession, connect: Connect
) -> None:
    """Too many streams in the URL refuse the upgrade with 400; in SUBSCRIBE, an error reply."""
    emulator = await start_emulator(max_streams_um=2, max_streams_cm=1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(f"{emulator.fstream_url}/market/stream?streams=a/b/c")
    assert refused.value.status == 400
    async with connect(emulator, "dstream/stream?streams=a") as [ws]:
        reply = await request(ws, {"method": "SUBSCRIBE", "params": ["b"], "id": 1})
        assert reply == (
            '{"error":{"code":2,"msg":"Invalid request: too many streams (max 1)"},"id":1}'
        )
        assert await request(ws, {"method": "SUBSCRIBE", "params": ["a"], "id": 2}) == (
            '{"result":null,"id":2}'
        )
    assert emulator.stats.upgrades_rejected == 1


# -- connection rules (§1.4) -------------------------------------------------------------------


async def test_ping_payload_echoed_keeps_connection(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """Server pings carry a millisecond timestamp; echoing it keeps the connection past the
    pong deadline."""
    emulator = await start_emulator(ping_interval_s=0.2, pong_timeout_s=0.5)
    async with connect(emulator, "fstream/market/ws", autoping=False) as [ws]:
        for _ in range(4):  # 0.8 s, well past the pong timeout
            ping = await next_frame(ws)
            assert ping.type is WSMsgType.PING
            assert re.fullmatch(rb"\d{13}", ping.data)
            await ws.pong(ping.data)
        info = emulator.connections[0]
        await emulator.wait_until(lambda: info.pongs_received == 4)
        assert (info.last_pong_matched, info.last_pong_payload) == (True, ping.data)
        assert (info.pings_sent, info.close_reason) == (4, None)
    assert emulator.stats.pongs_received == 4


async def test_missing_or_wrong_pong_disconnects(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """Pongs with another payload do not count: the connection is closed at the deadline."""
    emulator = await start_emulator(ping_interval_s=0.05, pong_timeout_s=0.2)
    async with connect(emulator, "dstream/ws", autoping=False, wait=False) as [ws]:
        frames = []
        while (msg := await next_frame(ws)).type is WSMsgType.PING:
            frames.append(msg)
            await ws.pong(b"not-the-payload")
        assert (msg.type, ws.close_code, msg.extra) == (WSMsgType.CLOSE, 1008, "No pong")
        assert frames
    assert emulator.stats.disconnects == {"pong_timeout": 1}


async def test_lifetime_cut(start_emulator: StartEmulator, connect: Connect) -> None:
    """A connection is closed with 1001 when it reaches max_lifetime_s."""
    emulator = await start_emulator(max_lifetime_s=0.2)
    async with connect(emulator, "fstream/market/ws", wait=False) as [ws]:
        msg = await next_frame(ws)
        assert (msg.type, ws.close_code, msg.extra) == (WSMsgType.CLOSE, 1001, "Lifetime exceeded")
    assert emulator.stats.disconnects == {"lifetime": 1}


async def test_incoming_message_rate_limit(start_emulator: StartEmulator, connect: Connect) -> None:
    """Pings count toward the per-connection message rate; one over the limit disconnects."""
    emulator = await start_emulator(max_incoming_per_s=3)
    async with connect(emulator, "fstream/market/ws", autoping=False) as [ws]:
        for payload in (b"1", b"2", b"3", b"4"):
            await ws.ping(payload)
        for payload in (b"1", b"2", b"3"):
            pong = await next_frame(ws)
            assert (pong.type, pong.data) == (WSMsgType.PONG, payload)
        msg = await next_frame(ws)
        assert (msg.type, ws.close_code) == (WSMsgType.CLOSE, 1008)
    assert emulator.stats.disconnects == {"rate_limit": 1}


# -- scripted faults ---------------------------------------------------------------------------


async def test_fail_upgrades(
    start_emulator: StartEmulator, session: aiohttp.ClientSession, connect: Connect
) -> None:
    """The next `count` upgrades get the scripted status; the one after succeeds."""
    emulator = await start_emulator()
    emulator.fail_upgrades(2)
    for _ in range(2):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{emulator.fstream_url}/market/ws")
        assert refused.value.status == 503
    async with connect(emulator, "fstream/market/ws", wait=False):
        await emulator.wait_for_connections(1)
    assert (emulator.stats.upgrades_failed, emulator.stats.upgrades) == (2, 1)


async def test_drop_connections(start_emulator: StartEmulator, connect: Connect) -> None:
    """Dropping closes the TCP connections without a close frame, per host or all."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream/market/ws", "dstream/ws") as [fstream, dstream]:
        assert await emulator.drop_connections("dstream") == 1
        assert (await next_frame(dstream)).type is WSMsgType.CLOSED
        assert [c.host for c in await emulator.wait_for_connections(1)] == ["fstream"]
        assert await emulator.drop_connections() == 1
        assert (await next_frame(fstream)).type is WSMsgType.CLOSED
    await emulator.wait_until(lambda: not emulator.connections)
    assert emulator.stats.disconnects == {"dropped": 2}


async def test_close_connections_sends_a_close_frame(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """A scripted server close ends each open connection (per host or all) with 1001."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream/market/ws", "dstream/ws") as [fstream, dstream]:
        assert emulator.close_connections("fstream") == 1
        msg = await next_frame(fstream)
        assert (msg.type, fstream.close_code, msg.extra) == (
            WSMsgType.CLOSE,
            1001,
            "Server closing",
        )
        assert emulator.close_connections() == 1
        msg = await next_frame(dstream)
        assert (msg.type, dstream.close_code) == (WSMsgType.CLOSE, 1001)
    await emulator.wait_until(lambda: not emulator.connections)
    assert emulator.stats.disconnects == {"closed": 2}


async def test_send_raw_reaches_only_that_host(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """`send_raw` pushes an arbitrary text frame to every connection on one host."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream/ws", "dstream/ws") as [fstream, dstream]:
        assert await emulator.send_raw('{"e":"forceOrder",', host="dstream") == 1
        assert await next_text(dstream) == '{"e":"forceOrder",'
        reply = await request(fstream, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert reply == '{"result":[],"id":1}'


async def test_stall_drops_data_but_keeps_sockets(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """While stalled, events are not delivered but control replies are; stall(0) resumes."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream/market/ws/!forceOrder@arr") as [ws]:
        emulator.stall(60)
        assert await emulator.publish(BTCUSDT) == 0
        reply = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert reply == '{"result":["!forceOrder@arr"],"id":1}'
        emulator.stall(0)
        assert await emulator.publish(ETHUSDT) == 1
        assert await next_text(ws) == dumps(ETHUSDT)
    assert (emulator.stats.events_published, emulator.stats.events_stalled) == (2, 1)


async def test_one_connection_can_be_stalled_or_dropped_alone(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """`stall_connection` withholds data from one connection only (its control replies go on,
    0 s ends it); `drop_connection` aborts that one and leaves its twin open."""
    emulator = await start_emulator()
    url = "fstream/market/ws/!forceOrder@arr"
    async with connect(emulator, url, url) as [first, second]:
        one, two = await emulator.wait_for_connections(2)
        assert emulator.stall_connection(one, 60.0)
        assert await emulator.publish(BTCUSDT) == 1
        assert await next_text(second) == dumps(BTCUSDT)
        reply = await request(first, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert reply == '{"result":["!forceOrder@arr"],"id":1}'
        assert emulator.stall_connection(one, 0.0)
        assert await emulator.publish(ETHUSDT) == 2
        assert await next_text(first) == dumps(ETHUSDT)
        assert await next_text(second) == dumps(ETHUSDT)
        assert await emulator.drop_connection(one)
        assert (await next_frame(first)).type is WSMsgType.CLOSED
        await emulator.wait_until(lambda: [c.id for c in emulator.connections] == [two.id])
        assert not await emulator.drop_connection(one)
        assert not emulator.stall_connection(one, 1.0)
    assert emulator.stats.disconnects["dropped"] == 1


async def test_held_control_replies_wait_for_release_while_data_flows(
    start_emulator: StartEmulator, connect: Connect
) -> None:
    """While control replies are held, the request is counted and events still arrive; the
    held reply follows on release, and later requests are answered at once."""
    emulator = await start_emulator()
    async with connect(emulator, "fstream/market/ws/!forceOrder@arr") as [ws]:
        [conn] = await emulator.wait_for_connections(1)
        emulator.hold_control_replies()
        await ws.send_str(dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        await emulator.wait_until(lambda: conn.messages_received == 1)
        assert await emulator.publish(BTCUSDT) == 1
        assert await next_text(ws) == dumps(BTCUSDT)
        emulator.release_control_replies()
        assert await next_text(ws) == '{"result":["!forceOrder@arr"],"id":1}'
        reply = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert reply == '{"result":["!forceOrder@arr"],"id":2}'


# -- generated events ---------------------------------------------------------------------------


async def test_generated_stream(start_emulator: StartEmulator, connect: Connect) -> None:
    """With a rate set, `!forceOrder@arr` carries well-formed events, one per symbol per second."""
    emulator = await start_emulator(rate_per_s=3000.0, seed=7, um_symbols=synthetic_symbols(4000))
    last_seen: dict[str, int] = {}
    async with connect(emulator, "fstream/market/stream?streams=!forceOrder@arr") as [ws]:
        for _ in range(300):
            frame = orjson.loads(await next_text(ws))
            assert frame["stream"] == "!forceOrder@arr"
            event = frame["data"]
            assert event["st"] in (1, 2)
            symbol, event_ms = event["o"]["s"], event["E"]
            assert event_ms - last_seen.get(symbol, -1000) >= 1000
            last_seen[symbol] = event_ms
    assert emulator.stats.events_generated >= 300
    assert emulator.stats.events_rate_capped == 0


def _drive(generator: EventGenerator, steps: int) -> list[dict[str, Any]]:
    """Take from `generator` at 5 ms steps with a varying batch size."""
    events = []
    for step in range(steps):
        events += [g.event for g in generator.take(1 + step % 40, 1_782_800_000_000 + 5 * step)]
    return events


def test_generator_snapshot_rule() -> None:
    """No symbol gets two events less than 1000 ms apart, however many are asked for."""
    generator = EventGenerator(["BTCUSDT", "ETHUSDT", "SOLUSDT"], ["BTCUSD_PERP"], seed=1)
    assert {g.symbol for g in generator.take(10, 1000)} == {
        "BTCUSDT",
        "ETHUSDT",
        "SOLUSDT",
        "BTCUSD_PERP",
    }
    assert generator.take(10, 1999) == []
    assert len(generator.take(10, 2000)) == 4

    events = _drive(EventGenerator([f"S{i}USDT" for i in range(50)], [], seed=2), 2000)
    last: dict[str, int] = {}
    for event in events:
        symbol = event["o"]["s"]
        assert event["E"] - last.get(symbol, -1000) >= 1000
        last[symbol] = event["E"]
    assert len(events) == 50 * 10  # 10 s of steps: every symbol once per second


def test_generator_is_deterministic_per_seed() -> None:
    """The same seed and calls give the same events; another seed gives others."""
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"], ["BTCUSD_PERP", "ETHUSD_PERP"]
    first = _drive(EventGenerator(*symbols, seed=42), 500)
    assert first == _drive(EventGenerator(*symbols, seed=42), 500)
    assert first != _drive(EventGenerator(*symbols, seed=43), 500)


def test_generated_values_are_exact_decimals() -> None:
    """Prices sit on the tick, quantities on the step, SELL fills above the order price."""
    um = ["BTCUSDT", "1000PEPEUSDT", "SYM0001USDT"]
    generator = EventGenerator(um, ["BTCUSD_PERP"], seed=3, cm_share=0.3)
    events = _drive(generator, 1000)
    decimal_text = re.compile(r"(0|[1-9]\d*)(\.\d*[1-9])?")
    for event in events:
        order = event["o"]
        symbol_type = 2 if order["s"] == "BTCUSD_PERP" else 1
        spec = market_spec(order["s"], symbol_type)
        for key in ("q", "p", "ap", "l", "z"):
            assert decimal_text.fullmatch(order[key]), order
        assert Decimal(order["p"]) % spec.tick_size == 0
        assert Decimal(order["ap"]) % spec.tick_size == 0
        assert Decimal(order["q"]) % spec.step_size == 0
        assert order["l"] == order["z"] == order["q"]
        if order["S"] == "SELL":
            assert Decimal(order["p"]) < Decimal(order["ap"])
        else:
            assert Decimal(order["p"]) > Decimal(order["ap"])
        assert 0 < event["E"] - order["T"] <= 40
        assert event["st"] == symbol_type
        assert ("ps" in event, "ps" in order) == (symbol_type == 1, symbol_type == 2)


def test_make_force_order_event_shapes() -> None:
    """The builder produces the documented UM, CM and pre-merge shapes."""
    assert make_force_order_event(
        "BTCUSDT",
        "SELL",
        Decimal("0.014"),
        9910,
        "9910",
        1782800000120,
        1782800000123,
        symbol_type=1,
    ) == {
        "e": "forceOrder",
        "E": 1782800000123,
        "st": 1,
        "ps": "BTCUSDT",
        "o": {
            "s": "BTCUSDT",
            "S": "SELL",
            "o": "LIMIT",
            "f": "IOC",
            "q": "0.014",
            "p": "9910",
            "ap": "9910",
            "X": "FILLED",
            "l": "0.014",
            "z": "0.014",
            "T": 1782800000120,
        },
    }
    assert make_force_order_event(
        "BTCUSD_200925",
        "SELL",
        "1",
        "9425.5",
        "9496.5",
        1591154240949,
        1591154240950,
        pair="BTCUSD",
    ) == {
        "e": "forceOrder",
        "E": 1591154240950,
        "o": {
            "s": "BTCUSD_200925",
            "ps": "BTCUSD",
            "S": "SELL",
            "o": "LIMIT",
            "f": "IOC",
            "q": "1",
            "p": "9425.5",
            "ap": "9496.5",
            "X": "FILLED",
            "l": "1",
            "z": "1",
            "T": 1591154240949,
        },
    }
    partial = make_force_order_event(
        "ETHUSD_PERP", "BUY", "5", "1", "1", 1, 2, filled="2", symbol_type=2, status="EXPIRED"
    )
    assert partial["st"] == 2
    assert partial["o"]["ps"] == "ETHUSD"
    assert (partial["o"]["q"], partial["o"]["l"], partial["o"]["z"], partial["o"]["X"]) == (
        "5", "2", "2", "EXPIRED",
    )  # fmt: skip


def test_for_rate_sizes_the_universe() -> None:
    """`for_rate` adds synthetic symbols, without duplicates, when the defaults are too few."""
    options = EmulatorOptions.for_rate(30_000.0, cm_share=0.0)
    universe = options.um_symbols + options.cm_symbols
    assert len(universe) == len(set(universe)) == 37_500
    assert EmulatorOptions.for_rate(10.0) == EmulatorOptions(rate_per_s=10.0)


# -- REST (§3, §6) -----------------------------------------------------------------------------


async def test_rest_time_and_shared_weight(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    """fapi and dapi count weight on one per-minute counter and answer 429 past the limit."""
    emulator = await start_emulator(weight_limit_1m=3)
    emulator.futures_weight.clock = lambda: 1_800_000_000.0
    used = []
    for url in (
        f"{emulator.fapi_url}/fapi/v1/time",
        f"{emulator.dapi_url}/dapi/v1/time",
        f"{emulator.fapi_url}/fapi/v1/ping",
    ):
        async with session.get(url) as response:
            assert response.status == 200
            body = await response.json()
            used.append(response.headers["X-MBX-USED-WEIGHT-1M"])
    assert body == {}
    assert used == ["1", "2", "3"]
    async with session.get(f"{emulator.dapi_url}/dapi/v1/time") as response:
        assert (response.status, response.headers["X-MBX-USED-WEIGHT-1M"]) == (429, "4")
        assert (await response.json())["code"] == -1003
    async with session.get(f"{emulator.papi_url}/papi/v1/ping") as response:
        assert (response.status, await response.json()) == (200, {})
    async with session.get(f"{emulator.sapi_url}/sapi/v1/margin/forceLiquidationRec") as response:
        assert response.status == 404


async def test_exchange_info_shapes(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    """exchangeInfo lists the configured symbols with `status` (fapi) or `contractStatus` and
    `contractSize` (dapi)."""
    emulator = await start_emulator(
        um_symbols=("BTCUSDT", "ETHUSDC"), cm_symbols=("BTCUSD_PERP", "ETHUSD_260925")
    )
    async with session.get(f"{emulator.fapi_url}/fapi/v1/exchangeInfo") as response:
        fapi = await response.json()
    assert list(fapi) == [
        "timezone", "serverTime", "futuresType", "rateLimits", "exchangeFilters", "assets",
        "symbols",
    ]  # fmt: skip
    assert fapi["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400,
    }  # fmt: skip
    eth = fapi["symbols"][1]
    assert {k: eth[k] for k in ("symbol", "pair", "contractType", "status", "baseAsset",
                                "quoteAsset", "marginAsset", "deliveryDate")} == {
        "symbol": "ETHUSDC", "pair": "ETHUSDC", "contractType": "PERPETUAL", "status": "TRADING",
        "baseAsset": "ETH", "quoteAsset": "USDC", "marginAsset": "USDC",
        "deliveryDate": 4133404800000,
    }  # fmt: skip
    assert eth["filters"][0] == {
        "filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01",
    }  # fmt: skip

    async with session.get(f"{emulator.dapi_url}/dapi/v1/exchangeInfo") as response:
        dapi = await response.json()
    assert "assets" not in dapi
    perp, quarter = dapi["symbols"]
    assert "status" not in perp
    assert {k: perp[k] for k in ("symbol", "pair", "contractType", "contractStatus",
                                 "contractSize", "baseAsset", "quoteAsset", "marginAsset")} == {
        "symbol": "BTCUSD_PERP", "pair": "BTCUSD", "contractType": "PERPETUAL",
        "contractStatus": "TRADING", "contractSize": 100, "baseAsset": "BTC", "quoteAsset": "USD",
        "marginAsset": "BTC",
    }  # fmt: skip
    assert (quarter["contractType"], quarter["contractSize"], quarter["deliveryDate"]) == (
        "CURRENT_QUARTER", 10, 1790323200000,
    )  # fmt: skip


async def test_extensions_add_weighted_routes(session: aiohttp.ClientSession) -> None:
    """An extension can add a REST route with its own weight before the emulator starts."""

    async def force_orders(request: web.Request) -> web.Response:
        return web.json_response([])

    def add_account_routes(emulator: Emulator) -> None:
        app = emulator.rest_apps["fapi"]
        app.router.add_get("/fapi/v1/forceOrders", force_orders)
        add_route_weight(app, "/fapi/v1/forceOrders", lambda r: 20 if "symbol" in r.query else 50)

    async with Emulator(extensions=[add_account_routes]) as emulator:
        emulator.futures_weight.clock = lambda: 1_800_000_000.0
        used = []
        for query in ("?symbol=BTCUSDT", ""):
            async with session.get(f"{emulator.fapi_url}/fapi/v1/forceOrders{query}") as response:
                assert await response.json() == []
                used.append(response.headers["X-MBX-USED-WEIGHT-1M"])
        assert used == ["20", "70"]
        with pytest.raises(TimeoutError):
            await emulator.wait_for_connections(1, timeout=0.01)


# -- CLI entry point ----------------------------------------------------------------------------


async def test_run_simulator_logs_urls_and_stops(session: aiohttp.ClientSession) -> None:
    """`run_simulator` logs the base URLs, serves them, and returns once `stop` is set."""
    started = asyncio.Event()

    def notice(_: Any, __: str, event_dict: structlog.typing.EventDict) -> Any:
        if event_dict["event"] == "emulator.started":
            started.set()
        return event_dict

    stop = asyncio.Event()
    with structlog.testing.capture_logs(processors=[notice]) as logs:
        task = asyncio.create_task(run_simulator(EmulatorOptions(), stop=stop))
        async with asyncio.timeout(5):
            await started.wait()
        urls = next(e for e in logs if e["event"] == "emulator.started")
        assert sorted(urls) == ["dapi", "dstream", "event", "fapi", "fstream", "log_level",
                                "papi", "sapi"]  # fmt: skip
        async with session.get(f"{urls['fapi']}/fapi/v1/ping") as response:
            assert await response.json() == {}
        stop.set()
        async with asyncio.timeout(5):
            await task
    assert [e["event"] for e in logs if e["event"].startswith("emulator.")][-1] == (
        "emulator.stopped"
    )
