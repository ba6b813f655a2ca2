"""The OKX source against the OKX emulator on loopback, writing into a recording sink: rows and
notional from the contract terms, subscriptions, text ping/pong, reconnects, and the REST repair
of a gap (or its switching off when the endpoint is gone)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import WSMsgType, web

from collector.config import OkxConfig
from collector.emulator.okx import OkxEmulator, OkxOptions, make_okx_detail
from collector.metrics import Metrics
from collector.sources.okx_parse import liquidation_key
from collector.sources.okx_ws import OkxSource, run_okx
from collector.venues import LiquidatedSide, Venue
from tests.daemon import eventually, metric_value
from tests.recording_sink import RecordingSink

D = Decimal
STREAMS = ("liquidation-orders:SWAP", "liquidation-orders:FUTURES", "liquidation-orders:MARGIN")


@dataclasses.dataclass
class Running:
    """A running OKX source: what it put, its metrics, the source itself."""

    sink: RecordingSink
    metrics: Metrics
    sources: list[OkxSource]

    @property
    def source(self) -> OkxSource:
        return self.sources[0]

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics.registry, name, **labels)

    async def subscribed_sessions(self, n: int) -> None:
        """Wait until `n` sessions have been subscribed."""
        await eventually(
            self.sink.sessions,
            lambda s: len(s) == n and all(r.subscribed_at for r in s),
            what=f"{n} subscribed sessions",
        )


@contextlib.asynccontextmanager
async def okx(ws_url: str, rest_url: str, **changes: Any) -> AsyncIterator[Running]:
    """The OKX source pointed at `ws_url`/`rest_url` with short delays; stopped on exit."""
    config = OkxConfig(
        ws_url=ws_url,
        rest_url=rest_url,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
        reconnect_jitter_s=0.0,
        open_timeout_s=3.0,
    )
    config = dataclasses.replace(config, **changes)
    sink, metrics, sources = RecordingSink(), Metrics(), []
    stop = asyncio.Event()
    task = asyncio.create_task(run_okx(config, sink, metrics, stop, sources_out=sources))
    try:
        yield Running(sink, metrics, sources)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def emu() -> AsyncIterator[OkxEmulator]:
    """The OKX emulator with its documented defaults."""
    async with OkxEmulator(OkxOptions()) as emulator:
        yield emulator


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_rows_carry_the_side_and_the_notional_of_the_contract_terms(
    emu: OkxEmulator,
) -> None:
    """SWAP contracts become base quantity and USD through ctVal (linear) or are USD (inverse);
    net positions take the side the order closes, hedge ones their posSide; MARGIN is base."""
    async with okx(emu.ws_url, emu.rest_url, repair=False) as run:
        await emu.ws.wait_until(lambda: len(emu.connections) == 1 and
                                len(emu.connections[0].topics) == 3)  # fmt: skip
        ts = 1_800_000_000_000
        await emu.publish("BTC-USDT-SWAP", [make_okx_detail("sell", "net", "3", "65000.5", ts)])
        await emu.publish("BTC-USD-SWAP", [make_okx_detail("buy", "short", "2", "64000", ts + 1)])
        await emu.publish(
            "BTC-USDT", [make_okx_detail("sell", "net", "0.5", "65000", ts + 2, ccy="USDT")]
        )
        rows = await eventually(lambda: run.sink.liquidations, lambda r: len(r) == 3)
    got = [
        (r.venue, r.market, r.symbol, r.base_asset, r.liquidated_side, r.price, r.qty,
         r.notional_usd, r.trade_time, r.source)
        for r in rows
    ]  # fmt: skip
    at = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    ms = [at.replace(microsecond=i * 1000) for i in range(3)]
    assert got == [
        (Venue.OKX, "SWAP", "BTC-USDT-SWAP", "BTC", LiquidatedSide.LONG, D("65000.5"), D("0.03"),
         D("1950.015"), ms[0], "ws"),
        (Venue.OKX, "SWAP", "BTC-USD-SWAP", "BTC", LiquidatedSide.SHORT, D("64000"), None,
         D("200"), ms[1], "ws"),
        (Venue.OKX, "MARGIN", "BTC-USDT", "BTC", LiquidatedSide.LONG, D("65000"), D("0.5"),
         D("32500"), ms[2], "ws"),
    ]  # fmt: skip
    assert rows[0].content_key == liquidation_key(
        "BTC-USDT-SWAP", ts, "sell", "net", D("3"), D("65000.5")
    )


async def test_each_insttype_is_subscribed_and_the_session_is_a_ledger_row(
    emu: OkxEmulator,
) -> None:
    """One subscribe per instType, each acked; the session's row has venue okx and the three
    streams, closed at shutdown."""
    async with okx(emu.ws_url, emu.rest_url, repair=False) as run:
        await run.subscribed_sessions(1)
        assert emu.connections[0].topics == list(STREAMS)
        assert run.metric("collector_venue_subscribe_replies_total", venue="okx",
                          outcome="ok") == 3  # fmt: skip
        assert run.metric("collector_venue_repair_state", venue="okx", state="disabled") == 1
    [session] = run.sink.sessions()
    assert (session.venue, session.connection, session.host, session.streams) == (
        "okx",
        "okx/public#0",
        "public",
        STREAMS,
    )
    assert session.close_reason == "shutdown"


async def test_a_refused_instype_is_logged_and_counted(emu: OkxEmulator) -> None:
    """An instType OKX refuses (error 60018) is logged and counted; the others are held."""
    with structlog.testing.capture_logs() as logs:
        async with okx(emu.ws_url, emu.rest_url, repair=False,
                       inst_types=("SWAP", "SPOT")) as run:  # fmt: skip
            await run.subscribed_sessions(1)
            assert emu.connections[0].topics == ["liquidation-orders:SWAP"]
            assert run.metric("collector_venue_subscribe_replies_total", venue="okx",
                              outcome="error") == 1  # fmt: skip
    [refused] = [e for e in logs if e["event"] == "okx.subscribe_refused"]
    assert (refused["inst_type"], refused["code"], refused["log_level"]) == (
        "SPOT",
        "60018",
        "error",
    )


async def test_text_pings_are_answered_with_pongs(emu: OkxEmulator) -> None:
    """A text `ping` goes out after `heartbeat_s` without a message; each `pong` is counted."""
    async with okx(emu.ws_url, emu.rest_url, repair=False, heartbeat_s=0.05) as run:
        await eventually(
            lambda: run.metric("collector_venue_heartbeats_total", venue="okx", outcome="pong"),
            lambda n: n >= 3,
        )
        assert len(run.sink.sessions()) == 1  # no reconnect: the pongs keep it alive


@contextlib.asynccontextmanager
async def never_pongs(*, acks: bool = True) -> AsyncIterator[str]:
    """An OKX-like server on loopback that acks subscribes (unless not `acks`) but never
    answers `ping`."""
    pings: list[str] = []

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            if msg.data == "ping":
                pings.append(msg.data)
                continue
            req = orjson.loads(msg.data)
            for arg in req["args"] if acks else ():
                await ws.send_str(orjson.dumps({"id": req["id"], "event": "subscribe",
                                                "arg": arg, "connId": "x"}).decode())  # fmt: skip
        return ws

    app = web.Application()
    app.router.add_get("/ws/v5/public", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_missing_pong_closes_the_session_and_it_reconnects(emu: OkxEmulator) -> None:
    """No `pong` within `pong_timeout_s` ends the session as `pong_timeout`; a new one opens."""
    async with never_pongs() as url, okx(
        url, emu.rest_url, repair=False, heartbeat_s=0.05, pong_timeout_s=0.1
    ) as run:  # fmt: skip
        await run.subscribed_sessions(2)
        first = run.sink.sessions()[0]
        assert first.close_reason == "pong_timeout"
        assert run.metric("collector_venue_heartbeats_total", venue="okx",
                          outcome="timeout") >= 1  # fmt: skip


async def test_a_stop_does_not_wait_out_a_silent_server(emu: OkxEmulator) -> None:
    """Stopping while a subscribe waits for a reply that never comes (30 s timeout) closes the
    session at once, in the ledger too."""
    started = time.monotonic()
    async with never_pongs(acks=False) as url, okx(url, emu.rest_url, repair=False,
                                                   open_timeout_s=30.0) as run:  # fmt: skip
        await eventually(run.sink.sessions)
    assert time.monotonic() - started < 5
    [session] = run.sink.sessions()
    assert (session.subscribed_at, session.close_reason) == (None, "shutdown")


async def test_a_gap_between_sessions_is_repaired_from_rest_exactly(emu: OkxEmulator) -> None:
    """The liquidation published while no session listened is read back from REST once, with
    the stream's key, and a RepairRecord claims exactly the gap between the sessions."""
    async with okx(emu.ws_url, emu.rest_url) as run:
        await run.subscribed_sessions(1)
        repairer = run.source.repairer
        assert repairer is not None
        await eventually(lambda: repairer.records, lambda r: len(r) == 3, what="start-up")
        await emu.publish("ETH-USDT-SWAP", [make_okx_detail("buy", "short", "5", "3200", now_ms())])
        await eventually(lambda: run.sink.liquidations)
        emu.fail_upgrades(2)  # keep the gap open a little while we publish into it
        emu.close_connections()
        await eventually(run.sink.sessions, lambda s: s[0].closed_at is not None)
        missed = make_okx_detail("sell", "long", "7", "65100", now_ms() + 1)
        await emu.publish("BTC-USDT-SWAP", [missed], stream=False)
        await run.subscribed_sessions(2)
        await eventually(lambda: repairer.records, lambda r: len(r) == 6, what="the repair")
    first, second = run.sink.sessions()
    assert first.close_reason == "server_closed"
    assert second.subscribed_at is not None
    source = "rest:okx:liquidation-orders"
    startup, repair = run.sink.repairs[:3], run.sink.repairs[3:]
    assert [(r.venue, r.stream, r.repaired_to, r.source, r.rows) for r in startup] == [
        ("okx", stream, first.subscribed_at, source, 0) for stream in STREAMS
    ]
    # One record per instType stream, each claiming exactly the gap between the sessions.
    assert [(r.venue, r.stream, r.repaired_from, r.repaired_to, r.source, r.rows)
            for r in repair] == [
        ("okx", stream, first.last_alive_at, second.subscribed_at, source, rows)
        for stream, rows in zip(STREAMS, (1, 0, 0), strict=True)
    ]  # fmt: skip
    streamed, repaired = run.sink.liquidations
    assert (streamed.source, streamed.symbol) == ("ws", "ETH-USDT-SWAP")
    assert (repaired.source, repaired.symbol, repaired.liquidated_side, repaired.qty,
            repaired.notional_usd) == ("rest", "BTC-USDT-SWAP", LiquidatedSide.LONG, D("0.07"),
                                       D("4557"))  # fmt: skip
    assert repaired.content_key == liquidation_key(
        "BTC-USDT-SWAP", int(missed["ts"]), "sell", "long", D("7"), D("65100")
    )
    # The records come after their rows (the sink flushed them in between).
    assert run.sink.items.index(repaired) < run.sink.items.index(repair[0])
    # The start-up read-back reaches only as far as the endpoint's one-day look-back: partial.
    assert run.metric("collector_venue_repairs_total", venue="okx", outcome="partial") == 3
    assert run.metric("collector_venue_repairs_total", venue="okx", outcome="repaired") == 3


