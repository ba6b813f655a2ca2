"""The Bybit source against the Bybit emulator on loopback, writing into a recording sink:
rows, the subscription plan and its replies, ping/pong, reconnects, listings and delistings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from collector.config import BybitConfig
from collector.emulator.bybit import BybitEmulator, BybitOptions, make_bybit_liquidation
from collector.metrics import Metrics
from collector.model import SessionRecord
from collector.sources.bybit_coverage import CONNECTION
from collector.sources.bybit_parse import liquidation_key, plan_subscriptions
from collector.sources.bybit_ws import BybitCategory, args_chars, run_bybit
from collector.venues import LiquidatedSide, Venue
from tests.daemon import eventually, metric_value
from tests.recording_sink import RecordingSink

D = Decimal
T_MS = 1_800_000_000_123


@dataclasses.dataclass
class Running:
    """A running Bybit source: what it put, its metrics and its categories."""

    emu: BybitEmulator
    sink: RecordingSink
    metrics: Metrics
    categories: list[BybitCategory]

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics.registry, name, **labels)

    def sessions(self) -> list[SessionRecord]:
        """The websocket sessions' ledger rows (latest snapshot each), oldest first."""
        return [s for s in self.sink.sessions() if s.connection != CONNECTION]

    def all_symbols(self) -> list[SessionRecord]:
        """The venue-wide rows (`bybit_coverage`), oldest first."""
        return [s for s in self.sink.sessions() if s.connection == CONNECTION]

    def topics(self) -> list[list[str]]:
        """The topics of each open emulator connection, by connection (the emulator keys them
        `category:topic`)."""
        return [[t.split(":", 1)[1] for t in c.topics] for c in self.emu.connections]

    async def until_topics(self, expected: list[list[str]]) -> None:
        await self.emu.ws.wait_until(lambda: sorted(self.topics()) == sorted(expected))


@contextlib.asynccontextmanager
async def bybit(options: BybitOptions, **changes: Any) -> AsyncIterator[Running]:
    """The emulator with `options` and the source pointed at it (short delays); stopped on exit."""
    async with BybitEmulator(options) as emu:
        config = BybitConfig(
            ws_url=emu.ws_url,
            rest_url=emu.rest_url,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.2,
            reconnect_jitter_s=0.0,
            open_timeout_s=3.0,
        )
        config = dataclasses.replace(config, **changes)
        sink, metrics, categories = RecordingSink(), Metrics(), []
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_bybit(config, sink, metrics, stop, categories_out=categories)
        )
        try:
            yield Running(emu, sink, metrics, categories)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


TWO_CATEGORIES = BybitOptions(linear_symbols=("BTCUSDT", "ETHUSDT"), inverse_symbols=("BTCUSD",))


async def test_rows_carry_the_documented_side_and_notional() -> None:
    """`Buy` is a liquidated long, `Sell` a short; linear notional is size x price, inverse
    notional the USD size (no base quantity); every wire field is kept."""
    async with bybit(TWO_CATEGORIES) as run:
        await run.until_topics(
            [["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"], ["allLiquidation.BTCUSD"]]
        )
        await run.emu.publish(
            "linear", [make_bybit_liquidation("BTCUSDT", "Buy", "0.5", "65000.5", T_MS)]
        )
        await run.emu.publish(
            "inverse", [make_bybit_liquidation("BTCUSD", "Sell", "1200", "64000", T_MS + 1)]
        )
        rows = await eventually(lambda: run.sink.liquidations, lambda r: len(r) == 2)
    by_symbol = {r.symbol: r for r in rows}
    linear, inverse = by_symbol["BTCUSDT"], by_symbol["BTCUSD"]
    trade_time = datetime(2027, 1, 15, 8, 0, 0, 123000, tzinfo=UTC)
    assert (
        linear.venue, linear.market, linear.base_asset, linear.liquidated_side, linear.price,
        linear.qty, linear.notional_usd, linear.trade_time, linear.source,
    ) == (
        Venue.BYBIT, "linear", "BTC", LiquidatedSide.LONG, D("65000.5"), D("0.5"),
        D("32500.25"), trade_time, "ws",
    )  # fmt: skip
    assert (
        inverse.market, inverse.base_asset, inverse.liquidated_side, inverse.price, inverse.qty,
        inverse.notional_usd,
    ) == ("inverse", "BTC", LiquidatedSide.SHORT, D("64000"), None, D("1200"))  # fmt: skip
    assert linear.content_key == liquidation_key("BTCUSDT", T_MS, "Buy", D("0.5"), D("65000.5"))
    assert [(k, v) for k, v in linear.wire if k != "ts"] == [
        ("topic", "allLiquidation.BTCUSDT"), ("type", "snapshot"), ("T", str(T_MS)),
        ("s", "BTCUSDT"), ("S", "Buy"), ("v", "0.5"), ("p", "65000.5"),
    ]  # fmt: skip


