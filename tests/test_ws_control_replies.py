"""Control replies on the collector's websocket connections: a reply to a request we sent is
never a warning, even when it arrives after the first event already confirmed the subscription;
a control frame matching no request is."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from collector.emulator import Emulator, EmulatorOptions
from collector.metrics import Metrics
from collector.sources.binance_session import Connection
from tests.daemon import Daemon, count_rows, eventually, make_config, running, subscribed
from tests.factories import um_event

_WARNING_LEVELS = ("warning", "error", "critical", "exception")


def warnings_in(logs: list[structlog.typing.EventDict]) -> list[str]:
    """The events logged at warning level or above."""
    return [e["event"] for e in logs if e["log_level"] in _WARNING_LEVELS]


def replies(metrics: Metrics, outcome: str) -> float:
    """collector_ws_control_replies_total on fstream for `outcome` (0 when never counted)."""
    value = metrics.registry.get_sample_value(
        "collector_ws_control_replies_total", {"host": "fstream", "outcome": outcome}
    )
    return 0.0 if value is None else value


async def confirmed(daemon: Daemon) -> Connection:
    """Wait until the daemon's one shard holds a subscribed connection; return it."""

    def current() -> Connection | None:
        shards = daemon.runtime.shards
        conn = shards[0].current if shards else None
        return conn if conn is not None and conn.subscribed.is_set() else None

    found = await eventually(lambda: asyncio.sleep(0, current()), lambda c: c is not None)
    assert found is not None
    return found


async def test_a_normal_connect_logs_no_warning(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """Connect, LIST_SUBSCRIPTIONS answered, one event stored, shutdown: nothing at warning
    level, and the one reply is counted as ok."""
    with structlog.testing.capture_logs() as logs:
        async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
            await subscribed(emu)
            await confirmed(daemon)
            await emu.publish(um_event("BTCUSDT", 1_795_000_000_000))
            await eventually(count_rows(pg), lambda n: n == 1)
            metrics = daemon.runtime.metrics
            counts = {o: replies(metrics, o) for o in ("ok", "late", "unexpected", "error")}
            assert counts == {"ok": 1, "late": 0, "unexpected": 0, "error": 0}
            assert await daemon.shutdown() == 0
    assert warnings_in(logs) == []
    assert [e["event"] for e in logs if e["event"] == "ws.opened"] == ["ws.opened"]


async def test_a_list_reply_after_the_first_event_is_expected(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """The first event confirms the subscription while the LIST_SUBSCRIPTIONS reply is held;
    the reply arriving afterwards is counted as late and logged at debug, not as a warning."""
    with structlog.testing.capture_logs() as logs:
        async with Emulator(EmulatorOptions()) as emu:
            emu.hold_control_replies()
            async with running(make_config(emu, pg_dsn)) as daemon:
                [ws] = await emu.wait_for_connections(1)
                await emu.wait_until(lambda: ws.messages_received == 1)  # LIST_SUBSCRIPTIONS
                await emu.publish(um_event("BTCUSDT", 1_795_000_000_000))
                conn = await confirmed(daemon)
                assert conn.delivered.is_set()
                emu.release_control_replies()
                metrics = daemon.runtime.metrics
                await eventually(
                    lambda: asyncio.sleep(0, replies(metrics, "late")), lambda n: n == 1
                )
                await eventually(count_rows(pg), lambda n: n == 1)
                counts = {o: replies(metrics, o) for o in ("ok", "late", "unexpected", "error")}
                assert counts == {"ok": 1, "late": 1, "unexpected": 0, "error": 0}
                assert await daemon.shutdown() == 0
    assert warnings_in(logs) == []
    late = [e for e in logs if e["event"] == "ws.late_control_reply"]
    assert [(e["log_level"], e["id"], e["error"]) for e in late] == [("debug", 1, None)]


async def test_a_control_frame_matching_no_request_warns(pg_dsn: str) -> None:
    """A control reply whose id we never sent is counted as unexpected and logged as the one
    warning."""
    with structlog.testing.capture_logs() as logs:
        async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
            await subscribed(emu)
            await confirmed(daemon)
            assert await emu.send_raw('{"result":null,"id":4242}') == 1
            metrics = daemon.runtime.metrics
            await eventually(
                lambda: asyncio.sleep(0, replies(metrics, "unexpected")), lambda n: n == 1
            )
            assert (replies(metrics, "ok"), replies(metrics, "late")) == (1, 0)
            assert await daemon.shutdown() == 0
    assert warnings_in(logs) == ["ws.unexpected_control"]
    [warning] = [e for e in logs if e["event"] == "ws.unexpected_control"]
    assert warning["frame"] == '{"result":null,"id":4242}'