@pytest.mark.parametrize("mode", ["not_found", "error"])
async def test_repair_is_switched_off_after_one_failed_request(mode: str) -> None:
    """A 404 or an error code from the history switches repair off after exactly one request,
    with one log line and the state metric; later gaps ask nothing."""
    async with OkxEmulator(OkxOptions(liquidation_orders_mode=mode)) as emu:  # type: ignore[arg-type]
        with structlog.testing.capture_logs() as logs:
            async with okx(emu.ws_url, emu.rest_url) as run:
                await run.subscribed_sessions(1)
                await eventually(lambda: run.metric("collector_venue_repair_state", venue="okx",
                                                    state="off"))  # fmt: skip
                emu.close_connections()
                await run.subscribed_sessions(2)
                assert emu.liquidation_orders_requests == 1
                assert run.metric("collector_venue_repair_state", venue="okx", state="on") == 0
        assert run.sink.repairs == []
        assert [e["log_level"] for e in logs if e["event"] == "repair.switched_off"] == ["error"]


async def test_a_service_upgrade_notice_hands_over_to_a_new_connection_first(
    emu: OkxEmulator,
) -> None:
    """On OKX's notice 64008 the source opens and subscribes a second connection while the
    first still reads, then closes the first (`service_upgrade`): the two ledger rows overlap,
    no gap is handed to the repair, and the new connection carries the stream on."""
    async with okx(emu.ws_url, emu.rest_url) as run:
        await run.subscribed_sessions(1)
        repairer = run.source.repairer
        assert repairer is not None
        await eventually(lambda: repairer.records, lambda r: len(r) == 3, what="start-up")
        assert await emu.send_notice() == 1
        await run.subscribed_sessions(2)
        await emu.ws.wait_until(lambda: len(emu.connections) == 1
                                and len(emu.connections[0].topics) == 3)  # fmt: skip
        await eventually(run.sink.sessions, lambda s: s[0].closed_at is not None)
        await emu.publish("ETH-USDT-SWAP", [make_okx_detail("buy", "short", "5", "3200", now_ms())])
        await eventually(lambda: run.sink.liquidations)
        upgrades = run.metric(
            "collector_venue_ws_reconnects_total", venue="okx", reason="service_upgrade"
        )
    first, second = run.sink.sessions()
    assert first.close_reason == "service_upgrade"
    assert second.subscribed_at is not None
    assert first.closed_at is not None
    assert second.subscribed_at < first.closed_at  # the new one read before the old one closed
    assert second.close_reason == "shutdown"
    assert [r.repaired_to for r in run.sink.repairs] == [first.subscribed_at] * 3  # start-up only
    assert upgrades == 1
    assert [r.symbol for r in run.sink.liquidations] == ["ETH-USDT-SWAP"]


async def test_a_handover_that_cannot_connect_keeps_the_old_session_until_okx_closes_it(
    emu: OkxEmulator,
) -> None:
    """If the new connection is refused, the old session keeps reading; when OKX then closes it
    the source reconnects as after any close, and the gap between is repaired."""
    async with okx(emu.ws_url, emu.rest_url, inst_types=("SWAP",)) as run:
        await run.subscribed_sessions(1)
        repairer = run.source.repairer
        assert repairer is not None
        await eventually(lambda: repairer.records, lambda r: len(r) == 1, what="start-up")
        emu.fail_upgrades(1)
        await emu.send_notice()
        await eventually(
            lambda: run.metric("collector_venue_ws_reconnects_total", venue="okx",
                               reason="http_503"),
        )  # fmt: skip
        assert len(emu.connections) == 1
        assert run.sink.sessions()[0].closed_at is None
        emu.close_connections()
        await run.subscribed_sessions(2)
        await eventually(lambda: repairer.records, lambda r: len(r) == 2, what="the repair")
    first, second = run.sink.sessions()
    assert first.close_reason == "server_closed"
    assert [(r.repaired_from, r.repaired_to) for r in run.sink.repairs[1:]] == [
        (first.last_alive_at, second.subscribed_at)
    ]