async def test_sessions_are_ledger_rows_with_venue_bybit() -> None:
    """Each connection is one session, subscribed to its topics, closed at shutdown."""
    async with bybit(TWO_CATEGORIES) as run:
        await run.until_topics(
            [["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"], ["allLiquidation.BTCUSD"]]
        )
        await run.emu.publish(
            "linear", [make_bybit_liquidation("ETHUSDT", "Sell", "2", "3000", T_MS)]
        )
        await eventually(lambda: run.sink.liquidations)
        url = run.emu.ws_url + "/v5/public/linear"
    sessions = sorted(run.sessions(), key=lambda s: s.host)
    assert [(s.venue, s.connection, s.host, s.streams, s.close_reason) for s in sessions] == [
        ("bybit", "bybit/inverse#0", "inverse", ("allLiquidation.BTCUSD",), "shutdown"),
        ("bybit", "bybit/linear#0", "linear",
         ("allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"), "shutdown"),
    ]  # fmt: skip
    assert [s.events_received for s in sessions] == [0, 1]
    assert all(s.subscribed_at is not None and s.closed_at is not None for s in sessions)
    assert sessions[1].url == url


async def test_topics_are_spread_over_connections_within_the_args_limit() -> None:
    """With a 100-character args limit the symbols are planned by `plan_subscriptions`: one
    connection per group, each group's JSON within the limit."""
    options = BybitOptions(max_args_chars=100)
    async with bybit(options, categories=("linear",), max_args_chars=100) as run:
        plan = plan_subscriptions(options.linear_symbols, max_args_chars=100)
        assert len(plan) > 1
        await run.until_topics(plan)
        assert all(args_chars(topics) <= 100 for topics in run.topics())
        assert run.metric("collector_venue_subscribe_replies_total", venue="bybit",
                          outcome="error") == 0  # fmt: skip


