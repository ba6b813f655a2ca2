"""OKX's REST read-back and the gap repairer against the OKX emulator on loopback: paging back
through the history, claiming only what was read, the look-back limit, and the reconnect policy
of a venue link within its connection budget."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from collector.config import OkxConfig
from collector.emulator.okx import OkxEmulator, OkxOptions, make_okx_detail
from collector.metrics import Metrics
from collector.model import RepairRecord
from collector.retry import AttemptBudget, Backoff
from collector.sources.okx_repair import OkxHistory
from collector.sources.okx_ws import OkxSession, OkxSource, fetch_instruments
from collector.sources.repair import Gap, GapRepairer
from collector.sources.venue_link import Link
from tests.daemon import metric_value
from tests.recording_sink import RecordingSink

SOURCE = "rest:okx:liquidation-orders"
SWAP = "liquidation-orders:SWAP"
RECORDED = datetime(2027, 1, 1, tzinfo=UTC)


def recorded() -> datetime:
    """The repairer's clock: when a record is made."""
    return RECORDED


@pytest.fixture
async def emu() -> AsyncIterator[OkxEmulator]:
    """The OKX emulator; its REST rate window pinned, so bursts never hit the 40 / 2 s limit."""
    async with OkxEmulator(OkxOptions()) as emulator:
        emulator.liquidation_orders_limit.clock = lambda: 0.0
        emulator.liquidation_orders_limit.limit = 10_000
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session per test."""
    async with aiohttp.ClientSession() as session:
        yield session


async def history_of(
    emu: OkxEmulator, http: aiohttp.ClientSession, **changes: object
) -> OkxHistory:
    """An `OkxHistory` on the emulator with its instruments loaded."""
    config = OkxConfig(rest_url=emu.rest_url, **changes)  # type: ignore[arg-type]
    instruments = {}
    for inst_type in config.inst_types:
        instruments.update((i.inst_id, i) for i in await fetch_instruments(http, config, inst_type))
    return OkxHistory(http, config, instruments, Metrics())


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def test_a_gap_longer_than_a_page_is_read_back_whole(
    emu: OkxEmulator, http: aiohttp.ClientSession
) -> None:
    """250 liquidations of one family in the gap come back over three pages, each once; rows
    outside the gap are left out and the record claims the whole gap."""
    base = time.time_ns() // 1_000_000 - 60_000
    details = [
        make_okx_detail("sell", "net", str(i + 1), "65000", base + i * 10) for i in range(250)
    ]
    before = make_okx_detail("buy", "net", "9", "65000", base - 5_000)
    after = make_okx_detail("buy", "net", "9", "65000", base + 10_000)
    await emu.publish("BTC-USDT-SWAP", [before, *details, after], stream=False)
    history = await history_of(emu, http, inst_types=("SWAP",))
    sink = RecordingSink()
    repairer = GapRepairer(history, sink, Metrics(), clock=recorded)
    start, end = at_ms(base - 1_000), at_ms(base + 5_000)
    [record] = await repairer.repair(Gap(start, end, "test"))
    assert record == RepairRecord("okx", SWAP, start, end, SOURCE, 250, RECORDED)
    assert sorted(int(r.wire_field("sz") or 0) for r in sink.liquidations) == list(range(1, 251))
    assert sink.items[-1] == record
    # 4 families of SWAP: three pages for BTC-USDT (the third not full), one for each other.
    assert history.requests == 3 + 3


async def test_a_page_of_one_millisecond_is_claimed_only_after_it(
    emu: OkxEmulator, http: aiohttp.ClientSession
) -> None:
    """120 liquidations in one millisecond cannot be paged past (`after` is exclusive): the
    100 read are put, and the record starts one millisecond later, never claiming the rest."""
    ts = time.time_ns() // 1_000_000 - 60_000
    same = [make_okx_detail("sell", "net", str(i + 1), "65000", ts) for i in range(120)]
    await emu.publish("ETH-USDT-SWAP", same, stream=False)
    history = await history_of(emu, http, inst_types=("SWAP",))
    sink = RecordingSink()
    metrics = Metrics()
    start, end = at_ms(ts - 1_000), at_ms(ts + 1_000)
    [record] = await GapRepairer(history, sink, metrics, clock=recorded).repair(
        Gap(start, end, "test")
    )
    assert record == RepairRecord(
        "okx", SWAP, at_ms(ts) + timedelta(milliseconds=1), end, SOURCE, 0, RECORDED
    )
    assert len(sink.liquidations) == 0  # all 100 read lie before the part claimed
    assert metric_value(metrics.registry, "collector_venue_repairs_total", venue="okx",
                        outcome="partial") == 1  # fmt: skip


async def test_a_gap_older_than_the_look_back_is_not_claimed(
    emu: OkxEmulator, http: aiohttp.ClientSession
) -> None:
    """A gap that ended before the configured look-back asks nothing and records nothing."""
    history = await history_of(emu, http, inst_types=("SWAP",), repair_lookback_s=3600.0)
    now = datetime.now(UTC)
    sink = RecordingSink()
    gap = Gap(now - timedelta(hours=3), now - timedelta(hours=2), "test")
    assert await GapRepairer(history, sink, Metrics()).repair(gap) == []
    assert sink.items == []


async def test_failed_attempts_back_off_and_wait_for_the_connection_budget(
    emu: OkxEmulator, http: aiohttp.ClientSession
) -> None:
    """Refused upgrades back off by the seeded backoff; an attempt beyond the budget (2 per
    300 s here) waits until the window frees a slot."""
    emu.fail_upgrades(5)
    config = OkxConfig(ws_url=emu.ws_url, rest_url=emu.rest_url, repair=False)
    metrics, sink = Metrics(), RecordingSink()
    source = OkxSource(config, http, sink, metrics)
    pauses: list[float] = []

    async def pause(delay: float, halt: asyncio.Event) -> bool:
        pauses.append(delay)
        if len(pauses) == 2:
            stop.set()
            await halt.wait()
        return halt.is_set()

    stop = asyncio.Event()
    link = Link(
        "okx/public#0", "okx",
        lambda: OkxSession(source.spec, http, sink, metrics, config, source.instruments),
        metrics, backoff=Backoff(1.0, 8.0, rng=random.Random(3)), jitter_s=0.0,
        budget=AttemptBudget(2, 300.0), pause=pause,
    )  # fmt: skip
    started = time.monotonic()
    await link.run(stop)
    expected = Backoff(1.0, 8.0, rng=random.Random(3))
    assert pauses[0] == expected.next_delay()
    assert 300 - (time.monotonic() - started) - 0.01 <= pauses[1] <= 300
    assert metric_value(metrics.registry, "collector_venue_ws_reconnects_total", venue="okx",
                        reason="http_503") == 2  # fmt: skip
    assert sink.items == []  # no session was opened, so no ledger row


async def test_futures_are_read_back_per_family_and_alias(
    emu: OkxEmulator, http: aiohttp.ClientSession
) -> None:
    """The parameter table calls `alias` required for FUTURES (docs/okx.md section 2.2): the
    read-back asks per family and alias, as the instruments list them, and gets every row;
    without `alias` the emulator answers 50014, as the table implies OKX does."""
    base = time.time_ns() // 1_000_000 - 60_000
    await emu.publish(
        "BTC-USDT-261225", [make_okx_detail("sell", "long", "3", "66000", base)], stream=False
    )
    await emu.publish(
        "BTC-USD-261225", [make_okx_detail("buy", "short", "7", "66100", base + 1)], stream=False
    )
    history = await history_of(emu, http, inst_types=("FUTURES",))
    assert history.scopes("FUTURES") == [
        {"instFamily": "BTC-USD", "alias": "quarter"},
        {"instFamily": "BTC-USDT", "alias": "quarter"},
    ]
    sink = RecordingSink()
    start, end = at_ms(base - 1_000), at_ms(base + 1_000)
    [record] = await GapRepairer(history, sink, Metrics(), clock=recorded).repair(
        Gap(start, end, "test")
    )
    assert record == RepairRecord(
        "okx", "liquidation-orders:FUTURES", start, end, SOURCE, 2, RECORDED
    )
    assert sorted((r.symbol, r.wire_field("sz")) for r in sink.liquidations) == [
        ("BTC-USD-261225", "7"),
        ("BTC-USDT-261225", "3"),
    ]
    assert history.requests == 2
    params = {"instType": "FUTURES", "instFamily": "BTC-USD", "state": "filled"}
    async with http.get(f"{emu.rest_url}/api/v5/public/liquidation-orders", params=params) as r:
        assert (r.status, await r.json()) == (
            400,
            {"code": "50014", "msg": "Parameter alias can not be empty.", "data": []},
        )
