"""Bybit `allLiquidation.{symbol}` streams into the sink, following the listed symbols.

There is no all-market topic (docs/bybit.md section 1.2): per category (`linear`, `inverse`)
the symbol list comes from `GET /v5/market/instruments-info` (paged by cursor), refreshed every
`instruments_refresh_s`; new listings are subscribed and delisted symbols unsubscribed on the
live connections. Topics are spread over connections by `bybit_parse.plan_subscriptions`, at
most `max_args_chars` (21,000) characters of args each (section 1.4). Every connection is a
`venue_link.Link` (reconnects within the 500-per-5-minutes limit, shared by the domain) of
`BybitSession`s, each a row in the coverage ledger with venue "bybit".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import structlog

from collector.config import BybitConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.model import VenueSink
from collector.retry import AttemptBudget, Backoff, Policy, sleep_or_stop
from collector.sources.bybit_parse import (
    TOPIC_PREFIX,
    BybitInstrument,
    BybitReply,
    parse_frame,
    parse_instruments_page,
    plan_subscriptions,
    topic,
)
from collector.sources.venue_ledger import LinkSpec
from collector.sources.venue_link import Link
from collector.sources.venue_session import SessionClosed, VenueSession
from collector.venues import Venue, VenueApiError

log = structlog.get_logger(__name__)

VENUE = Venue.BYBIT
# "Do not build over 500 connections in 5 minutes. This is counted per WebSocket domain"
# (https://bybit-exchange.github.io/docs/v5/rate-limit): one budget for both categories.
ATTEMPT_WINDOW_S = 300.0
# Topics per subscribe request: Bybit limits a connection's args by characters, not a request's
# count; small requests keep a refused one (one bad topic refuses all of it) cheap to split.
SUBSCRIBE_CHUNK = 100
# instruments-info page size: the documented maximum (section 2.1), so ~1 page per category.
PAGE_LIMIT = 1000
# A safety stop for a server whose cursors never end.
MAX_PAGES = 100
_LOGGED_ERROR_CHARS = 300


async def fetch_instruments(
    http: aiohttp.ClientSession, config: BybitConfig, category: str
) -> list[BybitInstrument]:
    """Every `Trading` instrument of `category`, following `nextPageCursor` to the last page.

    Raises `MalformedPayload` (a bad page, HTTP error, such as 403 "access too frequent"),
    `VenueApiError` (a `retCode`), or aiohttp/OS errors.
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


class BybitSession(VenueSession):
    """One connection to `/v5/public/{category}`: subscribes its link's topics, keeps them in
    step with the link (`sync_topics`), pings with `{"op":"ping"}`, parses pushes."""

    def __init__(
        self,
        link: BybitLink,
        http: aiohttp.ClientSession,
        sink: VenueSink,
        metrics: Metrics,
        config: BybitConfig,
        instruments: dict[str, BybitInstrument],
    ) -> None:
        super().__init__(
            link.spec,
            http,
            sink,
            metrics,
            open_timeout_s=config.open_timeout_s,
            heartbeat_s=config.heartbeat_s,
            pong_timeout_s=config.pong_timeout_s,
        )
        self._link = link
        self._category = link.category
        self._instruments = instruments
        self.held: list[str] = []
        self._sync_lock = asyncio.Lock()

    def _ping_text(self) -> str:
        return orjson.dumps({"req_id": f"ping-{self.next_request_id()}", "op": "ping"}).decode()

    async def _subscribe(self) -> tuple[str, ...]:
        await self.sync_topics()
        if self._link.topics and not self.held:
            raise SessionClosed("subscribe_rejected")
        return tuple(self.held)

    async def sync_topics(self) -> bool:
        """Subscribe the link's topics this session does not hold, unsubscribe those it holds
        that the link dropped; True when something changed. A refused topic is logged,
        counted and dropped from the link (the next refresh offers it again)."""
        changed = False
        async with self._sync_lock:
            while missing := [t for t in self._link.topics if t not in set(self.held)]:
                for i in range(0, len(missing), SUBSCRIBE_CHUNK):
                    await self._subscribe_chunk(missing[i : i + SUBSCRIBE_CHUNK])
                changed = True
            wanted = set(self._link.topics)
            extra = [t for t in self.held if t not in wanted]
            for i in range(0, len(extra), SUBSCRIBE_CHUNK):
                chunk = extra[i : i + SUBSCRIBE_CHUNK]
                if await self._op("unsubscribe", chunk):
                    gone = set(chunk)
                    self.held = [t for t in self.held if t not in gone]
                    changed = True
        if changed and self.subscribed.is_set():
            await self.snapshot_streams(tuple(self.held))
        self._metrics.venue_subscribed_topics.labels(VENUE.value, self._category).set(
            sum(len(s.held) for s in self._link.all_sessions())
        )
        return changed

    async def _subscribe_chunk(self, chunk: list[str]) -> None:
        if await self._op("subscribe", chunk):
            self.held.extend(chunk)
            return
        if len(chunk) == 1:
            self._link.refuse(chunk[0])
            return
        for name in chunk:  # one bad topic refuses the whole request: find it
            if await self._op("subscribe", [name]):
                self.held.append(name)
            else:
                self._link.refuse(name)

    async def _op(self, op: str, args: list[str]) -> bool:
        """Send `op` with `args`; True when Bybit answers `success: true`."""
        req_id = f"{op}-{self.next_request_id()}"
        reply = await self.request({"req_id": req_id, "op": op, "args": args}, req_id)
        assert isinstance(reply, BybitReply)
        outcome = "ok" if reply.success else "error"
        self._metrics.venue_subscribe_replies.labels(VENUE.value, outcome).inc()
        if not reply.success:
            # ret_msg is logged, never parsed (docs/bybit.md section 1.3).
            self.log.error(
                "bybit.subscribe_refused", op=op, topics=args[:20], ret_msg=reply.ret_msg
            )
        return reply.success

    async def _on_text(self, text: str, received_at: datetime) -> None:
        try:
            frame = parse_frame(
                text, category=self._category, received_at=received_at,
                instruments=self._instruments,
            )  # fmt: skip
        except MalformedPayload as exc:
            await self.dead_letter("malformed_frame", str(exc), text.encode())
            return
        if isinstance(frame, BybitReply):
            if frame.op in ("ping", "pong"):
                self.pong_received()
            elif not self.resolve(frame.req_id, frame):
                self._metrics.venue_subscribe_replies.labels(VENUE.value, "unexpected").inc()
                self.log.warning("bybit.unexpected_reply", frame=text[:500])
            return
        await self.deliver(frame)


