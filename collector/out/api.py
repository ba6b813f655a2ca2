"""The data-out HTTP API, added to the collector's server (`health.serve_http(routes=...)`):

  GET /v1/liquidations/stream   Server-Sent Events of committed liquidations (`feed.Feed`)
  GET /v1/liquidations          history by trade time, a page at a time (`next` cursor)
  GET /v1/coverage              the ledger's covered intervals and gaps per venue

With `[http] api_token_file`, every /v1 request needs `Authorization: Bearer <token>`
(compared in constant time; the token is never logged). Bad parameters are a 400 with a
message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from collector.config import Config
from collector.metrics import Metrics
from collector.out import page
from collector.out.events import Cursor, FeedEvent, Filter, event_from_row, iso
from collector.out.feed import Feed, Subscription, TooManySubscribers
from collector.venues import Venue

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FEED_START_TIMEOUT_S = 10.0
_DEFAULT_SPAN = timedelta(days=1)
_VENUES = frozenset(v.value for v in Venue)


class BadRequest(ValueError):
    """A parameter the API cannot use; its message is the 400's body."""


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}), status=status, content_type="application/json"
    )


# -- parameters -----------------------------------------------------------------------------------


def _time(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name}: not an ISO-8601 time: {raw[:40]!r}") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name}: needs a UTC offset (e.g. 2026-11-21T12:00:00Z)")
    return value.astimezone(UTC)


def _span(request: web.Request) -> tuple[datetime, datetime]:
    to = _time(request, "to", datetime.now(UTC))
    start = _time(request, "from", to - _DEFAULT_SPAN)
    if start >= to:
        raise BadRequest("from: must be before to")
    return start, to


def _filter(request: web.Request) -> Filter:
    venues = request.query.getall("venue", [])
    unknown = sorted(set(venues) - _VENUES)
    if unknown:
        raise BadRequest(f"venue: unknown {unknown[0]!r} (known: {', '.join(sorted(_VENUES))})")
    symbols = [s.strip().upper() for s in request.query.getall("symbol", [])]
    if any(not s for s in symbols):
        raise BadRequest("symbol: empty")
    minimum: Decimal | None = None
    raw = request.query.get("min_notional_usd")
    if raw is not None:
        try:
            minimum = Decimal(raw)
        except InvalidOperation:
            raise BadRequest(f"min_notional_usd: not a number: {raw[:40]!r}") from None
        if not minimum.is_finite() or minimum < 0:
            raise BadRequest("min_notional_usd: must be a finite number >= 0")
    return Filter(frozenset(venues), frozenset(symbols), minimum)


def _limit(request: web.Request, maximum: int) -> int:
    raw = request.query.get("limit", "")
    if raw == "":
        return min(1000, maximum)
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"limit: must be a whole number 1..{maximum}")
    return int(raw)


# -- the API --------------------------------------------------------------------------------------


