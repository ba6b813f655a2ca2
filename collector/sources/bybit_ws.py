"""Bybit `allLiquidation.{symbol}` streams into the sink, following the listed symbols.

There is no all-market topic (docs/bybit.md section 1.2): per category (`linear`, `inverse`)
the symbol list comes from `GET /v5/market/instruments-info` (paged by cursor), refreshed every
`instruments_refresh_s`; new listings are subscribed and delisted symbols unsubscribed on the
live connections. Topics are spread over connections by `bybit_parse.plan_subscriptions`, at
most `max_args_chars` (21,000) characters of args each (section 1.4). Every connection is a
`venue_link.Link` (reconnects within the 500-per-5-minutes limit, shared by the domain) of
`bybit_session.BybitSession`s, each a row in the coverage ledger with venue "bybit".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
import structlog

from collector.config import BybitConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.model import Sink
from collector.retry import AttemptBudget, Backoff, exchange_info_retry, sleep_or_stop, ws_reconnect
from collector.sources.bybit_coverage import AllSymbolsLedger
from collector.sources.bybit_parse import (
    TOPIC_PREFIX,
    BybitInstrument,
    parse_instruments_page,
    plan_subscriptions,
    topic,
)
from collector.sources.bybit_session import BybitLink, BybitSession, OnChange, no_change
from collector.sources.venue_link import Link
from collector.sources.venue_session import VenueSession
from collector.venues import Venue, VenueApiError

log = structlog.get_logger(__name__)

VENUE = Venue.BYBIT
# "Do not build over 500 connections in 5 minutes. This is counted per WebSocket domain"
# (https://bybit-exchange.github.io/docs/v5/rate-limit): one budget for both categories.
ATTEMPT_WINDOW_S = 300.0
# instruments-info page size: the documented maximum (section 2.1), so ~1 page per category.
PAGE_LIMIT = 1000
# A safety stop for a server whose cursors never end.
MAX_PAGES = 100
_LOGGED_ERROR_CHARS = 300
# Past the REST limit Bybit answers "403, access too frequent": "stop and wait at least 10
# minutes" (https://bybit-exchange.github.io/docs/v5/rate-limit).
ACCESS_TOO_FREQUENT_WAIT_S = 600.0


class AccessTooFrequent(Exception):
    """Bybit's REST answered 403: this IP must wait `ACCESS_TOO_FREQUENT_WAIT_S`."""


async def fetch_instruments(
    http: aiohttp.ClientSession, config: BybitConfig, category: str
) -> list[BybitInstrument]:
    """Every `Trading` instrument of `category`, following `nextPageCursor` to the last page.

    Raises `AccessTooFrequent` (HTTP 403), `MalformedPayload` (a bad page, another HTTP
    error), `VenueApiError` (a `retCode`), or aiohttp/OS errors.
    """
    url = f"{config.rest_url.rstrip('/')}/v5/market/instruments-info"
    timeout = aiohttp.ClientTimeout(total=config.open_timeout_s * 3)
    out: list[BybitInstrument] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        params = {"category": category, "limit": str(PAGE_LIMIT)}
        if cursor:
            params["cursor"] = cursor
        async with http.get(url, params=params, timeout=timeout) as response:
            body = await response.read()
            if response.status == 403:
                raise AccessTooFrequent(f"HTTP 403 from {url}: {body[:200]!r}")
            if response.status != 200:
                raise MalformedPayload(f"HTTP {response.status} from {url}: {body[:200]!r}")
        page = parse_instruments_page(body, category=category)
        out.extend(page.instruments)
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise MalformedPayload(f"more than {MAX_PAGES} pages from {url}")


def args_chars(topics: Sequence[str]) -> int:
    """The JSON length of `topics` as an args array (what Bybit's 21,000 limit counts)."""
    return len(orjson.dumps(list(topics)))


