"""The page at `GET /`, end to end: the real daemon (emulator, database, HTTP server) and the page
in headless Chromium (Debian's binary, driven by Playwright). The page's clock is fixed at NOW
(Playwright's clock), so its window is [09:00, 12:00) of 2026-11-21 whatever the wall clock says;
the ledger and history rows are written there with the writer's statements, the live rows come
from the emulator through the daemon.

Screenshots go to $COLLECTOR_TEST_ARTIFACTS (default `artifacts/` at the repository root).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.config import HttpConfig
from collector.emulator import Emulator, EmulatorOptions, make_force_order_event
from collector.model import MarketLiquidation
from collector.out.events import Cursor
from collector.sink.columns import UPSERT_SESSION, session_args
from collector.sources.binance_parse import Source, parse_force_order
from tests.daemon import Daemon, eventually, make_config, metric_value, running, subscribed
from tests.factories import NOW, session, um_event
from tests.feed_harness import insert

playwright_api = pytest.importorskip("playwright.async_api")
async_playwright = playwright_api.async_playwright
expect = playwright_api.expect

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("COLLECTOR_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("COLLECTOR_TEST_ARTIFACTS", ROOT / "artifacts"))
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Generous, for a busy machine (the waits are on conditions, not sleeps).
WAIT_MS = 60_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)",
)


def at(hh: int, mm: int, ss: int = 0, ms: int = 0) -> int:
    """Milliseconds since the epoch of hh:mm:ss.ms on NOW's day."""
    moment = NOW.replace(hour=hh, minute=mm, second=ss, microsecond=ms * 1000)
    return int(moment.timestamp() * 1000)


def row(
    symbol: str, side: str, qty: str, price: str, trade_ms: int, received_at: datetime = NOW
) -> MarketLiquidation:
    """A stored USD-M liquidation (SELL: a long liquidated, BUY: a short)."""
    event = um_event(symbol, trade_ms, side=side, qty=qty, price=price, avg_price=price)
    source = Source("fstream", "market", "!forceOrder@arr")
    return parse_force_order(event, source=source, received_at=received_at)


def live(symbol: str, side: str, qty: str, price: str, trade_ms: int) -> dict[str, Any]:
    return make_force_order_event(symbol, side, qty, price, price, trade_ms, trade_ms + 5)


async def ledger_with_a_gap(pg: asyncpg.Connection) -> None:
    """Binance recorded 09:00-11:20 and 11:35-12:00: a 15-minute gap."""
    for opened, closed in ((at(9, 0), at(11, 20)), (at(11, 35), at(12, 0))):
        start = datetime.fromtimestamp(opened / 1000, UTC)
        end = datetime.fromtimestamp(closed / 1000, UTC)
        record = session(opened_at=start, first_event_at=start, last_alive_at=end,
                         closed_at=end, close_reason="shutdown")  # fmt: skip
        await pg.execute(UPSERT_SESSION, *session_args(record))


HISTORY = (
    row("BTCUSDT", "SELL", "0.014", "9910", at(10, 15, 10)),  # a long: 138.740 USD
    row("BTCUSDT", "SELL", "1", "5000", at(10, 15, 40)),  # a long: 5000
    row("ETHUSDT", "BUY", "2.5", "61234.5", at(11, 10, 5)),  # a short: 153086.25
)


async def feed_has_read(daemon: Daemon, pg: asyncpg.Connection) -> None:
    """Wait until the daemon's feed has read every row written so far: a stream opened after
    this joins after them."""
    last = await pg.fetchrow(
        "SELECT committed_xid::text AS xid, seq FROM liquidation_feed"
        " ORDER BY committed_xid DESC, seq DESC LIMIT 1"
    )
    target = Cursor(int(last["xid"]), last["seq"])
    feed = daemon.runtime.feed
    assert feed is not None
    await eventually(lambda: feed.head is not None and feed.head >= target,
                     timeout=WAIT_MS / 1000, what=f"the feed's head at {target}")  # fmt: skip


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Chromium, closed (with Playwright's driver) however the test ends."""
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser: Any, port: int) -> Any:
    page = await browser.new_page(viewport={"width": 1280, "height": 1100})
    await page.clock.set_fixed_time(NOW)
    await page.goto(f"http://127.0.0.1:{port}/")
    return page


def artifact(name: str) -> str:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return str(ARTIFACTS / name)


async def screenshot(page: Any, name: str) -> None:
    await page.screenshot(path=artifact(name), full_page=True)


async def state_is(page: Any, state: str) -> None:
    """Wait until the page's status says `state` (live, token, reconnecting...)."""
    await expect(page.locator("#status")).to_have_attribute("data-state", state, timeout=WAIT_MS)


async def tape(page: Any) -> list[list[str]]:
    return [[c.strip() for c in cells] for cells in await page.eval_on_selector_all(
        "#tape tbody tr:not(.empty)", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )]  # fmt: skip