class BybitLink:
    """One planned connection of a category: its topics (what it should hold) and the `Link`
    that keeps a session holding them."""

    def __init__(self, category: str, index: int, url: str, topics: list[str]) -> None:
        self.category = category
        self.spec = LinkSpec(VENUE, f"bybit/{category}#{index}", category, url)
        self.topics = topics
        self.refused: list[str] = []
        self.link: Link | None = None
        self._peers: list[BybitLink] = [self]

    def share(self, peers: list[BybitLink]) -> None:
        """Every link of the category (for the subscribed-topics gauge)."""
        self._peers = peers

    def all_sessions(self) -> list[BybitSession]:
        """The category's live sessions."""
        out = []
        for peer in self._peers:
            current = peer.session
            if current is not None and not current.closed.is_set():
                out.append(current)
        return out

    @property
    def session(self) -> BybitSession | None:
        """The current session, open or not."""
        current = self.link.current if self.link is not None else None
        return current if isinstance(current, BybitSession) else None

    def refuse(self, name: str) -> None:
        """Drop a topic Bybit refused."""
        if name in self.topics:
            self.topics.remove(name)
        self.refused.append(name)

    async def sync(self) -> None:
        """Bring a subscribed session in step with `topics` (an unsubscribed one will on open)."""
        session = self.session
        if session is None or not session.subscribed.is_set() or session.closed.is_set():
            return
        try:
            await session.sync_topics()
        except (SessionClosed, TimeoutError) as exc:
            # The session is ending or not answering: its successor subscribes on open.
            session.log.warning("bybit.sync_failed", error=repr(exc))


class BybitCategory:
    """The links of one category, re-planned as symbols are listed and delisted."""

    def __init__(
        self,
        category: str,
        http: aiohttp.ClientSession,
        sink: VenueSink,
        metrics: Metrics,
        config: BybitConfig,
        budget: AttemptBudget,
        rng: random.Random,
    ) -> None:
        self.category = category
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
        retry = Policy(self._config.reconnect_initial_s * 5, self._config.instruments_refresh_s)
        backoff = retry.backoff(self._rng)
        while not await self.refresh():
            if await sleep_or_stop(backoff.next_delay(), stop):
                return
        backoff.reset()
        async with asyncio.TaskGroup() as group:
            self._group = group
            for link in self.links:
                self._start(link)
            while True:
                delay = self._config.instruments_refresh_s
                if await sleep_or_stop(delay, stop):
                    break
                while not await self.refresh():
                    if await sleep_or_stop(backoff.next_delay(), stop):
                        return
                backoff.reset()

    async def refresh(self) -> bool:
        """Read the symbol list and re-plan; False (logged, counted) when the read failed."""
        try:
            listed = await fetch_instruments(self._http, self._config, self.category)
        except (MalformedPayload, VenueApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._metrics.venue_instrument_refreshes.labels(
                VENUE.value, self.category, "error"
            ).inc()
            self.log.warning("bybit.instruments_failed", error=str(exc)[:_LOGGED_ERROR_CHARS])
            return False
        self._metrics.venue_instrument_refreshes.labels(VENUE.value, self.category, "ok").inc()
        self.instruments.clear()
        self.instruments.update((i.symbol, i) for i in listed)
        await self.apply([i.symbol for i in listed])
        return True

    async def apply(self, symbols: Sequence[str]) -> None:
        """Make the links hold exactly the topics of `symbols`: drop delisted ones from their
        links, add new listings where there is room (else on new links), retire empty links."""
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
                link, self._http, self._sink, self._metrics, config, self.instruments
            ),
            self._metrics,
            backoff=Backoff(config.reconnect_initial_s, config.reconnect_max_s, rng=self._rng),
            jitter_s=config.reconnect_jitter_s,
            budget=self._budget,
            rng=self._rng,
        )
        assert self._group is not None
        assert self._stop is not None
        self._group.create_task(link.link.run(self._stop), name=link.spec.name)


async def run_bybit(
    config: BybitConfig,
    sink: VenueSink,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    categories_out: list[BybitCategory] | None = None,
    rng: random.Random | None = None,
) -> None:
    """Follow every configured category until `stop`; each closes its sessions in the ledger
    on the way out. `categories_out` (tests, readiness) receives the running categories."""
    rng = rng or random.Random()
    budget = AttemptBudget(config.connection_attempts_per_5min, ATTEMPT_WINDOW_S)
    async with aiohttp.ClientSession() as http:
        categories = [
            BybitCategory(c, http, sink, metrics, config, budget, rng) for c in config.categories
        ]
        if categories_out is not None:
            categories_out[:] = categories
        async with asyncio.TaskGroup() as group:
            for category in categories:
                group.create_task(category.run(stop), name=f"bybit {category.category}")