async def test_a_refused_subscribe_is_logged_counted_and_the_rest_kept() -> None:
    """A request Bybit refuses is split to find the topic it refuses; that one is logged and
    counted (and dropped until the next refresh), the others are held."""
    options = BybitOptions(linear_symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"), max_args_chars=60)
    with structlog.testing.capture_logs() as logs:
        async with bybit(options, categories=("linear",), max_args_chars=100) as run:
            await run.until_topics([["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"]])
            [category] = run.categories
            [link] = category.links
            await eventually(lambda: link.refused)
            assert [link.refused for link in category.links] == [["allLiquidation.SOLUSDT"]]
            assert (
                run.metric(
                    "collector_venue_subscribe_replies_total", venue="bybit", outcome="error"
                )
                == 2
            )  # the request of three, then SOLUSDT alone
            assert run.metric("collector_venue_subscribe_replies_total", venue="bybit",
                              outcome="ok") == 2  # fmt: skip
    refused = [e for e in logs if e["event"] == "bybit.subscribe_refused"]
    assert [(e["topics"], e["log_level"]) for e in refused] == [
        (["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT", "allLiquidation.SOLUSDT"], "error"),
        (["allLiquidation.SOLUSDT"], "error"),
    ]
    assert refused[-1]["ret_msg"] == "error:args length exceeds 60 characters"


async def test_pings_are_answered_with_pongs() -> None:
    """`{"op":"ping"}` goes out every `heartbeat_s` and each pong is counted."""
    async with bybit(TWO_CATEGORIES, categories=("inverse",), heartbeat_s=0.05) as run:
        await eventually(
            lambda: run.metric("collector_venue_heartbeats_total", venue="bybit", outcome="pong"),
            lambda n: n >= 3,
        )
        [conn] = run.emu.connections
        assert conn.messages_received >= 4  # the subscribe and the pings
        assert run.metric("collector_venue_heartbeats_total", venue="bybit",
                          outcome="timeout") == 0  # fmt: skip


async def test_reconnects_after_the_server_closes_and_the_ledger_shows_both_sessions() -> None:
    """A server close ends the session in the ledger (`server_closed`); a new session opens,
    subscribes the same topics and receives."""
    async with bybit(TWO_CATEGORIES, categories=("linear",)) as run:
        topics = [["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"]]
        await run.until_topics(topics)
        assert run.emu.close_connections() == 1
        await eventually(run.sessions, lambda s: len(s) == 2 and s[1].subscribed_at)
        await run.until_topics(topics)
        await run.emu.publish(
            "linear", [make_bybit_liquidation("BTCUSDT", "Sell", "0.1", "60000", T_MS)]
        )
        await eventually(lambda: run.sink.liquidations)
        first, second = run.sessions()
        assert (first.close_reason, second.close_reason) == ("server_closed", None)
        assert first.closed_at is not None
        assert second.opened_at >= first.closed_at
        assert run.metric("collector_venue_ws_reconnects_total", venue="bybit",
                          reason="server_closed") == 1  # fmt: skip
        assert run.metric("collector_venue_ws_sessions_total", venue="bybit") == 2


async def test_new_listings_are_subscribed_and_delisted_symbols_unsubscribed() -> None:
    """The refresh subscribes a symbol listed since, and unsubscribes one no longer listed, on
    the live connection; the ledger row follows."""
    async with bybit(TWO_CATEGORIES, categories=("linear",), instruments_refresh_s=0.05) as run:
        await run.until_topics([["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"]])
        run.emu.list_symbol("linear", "NEWUSDT")
        await run.until_topics(
            [["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT", "allLiquidation.NEWUSDT"]]
        )
        run.emu.delist("linear", "ETHUSDT")
        await run.until_topics([["allLiquidation.BTCUSDT", "allLiquidation.NEWUSDT"]])
        [session] = await eventually(
            run.sessions,
            lambda s: s[0].streams == ("allLiquidation.BTCUSDT", "allLiquidation.NEWUSDT"),
        )
        assert session.close_reason is None  # the same connection all along
        assert run.emu.stats.upgrades == 1
        # Each listing was subscribed within the refresh that found it: the venue stayed covered.
        [venue_wide] = run.all_symbols()
        assert (venue_wide.closed_at, venue_wide.streams) == (None, ("allLiquidation.*",))


async def test_a_malformed_frame_is_dead_lettered_and_the_session_goes_on() -> None:
    """A frame that does not parse becomes a dead letter; the session keeps reading."""
    async with bybit(TWO_CATEGORIES, categories=("inverse",)) as run:
        await run.until_topics([["allLiquidation.BTCUSD"]])
        await run.emu.send_raw('{"topic":"allLiquidation.BTCUSD","data":[{"T":"x"}]}')
        await run.emu.publish(
            "inverse", [make_bybit_liquidation("BTCUSD", "Buy", "10", "60000", T_MS)]
        )
        await eventually(lambda: run.sink.liquidations)
        [letter] = run.sink.dead_letters
        assert (letter.source, letter.reason) == ("bybit/inverse", "malformed_frame")
        assert letter.raw == b'{"topic":"allLiquidation.BTCUSD","data":[{"T":"x"}]}'
        assert len(run.sessions()) == 1
        assert metric_value(run.metrics.registry, "collector_dead_letters_total",
                            reason="malformed_frame") == 1  # fmt: skip


async def test_a_rest_403_waits_the_documented_ten_minutes_and_the_stream_goes_on() -> None:
    """Past the REST limit Bybit answers 403: the refresh waits 10 minutes before asking again
    (logged, counted); the connection keeps its topics meanwhile."""
    options = dataclasses.replace(TWO_CATEGORIES, rest_limit=2, rest_window_s=300.0)
    with structlog.testing.capture_logs() as logs:
        async with bybit(options, categories=("linear",), instruments_refresh_s=0.05) as run:
            await eventually(lambda: [e for e in logs if e["event"] == "bybit.instruments_failed"])
            assert run.emu.rest_requests == 3
            assert run.metric("collector_venue_instrument_refreshes_total", venue="bybit",
                              market="linear", outcome="error") == 1  # fmt: skip
            await run.until_topics([["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"]])
    [failed] = [e for e in logs if e["event"] == "bybit.instruments_failed"]
    assert failed["retry_after_s"] == 600.0
    assert failed["error"].startswith("HTTP 403 from ")


async def test_a_list_longer_than_a_page_is_followed_and_split_at_21000_characters() -> None:
    """1,200 linear symbols come over two instruments-info pages (1,000 a page, by cursor) and
    are spread over connections at Bybit's 21,000-character args limit, all of them held."""
    symbols = tuple(f"S{i:04d}USDT" for i in range(1200))
    options = BybitOptions(linear_symbols=symbols, inverse_symbols=())
    async with bybit(options, categories=("linear",)) as run:
        plan = plan_subscriptions(symbols)
        assert len(plan) == 2
        await run.until_topics(plan)
        assert run.emu.rest_requests == 2
        assert all(args_chars(topics) <= 21_000 for topics in run.topics())
        [category] = run.categories
        await eventually(
            category.state, lambda v: v == {"up": 2, "wanted": 2, "topics": 1200, "symbols": 1200}
        )


async def test_a_connection_whose_every_subscribe_is_refused_is_closed_and_not_covered() -> None:
    """When Bybit refuses every topic of a connection, the session is closed (never subscribed
    in the ledger, so it covers nothing), counted as `subscribe_rejected` and logged once; the
    link, with nothing left to hold, stops connecting; the next refresh offers the topics again
    on a new connection."""
    options = BybitOptions(linear_symbols=("BTCUSDT", "ETHUSDT"), inverse_symbols=(),
                           max_args_chars=10)  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        async with bybit(options, categories=("linear",), max_args_chars=100) as run:
            [category] = await eventually(lambda: run.categories)
            [link] = await eventually(lambda: category.links)
            await eventually(lambda: link.ended, what="the link to end")
            rejected = run.metric(
                "collector_venue_ws_reconnects_total", venue="bybit", reason="subscribe_rejected"
            )
            assert run.emu.connections == []
            [first] = run.sessions()
            run.emu.options = dataclasses.replace(run.emu.options, max_args_chars=21_000)
            assert await category.refresh() is None
            topics = ["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"]
            await run.until_topics([topics])
            await eventually(run.sessions, lambda s: len(s) == 2 and s[1].subscribed_at)
            assert [link.spec.name for link in category.links] == ["bybit/linear#1"]
    assert rejected == 1
    assert (first.connection, first.streams, first.subscribed_at, first.close_reason) == (
        "bybit/linear#0", (), None, "subscribe_rejected",
    )  # fmt: skip
    second = run.sessions()[1]
    # Venue-wide coverage only from when every listed symbol was held: the second connection.
    [venue_wide] = run.all_symbols()
    assert second.subscribed_at is not None
    assert venue_wide.subscribed_at is not None
    assert venue_wide.subscribed_at >= second.subscribed_at
    assert venue_wide.close_reason == "shutdown"
    assert (second.connection, second.streams, second.close_reason) == (
        "bybit/linear#1", tuple(topics), "shutdown",
    )  # fmt: skip
    assert run.metric("collector_venue_subscribe_replies_total", venue="bybit",
                      outcome="error") == 3  # the request of two, then each alone  # fmt: skip
    refused_all = [e for e in logs if e["event"] == "bybit.connection_refused_all"]
    assert [(e["log_level"], e["refused"], e["topics"], e["left"]) for e in refused_all] == [
        ("error", 2, topics, 0)
    ]
    assert [e["connection"] for e in logs if e["event"] == "venue_ws.nothing_to_hold"] == [
        "bybit/linear#0"
    ]


async def test_the_venue_is_covered_only_while_every_listed_symbol_is_subscribed() -> None:
    """The venue-wide row opens once both categories hold all their topics, closes when a
    session ends (its reason, at that session's close), opens again once every topic is held
    again, and closes at shutdown; no row claims a moment a topic was not held."""
    async with bybit(TWO_CATEGORIES) as run:
        await run.until_topics([["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"],
                                ["allLiquidation.BTCUSD"]])  # fmt: skip
        await eventually(run.all_symbols)
        assert run.emu.close_connections() == 2
        await eventually(run.sessions, lambda s: len(s) == 4 and all(x.subscribed_at for x in s))
        await eventually(run.all_symbols, lambda rows: len(rows) == 2)
    sessions = run.sessions()
    first, again = run.all_symbols()
    old, new = sessions[:2], sessions[2:]
    assert {s.close_reason for s in old} == {"server_closed"}
    assert first.subscribed_at is not None
    assert first.subscribed_at >= max(s.subscribed_at for s in old if s.subscribed_at)
    assert (first.closed_at, first.close_reason) == (
        min(s.closed_at for s in old if s.closed_at), "server_closed",
    )  # fmt: skip
    assert again.subscribed_at is not None
    assert again.subscribed_at >= max(s.subscribed_at for s in new if s.subscribed_at)
    assert again.close_reason == "shutdown"
    assert again.closed_at is not None
    assert again.closed_at <= min(s.closed_at for s in new if s.closed_at)
    assert [(r.connection, r.host, r.streams, r.venue) for r in (first, again)] == [
        ("bybit/all-symbols", "all", ("allLiquidation.*",), "bybit")
    ] * 2