async def test_the_page_shows_the_tape_the_minutes_the_largest_and_the_gap(
    pg_dsn: str, pg: asyncpg.Connection, browser: Any
) -> None:
    """On the default settings (API on, no token, loopback): history and ledger rows in the
    window, then two liquidations through the emulator. The tape shows those two exactly, the
    minutes hold the exact sums (null in the gap, 0 where recorded and quiet), the largest is
    the 153,086.25 short, and Binance's gap is labelled with its interval."""
    await ledger_with_a_gap(pg)
    await insert(pg, *HISTORY)
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await subscribed(emu)
        await feed_has_read(daemon, pg)  # so the history rows are not live rows to the page
        page = await open_page(browser, daemon.runtime.http_port)
        await state_is(page, "live")

        assert await emu.publish(live("ETHUSDT", "BUY", "1.250", "3123.45", at(11, 59, 30, 250)))
        await expect(page.locator("#tape tbody tr:not(.empty)")).to_have_count(1, timeout=WAIT_MS)
        assert await emu.publish(live("XRPUSDT", "SELL", "1000", "0.5123", at(11, 59, 45)))
        await expect(page.locator("#tape tbody tr:not(.empty)")).to_have_count(2, timeout=WAIT_MS)
        assert await tape(page) == [
            ["11:59:45.000", "binance", "XRPUSDT", "long", "0.5123", "1000", "$512.30"],
            ["11:59:30.250", "binance", "ETHUSDT", "short", "3123.45", "1.250", "$3,904.31"],
        ]

        minutes = {m["minute"]: (m["longs"], m["shorts"])
                   for m in await page.evaluate("collectorPage.minutes()")}  # fmt: skip
        assert len(minutes) == 180  # 09:00 to 11:59: every minute begun before NOW
        assert minutes["2026-11-21T10:15:00.000Z"] == ("5138.74", "0")
        assert minutes["2026-11-21T11:10:00.000Z"] == ("0", "153086.25")
        assert minutes["2026-11-21T11:59:00.000Z"] == ("512.3", "3904.3125")
        assert minutes["2026-11-21T10:30:00.000Z"] == ("0", "0")  # recorded, quiet
        gap = [k for k, v in minutes.items() if v == (None, None)]
        assert gap == [f"2026-11-21T11:{m}:00.000Z" for m in range(20, 35)]  # not zeros

        labels = page.locator('.venue[data-venue="binance"] li.gap-label')
        await expect(labels).to_have_text(["2026-11-21 11:20:00 → 11:35:00 UTC (15 min)"])
        await expect(page.locator('.venue[data-venue="bybit"] li.gap-label')).to_have_text(
            ["2026-11-21 09:00:00 → now UTC (3 h): nothing recorded in the window"]
        )
        await expect(page.locator('.venue[data-venue="binance"] .bar .gap')).to_have_count(1)
        largest = page.locator("#largest tbody tr").first
        await expect(largest.locator("td")).to_have_text(
            ["2026-11-21 11:10:05", "binance", "ETHUSDT", "short", "61234.5", "2.5", "$153,086.25"]
        )
        cursor = await pg.fetchval(
            "SELECT committed_xid::text || '-' || seq FROM market_liquidations"
            " WHERE symbol = 'XRPUSDT'"
        )
        assert await page.evaluate("collectorPage.lastEventId()") == cursor
        await screenshot(page, "page-live.png")

        # Two minutes later (the page's clock): the window slides and coverage is read again;
        # Binance's ledger ends at 12:00, so the two new minutes are a gap, not zeros.
        await page.clock.set_fixed_time(NOW.replace(minute=2))
        await expect(labels).to_have_text(
            ["2026-11-21 11:20:00 → 11:35:00 UTC (15 min)",
             "2026-11-21 12:00:00 → now UTC (2 min)"],
            timeout=WAIT_MS,
        )  # fmt: skip
        slid = await page.evaluate("collectorPage.minutes()")
        assert [m["minute"] for m in (slid[0], slid[-1])] == [
            "2026-11-21T09:02:00.000Z", "2026-11-21T12:01:00.000Z"
        ]  # fmt: skip
        assert [(m["longs"], m["shorts"]) for m in slid[-3:]] == [
            ("512.3", "3904.3125"), (None, None), (None, None)
        ]  # fmt: skip