class Api:
    """The /v1 routes over `feed` (streams) and `pool` (history, coverage)."""

    def __init__(self, config: Config, feed: Feed, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self.config = config
        self.feed = feed
        self.pool = pool
        self.metrics = metrics
        path = config.http.api_token_file
        # Read once at start (load_config checked that it reads and is not empty).
        self._token = Path(path).read_text(encoding="utf-8").strip().encode() if path else None

    def add_routes(self, app: web.Application) -> None:
        """Add the /v1 routes and the page over them (`out/page.py`) to `app` (nothing when
        `[http] api_enabled` is false)."""
        if not self.config.http.api_enabled:
            return
        app.router.add_get("/v1/liquidations/stream", self._guard(self.stream))
        app.router.add_get("/v1/liquidations", self._guard(self.history))
        app.router.add_get("/v1/coverage", self._guard(self.coverage))
        page.add_routes(app)  # GET /: the page over these routes (no token: it asks for one)

    def _guard(self, handler: Handler) -> Handler:
        """`handler` behind the bearer token (when one is configured) and the 400 answer."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._token is not None:
                given = request.headers.get("Authorization", "")
                scheme, _, token = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode(), self._token
                ):
                    self.metrics.feed_rejected.labels("unauthorized").inc()
                    response = _error(401, "a bearer token is required ([http] api_token_file)")
                    response.headers["WWW-Authenticate"] = "Bearer"
                    return response
            try:
                return await handler(request)
            except BadRequest as exc:
                return _error(400, str(exc))

        return guarded

    # -- GET /v1/liquidations/stream ------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events of committed liquidations from the feed's head, or after
        `Last-Event-ID` (a cursor within `[feed] lookback_s`) without loss or repeats."""
        match = _filter(request)
        last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        try:
            resume = Cursor.parse(last_id) if last_id else None
        except ValueError as exc:
            raise BadRequest(f"Last-Event-ID: {exc}") from None
        try:
            async with asyncio.timeout(_FEED_START_TIMEOUT_S):
                await self.feed.started()
        except TimeoutError:
            return _error(503, "the feed has not read the database yet")
        try:
            sub = self.feed.subscribe(match)
        except TooManySubscribers:
            self.metrics.feed_rejected.labels("too_many_subscribers").inc()
            limit = self.config.feed.max_subscribers
            return _error(503, f"too many subscribers (at most {limit}: [feed] max_subscribers)")
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                         "X-Accel-Buffering": "no"},
            )  # fmt: skip
            await response.prepare(request)
            reason = await self._send(response, sub, resume)
        finally:
            self.feed.unsubscribe(sub)
        self.metrics.feed_disconnects.labels(reason).inc()
        return response

    async def _send(
        self, response: web.StreamResponse, sub: Subscription, resume: Cursor | None
    ) -> str:
        """Write the stream until it ends; return why it ended."""
        if resume is not None:
            problem = await self._check_resume(resume)
            if problem is not None:
                reason, message = problem
                await self._last_words(response, reason, message)
                return reason
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as guard:
                # A failed subscription (slow consumer, shutdown) interrupts whatever the stream
                # waits for, a write to a client that does not read included.
                sub.on_fail = lambda: guard.reschedule(loop.time())
                await self._stream_rows(response, sub, resume or sub.joined_at)
        except TimeoutError:
            if sub.failed is None:
                raise
        except (ConnectionResetError, ConnectionError):
            return "client"
        finally:
            sub.on_fail = None
        reason = sub.failed or "client"
        messages = {
            "slow_consumer": f"fell {sub.capacity} events behind ([feed] subscriber_buffer)",
            "shutdown": "the collector is shutting down",
        }
        await self._last_words(response, reason, messages.get(reason, reason))
        return reason

    async def _check_resume(self, resume: Cursor) -> tuple[str, str] | None:
        received = await self.feed.received_at(resume)
        lookback = self.config.feed.lookback_s
        if received is None:
            return "cursor_unknown", f"no liquidation has the id {resume}"
        if received < datetime.now(UTC) - timedelta(seconds=lookback):
            return "cursor_too_old", f"{resume} is older than the look-back ({lookback:g} s)"
        return None

    async def _stream_rows(
        self, response: web.StreamResponse, sub: Subscription, position: Cursor
    ) -> None:
        # Catch up from the database to where the subscription joined the live rows...
        while position < sub.joined_at:
            rows = await self.feed.read_range(position, sub.joined_at)
            if not rows:
                break
            await self._write(response, [r for r in rows if sub.match.matches(r)])
            position = rows[-1].cursor
        # ...then the live rows, skipping what the catch-up (or a replica ahead) already sent.
        heartbeat = self.config.feed.heartbeat_s
        while sub.failed is None:
            try:
                async with asyncio.timeout(heartbeat):
                    rows = await sub.take()
            except TimeoutError:
                await response.write(b": ping\n\n")
                continue
            fresh = [r for r in rows if r.cursor > position]
            if fresh:
                await self._write(response, fresh)
                position = fresh[-1].cursor

    async def _write(self, response: web.StreamResponse, rows: list[FeedEvent]) -> None:
        if rows:
            await response.write(b"".join(r.sse() for r in rows))
            self.metrics.feed_events_sent.inc(len(rows))

    async def _last_words(self, response: web.StreamResponse, reason: str, message: str) -> None:
        """An `event: error` saying why the stream ends, if the client takes it within a
        heartbeat interval."""
        body = orjson.dumps({"reason": reason, "message": message})
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(self.config.feed.heartbeat_s):
                await response.write(b"event: error\ndata: %s\n\n" % body)
        log.info("feed.stream_ended", reason=reason)

    # -- GET /v1/liquidations -------------------------------------------------------------------

    async def history(self, request: web.Request) -> web.Response:
        """Liquidations with trade time in [from, to), oldest first, `limit` per page; `next`
        is the `cursor` parameter for the following page (null on the last)."""
        start, to = _span(request)
        match = _filter(request)
        limit = _limit(request, self.config.feed.history_max_rows)
        after = _page_cursor(request.query.get("cursor"))
        rows = await self.pool.fetch(
            _HISTORY, start, to, sorted(match.venues) or None, sorted(match.symbols) or None,
            None if match.min_notional_usd is None else str(match.min_notional_usd),
            *after, limit + 1,
        )  # fmt: skip
        page = rows[:limit]
        items = [event_from_row(r).as_json() for r in page]
        nxt = _next_cursor(page[-1]) if len(rows) > limit else None
        body = {"from": iso(start), "to": iso(to), "liquidations": items, "next": nxt}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    # -- GET /v1/coverage -----------------------------------------------------------------------

    async def coverage(self, request: web.Request) -> web.Response:
        """Per venue, the intervals of [from, to) its streams covered (live, or repaired by a
        read-back) and its gaps (repaired ones name their sources)."""
        start, to = _span(request)
        venues = sorted(_filter(request).venues) or sorted(_VENUES)
        out: list[dict[str, Any]] = []
        async with self.pool.acquire() as conn:
            for venue in venues:
                streams = await conn.fetchval(
                    "SELECT coverage_streams FROM venues WHERE venue = $1", venue
                )
                covered = await conn.fetch(_COVERED, venue, streams, start, to)
                gaps = await conn.fetch(_GAPS, venue, streams, start, to)
                out.append({
                    "venue": venue,
                    "covered": [{"start": iso(r[0]), "end": iso(r[1]), "repaired": r[2]}
                                for r in covered],
                    "gaps": [{"start": iso(r[0]), "end": iso(r[1]), "repaired": r[2],
                              "repair_sources": r[3]} for r in gaps],
                })  # fmt: skip
        body = {"from": iso(start), "to": iso(to), "venues": out}
        return web.Response(body=orjson.dumps(body), content_type="application/json")


