"""One Bybit connection's topics and session: `BybitLink` is what a connection should hold
(the planner in `bybit_ws` changes it as symbols are listed and delisted), `BybitSession` one
websocket session holding it: it subscribes and unsubscribes to match (`sync_topics`, each
reply checked), pings with `{"op":"ping"}` (docs/bybit.md section 1.3) and parses pushes with
`bybit_parse`; what does not parse is dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

import aiohttp
import orjson

from collector.config import BybitConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.model import Sink
from collector.sources.bybit_parse import BybitInstrument, BybitReply, parse_frame
from collector.sources.venue_ledger import LinkSpec
from collector.sources.venue_link import Link
from collector.sources.venue_session import SessionClosed, VenueSession
from collector.venues import Venue

VENUE = Venue.BYBIT
# Topics per subscribe request: Bybit limits a connection's args by characters, not a request's
# count; small requests keep a refused one (one bad topic refuses all of it) cheap to split.
SUBSCRIBE_CHUNK = 100

OnChange = Callable[[str | None, datetime | None], Awaitable[None]]
"""What a session calls when what it holds changed: (why cover ended, when) after a close."""


async def no_change(reason: str | None = None, at: datetime | None = None) -> None:
    return None


class BybitSession(VenueSession):
    """One connection to `/v5/public/{category}`: subscribes its link's topics, keeps them in
    step with the link (`sync_topics`), pings with `{"op":"ping"}`, parses pushes."""

    def __init__(
        self,
        link: BybitLink,
        http: aiohttp.ClientSession,
        sink: Sink,
        metrics: Metrics,
        config: BybitConfig,
        instruments: dict[str, BybitInstrument],
        on_change: OnChange = no_change,
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
        self._on_change = on_change

    def _ping_text(self) -> str:
        return orjson.dumps({"req_id": f"ping-{self.next_request_id()}", "op": "ping"}).decode()

    async def _subscribe(self) -> tuple[str, ...]:
        await self.sync_topics()
        if not self.held:
            # Every topic refused (or none left to hold): a connection with nothing subscribed
            # reads nothing, so it is closed (never subscribed in the ledger: it covers nothing)
            # and counted as `subscribe_rejected`; the link ends once it has no topic left.
            self.log.error(
                "bybit.connection_refused_all", refused=len(self._link.refused),
                topics=self._link.refused[:20], left=len(self._link.topics),
            )  # fmt: skip
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
        if changed:
            await self._on_change(None, None)
        return changed

    async def _after_close(self) -> None:
        record = self.ledger.record
        await self._on_change(self.close_reason, record.closed_at if record else None)

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
    def ended(self) -> bool:
        """Whether its `Link` stopped for good (it had no topic left to hold)."""
        return self.link is not None and self.link.ended

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