async def test_with_a_token_the_page_asks_for_it_and_says_when_it_is_refused(
    pg_dsn: str, pg: asyncpg.Connection, browser: Any, tmp_path: Path
) -> None:
    """With `[http] api_token_file` the page says it needs a token (no empty charts), says so
    again when a wrong one is typed, and goes live with the right one."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    await ledger_with_a_gap(pg)
    async with Emulator(EmulatorOptions()) as emu:
        http = HttpConfig(port=0, api_token_file=str(token))
        config = dataclasses.replace(make_config(emu, pg_dsn), http=http)
        async with running(config) as daemon:
            page = await open_page(browser, daemon.runtime.http_port)
            await state_is(page, "token")
            await expect(page.locator("#main")).to_be_hidden()
            await expect(page.locator("#auth-message")).to_have_text(
                "This collector's API needs a bearer token ([http] api_token_file)."
            )
            await screenshot(page, "page-token.png")
            await page.fill("#auth-token", "wrong")
            await page.click("#auth-form button")
            await expect(page.locator("#auth-message")).to_have_text(
                "The token was refused. This collector's API needs a bearer token"
                " ([http] api_token_file).",
                timeout=WAIT_MS,
            )
            await page.fill("#auth-token", "s3cret")
            await page.click("#auth-form button")
            await state_is(page, "live")
            await expect(page.locator('.venue[data-venue="binance"] li.gap-label')).to_have_text(
                ["2026-11-21 11:20:00 → 11:35:00 UTC (15 min)"]
            )
            await subscribed(emu)
            assert await emu.publish(live("ETHUSDT", "BUY", "1.250", "3123.45", at(11, 59, 30)))
            await expect(page.locator("#tape tbody tr:not(.empty) td.symbol")).to_have_text(
                ["ETHUSDT"], timeout=WAIT_MS
            )


async def test_a_row_both_in_the_history_and_the_stream_counts_once(
    pg_dsn: str, pg: asyncpg.Connection, browser: Any
) -> None:
    """A row committed after the stream opened but before the history was read is in both: the
    page holds the history request (Playwright's routing) until the stream has sent the row,
    then lets it go. The row is on the tape once and in its minute's sum once."""
    await ledger_with_a_gap(pg)
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(route: Any) -> None:
        arrived.set()
        await release.wait()
        await route.continue_()

    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        page = await browser.new_page(viewport={"width": 1280, "height": 1100})
        await page.clock.set_fixed_time(NOW)
        await page.route(re.compile(r"/v1/liquidations\?"), hold)
        await page.goto(f"http://127.0.0.1:{daemon.runtime.http_port}/")
        async with asyncio.timeout(WAIT_MS / 1000):
            await arrived.wait()  # the stream is open (the page opens it first)
        await insert(pg, row("LTCUSDT", "SELL", "2", "80.125", at(11, 59, 50), datetime.now(UTC)))
        registry = daemon.runtime.metrics.registry
        sent = "collector_feed_events_sent_total"
        await eventually(lambda: metric_value(registry, sent) == 1, timeout=WAIT_MS / 1000)
        release.set()
        await state_is(page, "live")
        assert await tape(page) == [
            ["11:59:50.000", "binance", "LTCUSDT", "long", "80.125", "2", "$160.25"]
        ]
        minutes = await page.evaluate("collectorPage.minutes()")
        assert (minutes[-1]["minute"], minutes[-1]["longs"]) == (
            "2026-11-21T11:59:00.000Z",
            "160.25",
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_tape_resumes_after_a_restart_without_loss_or_repeats(
    pg_dsn: str, pg: asyncpg.Connection, browser: Any
) -> None:
    """The daemon stops (the stream ends), rows commit while it is down, a new daemon starts on
    the same port: the page reconnects with Last-Event-ID and its tape has every row once."""
    port = free_port()
    async with Emulator(EmulatorOptions()) as emu:
        config = dataclasses.replace(make_config(emu, pg_dsn), http=HttpConfig(port=port))
        async with running(config):
            await subscribed(emu)
            page = await open_page(browser, port)
            await state_is(page, "live")
            assert await emu.publish(live("ETHUSDT", "BUY", "1.250", "3123.45", at(11, 59, 30)))
            await expect(page.locator("#tape td.symbol")).to_have_text(["ETHUSDT"], timeout=WAIT_MS)
        await state_is(page, "reconnecting")
        now = datetime.now(UTC)  # within the feed's look-back (an hour) of the resume
        await insert(pg, row("SOLUSDT", "SELL", "3", "141.25", at(11, 59, 40), now))
        await insert(pg, row("DOGEUSDT", "BUY", "100", "0.31", at(11, 59, 41), now))
        async with running(config):
            await subscribed(emu)
            await expect(page.locator("#tape td.symbol")).to_have_text(
                ["DOGEUSDT", "SOLUSDT", "ETHUSDT"], timeout=WAIT_MS
            )
            await state_is(page, "live")
            assert await emu.publish(live("XRPUSDT", "SELL", "1000", "0.5123", at(11, 59, 45)))
            await expect(page.locator("#tape td.symbol")).to_have_text(
                ["XRPUSDT", "DOGEUSDT", "SOLUSDT", "ETHUSDT"], timeout=WAIT_MS
            )
            await screenshot(page, "page-resumed.png")