class BybitCategory:
    """The links of one category, re-planned as symbols are listed and delisted."""

    def __init__(
        self,
        category: str,
        http: aiohttp.ClientSession,
        sink: Sink,
        metrics: Metrics,
        config: BybitConfig,
        budget: AttemptBudget,
        rng: random.Random,
        on_change: OnChange = no_change,
    ) -> None:
        self.category = category
        self._on_change = on_change
        self.loaded = False
        """Whether the symbol list has been read at least once."""
        self._http = http
        self._sink = sink
        self._metrics = metrics
        self._config = config
        self._budget = budget
        self._rng = rng
        self._url = f"{config.ws_url.rstrip('/')}/v5/public/{category}"
        self.instruments: dict[str, BybitInstrument] = {}
        self.links: list[BybitLink] = []
        self._next_index = 0
        self._group: asyncio.TaskGroup | None = None
        self._stop: asyncio.Event | None = None
        self.log = log.bind(venue=VENUE.value, category=category)

    def wanted_topics(self) -> list[str]:
        """Every listed symbol's topic."""
        return [topic(s) for s in self.instruments]

    def held_sessions(self) -> list[VenueSession]:
        """The open, subscribed sessions of the category's links."""
        out: list[VenueSession] = []
        for link in self.links:
            s = link.session
            if s is not None and s.subscribed.is_set() and not s.closed.is_set():
                out.append(s)
        return out

    def held_topics(self) -> set[str]:
        """The topics those sessions hold."""
        held: set[str] = set()
        for session in self.held_sessions():
            assert isinstance(session, BybitSession)
            held.update(session.held)
        return held

    def state(self) -> dict[str, Any]:
        """`/readyz`'s view: connections up of those planned, topics held of those wanted."""
        sessions = [link.session for link in self.links if link.link is not None]
        return {
            "up": sum(link.link.is_up for link in self.links if link.link is not None),
            "wanted": len(self.links),
            "topics": sum(len(s.held) for s in sessions if s is not None and not s.closed.is_set()),
            "symbols": len(self.instruments),
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Load the symbols (retrying with backoff), hold their connections, refresh until
        `stop`."""
        self._stop = stop
        # A failed instruments read: the exchangeInfo refresh's policy (not urgent; at most the
        # refresh interval apart).
        config = self._config
        retry = exchange_info_retry(config.reconnect_initial_s, config.instruments_refresh_s)
        backoff = retry.backoff(self._rng)
        if not await self._refresh_until_done(backoff, stop):
            return
        async with asyncio.TaskGroup() as group:
            self._group = group
            for link in self.links:
                self._start(link)
            while not await sleep_or_stop(self._config.instruments_refresh_s, stop):
                if not await self._refresh_until_done(backoff, stop):
                    break

    async def _refresh_until_done(self, backoff: Backoff, stop: asyncio.Event) -> bool:
        """Refresh, retrying failures with backoff (a 403 waits its 10 minutes); False when
        `stop` came first."""
        while (wait_s := await self.refresh()) is not None:
            if await sleep_or_stop(max(wait_s, backoff.next_delay()), stop):
                return False
        backoff.reset()
        return True

    async def refresh(self) -> float | None:
        """Read the symbol list and re-plan. None when done; when the read failed (logged,
        counted), the least wait before the next try (0: the caller's backoff decides)."""
        wait_s = 0.0
        try:
            listed = await fetch_instruments(self._http, self._config, self.category)
        except AccessTooFrequent as exc:
            error, wait_s = str(exc), ACCESS_TOO_FREQUENT_WAIT_S
        except (MalformedPayload, VenueApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = str(exc)
        else:
            self._metrics.venue_instrument_refreshes.labels(VENUE.value, self.category, "ok").inc()
            self.instruments.clear()
            self.instruments.update((i.symbol, i) for i in listed)
            self.loaded = True
            await self.apply([i.symbol for i in listed])
            await self._on_change(None, None)
            return None
        self._metrics.venue_instrument_refreshes.labels(VENUE.value, self.category, "error").inc()
        self.log.warning(
            "bybit.instruments_failed", error=error[:_LOGGED_ERROR_CHARS], retry_after_s=wait_s
        )
        return wait_s

    async def apply(self, symbols: Sequence[str]) -> None:
        """Make the links hold exactly the topics of `symbols`: drop delisted ones from their
        links, add new listings where there is room (else on new links), retire empty links."""
        for link in [link for link in self.links if link.ended]:
            self.links.remove(link)  # every topic refused: its topics are offered again below
        wanted = [topic(s) for s in symbols]
        wanted_set = set(wanted)
        held = {t for link in self.links for t in link.topics}
        removed = held - wanted_set
        added = [t for t in wanted if t not in held]
        touched: list[BybitLink] = []
        for link in self.links:
            link.refused.clear()
            if removed & set(link.topics):
                link.topics[:] = [t for t in link.topics if t in wanted_set]
                touched.append(link)
        limit = self._config.max_args_chars
        fresh: list[str] = []
        for name in added:
            home = next(
                (link for link in self.links if args_chars([*link.topics, name]) <= limit), None
            )
            if home is None:
                fresh.append(name)
            else:
                home.topics.append(name)
                if home not in touched:
                    touched.append(home)
        if removed or added:
            self.log.info(
                "bybit.symbols_changed",
                listed=[t[len(TOPIC_PREFIX) :] for t in added][:50],
                delisted=sorted(t[len(TOPIC_PREFIX) :] for t in removed)[:50],
            )
        symbols_fresh = [t[len(TOPIC_PREFIX) :] for t in fresh]
        for group in plan_subscriptions(symbols_fresh, max_args_chars=limit):
            link = BybitLink(self.category, self._next_index, self._url, group)
            self._next_index += 1
            self.links.append(link)
            if self._group is not None:
                self._start(link)
        for link in self.links:
            link.share(self.links)
        for link in touched:
            if link.topics:  # an emptied link is retired below, its session closed
                await link.sync()
        for link in [link for link in self.links if not link.topics]:
            self.links.remove(link)
            if link.link is not None:
                link.link.retire()

    def _start(self, link: BybitLink) -> None:
        config = self._config
        link.link = Link(
            link.spec.name,
            VENUE.value,
            lambda: BybitSession(
                link,
                self._http,
                self._sink,
                self._metrics,
                config,
                self.instruments,
                self._on_change,
            ),
            self._metrics,
            backoff=ws_reconnect(config.reconnect_initial_s, config.reconnect_max_s).backoff(
                self._rng
            ),
            jitter_s=config.reconnect_jitter_s,
            budget=self._budget,
            rng=self._rng,
            keep=lambda: bool(link.topics),
            on_subscribed=lambda _session, _previous: self._on_change(None, None),
        )
        assert self._group is not None
        assert self._stop is not None
        self._group.create_task(link.link.run(self._stop), name=link.spec.name)


async def run_bybit(
    config: BybitConfig,
    sink: Sink,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    categories_out: list[BybitCategory] | None = None,
    coverage_out: list[AllSymbolsLedger] | None = None,
    rng: random.Random | None = None,
) -> None:
    """Follow every configured category until `stop`; each closes its sessions in the ledger
    on the way out, and the venue-wide row (`bybit_coverage`) is open exactly while every
    listed symbol is subscribed. `categories_out`, `coverage_out` (tests, readiness) receive
    the running categories and that row's keeper."""
    rng = rng or random.Random()
    budget = AttemptBudget(config.connection_attempts_per_5min, ATTEMPT_WINDOW_S)
    async with aiohttp.ClientSession() as http:
        categories: list[BybitCategory] = []
        coverage = AllSymbolsLedger(categories, sink, config.ws_url)
        categories += [
            BybitCategory(c, http, sink, metrics, config, budget, rng, coverage.update)
            for c in config.categories
        ]
        if categories_out is not None:
            categories_out[:] = categories
        if coverage_out is not None:
            coverage_out[:] = [coverage]
        async with asyncio.TaskGroup() as group:
            group.create_task(coverage.run(stop), name="bybit all-symbols")
            for category in categories:
                group.create_task(category.run(stop), name=f"bybit {category.category}")