_HISTORY = """SELECT committed_xid AS xid, seq, content_key, venue, market, symbol,
       liquidated_side, price::text AS price, qty::text AS qty,
       notional_usd::text AS notional_usd, trade_time, received_at
  FROM liquidation_feed
 WHERE trade_time >= $1 AND trade_time < $2
   AND ($3::text[] IS NULL OR venue = ANY($3))
   AND ($4::text[] IS NULL OR symbol = ANY($4))
   AND ($5::numeric IS NULL OR notional_usd >= $5::numeric)
   AND ($6::timestamptz IS NULL OR (trade_time, venue, content_key) > ($6, $7, $8))
 ORDER BY trade_time, venue, content_key
 LIMIT $9"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COVERED = "SELECT * FROM coverage_intervals($1, $2, $3, $4)"
_GAPS = "SELECT * FROM coverage_gaps($1, $2, $3, $4)"


def _next_cursor(row: asyncpg.Record) -> str:
    micros = (row["trade_time"] - _EPOCH) // timedelta(microseconds=1)
    text = f"{micros}.{row['venue']}.{bytes(row['content_key']).hex()}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _page_cursor(raw: str | None) -> tuple[datetime | None, str | None, bytes | None]:
    if not raw:
        return None, None, None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        micros, venue, key = text.split(".")
        moment = _EPOCH + timedelta(microseconds=int(micros))
        return moment, venue, bytes.fromhex(key)
    except ValueError:
        raise BadRequest("cursor: not a cursor from a previous page's `next`") from None
