"""Binance forceOrder websocket streams into the writer, with a ledger of when we listened.

`plan_shards` spreads the configured streams over connections within Binance's per-connection
limits. Each is held by `redundancy` `Shard`s (replicas) at once, every one its own
connection carrying every event, so that one drop loses nothing (the writer stores each event
once); their rotations are staggered, and a replica silent while its twin receives events is
replaced as stale. A `Shard` owns one such connection: it connects (with capped, jittered
backoff over failed attempts; at once after a confirmed connection ends), rotates
make-before-break ahead of the 24 h cut, and records every session in the coverage ledger.
A `Connection` is one websocket session: it reads frames,
answers each ping with a pong carrying its payload (docs/binance.md §1.4), routes
control replies apart from data (§1.5), dead-letters what it cannot parse, and on close
UNSUBSCRIBEs first so no frame already sent to it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog

from collector.config import BinanceConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.model import DeadLetter, SessionRecord
from collector.retry import AttemptBudget, Backoff, sleep_or_stop
from collector.sink.writer import Writer
from collector.sources.binance_parse import (
    ControlReply,
    DataFrame,
    Source,
    decode_frame,
    parse_force_order,
    unknown_fields,
)
from collector.sources.catalog import SymbolCatalog

log = structlog.get_logger(__name__)

ALL_MARKET = "!forceOrder@arr"
# Keep URLs short; further streams are added with paced SUBSCRIBE messages.
_MAX_URL_STREAMS = 50
_SUBSCRIBE_CHUNK = 100
_MAX_ANOMALY_KEYS = 10_000
_ROTATION_RETRY_S = 60.0

Pause = Callable[[float, asyncio.Event], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """One logical connection: a host, a route and the streams it carries."""

    name: str
    host: str  # "fstream" | "dstream"
    route: str  # "market" on fstream (routed since 2026), "" on dstream
    base_url: str
    streams: tuple[str, ...]

    @property
    def url(self) -> str:
        """The combined-stream URL: `<base>/<route>/stream?streams=a/b` (§1.1, §1.2)."""
        prefix = f"{self.base_url.rstrip('/')}/{self.route}" if self.route else self.base_url
        return f"{prefix.rstrip('/')}/stream?streams={'/'.join(self.streams[:_MAX_URL_STREAMS])}"


def symbol_stream(symbol: str) -> str:
    """`<lowercase symbol>@forceOrder` (stream names use lowercase symbols, §1.2)."""
    return f"{symbol.lower()}@forceOrder"


def plan_shards(config: BinanceConfig) -> list[ShardSpec]:
    """Spread the configured streams over connections within the per-connection limits."""
    specs: list[ShardSpec] = []

    def add(host: str, route: str, base: str, streams: list[str], limit: int) -> None:
        unique = list(dict.fromkeys(streams))
        for i in range(0, len(unique), limit):
            chunk = tuple(unique[i : i + limit])
            name = f"{host}/{route or 'root'}#{len(specs)}"
            specs.append(ShardSpec(name, host, route, base, chunk))

    um = ([ALL_MARKET] if config.all_market else []) + [
        symbol_stream(s) for s in config.usdm_symbols
    ]
    cm = ([ALL_MARKET] if config.coin_m_all_market else []) + [
        symbol_stream(s) for s in config.coinm_symbols
    ]
    if um:
        add("fstream", "market", config.fstream_url, um, config.max_streams_per_connection_usdm)
    if cm:
        add("dstream", "", config.dstream_url, cm, config.max_streams_per_connection_coinm)
    return specs


def stream_kind(stream: str) -> str:
    """Bounded metric label: `all_market` or `symbol`."""
    return "all_market" if stream.startswith("!") else "symbol"


class Pacer:
    """Spaces control messages at most `rate_per_s` apart (Binance allows 10 incoming/s)."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval = 1.0 / rate_per_s
        self._next = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        delay = self._next - now
        self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


class ConnectionClosed(Exception):
    """A connection ended; `reason` is a bounded label for metrics and the ledger."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Connection:
    """One websocket session; see the module docstring."""

    _ids = itertools.count(1)

    def __init__(
        self,
        spec: ShardSpec,
        http: aiohttp.ClientSession,
        writer: Writer,
        metrics: Metrics,
        catalog: SymbolCatalog,
        config: BinanceConfig,
        anomalies: set[tuple[str, str]],
        replica: int = 0,
    ) -> None:
        self.spec = spec
        self._http = http
        self._writer = writer
        self._draining = asyncio.Event()
        self._metrics = metrics
        self._catalog = catalog
        self._config = config
        self._anomalies = anomalies
        self._pacer = Pacer(config.control_messages_per_s)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[int, asyncio.Future[ControlReply]] = {}
        # Ids of requests sent whose caller stopped waiting (the first event confirmed the
        # subscription before LIST_SUBSCRIPTIONS answered): their replies are expected.
        self._abandoned: set[int] = set()
        self._task: asyncio.Task[None] | None = None  # `_run`: owns the reader and the heartbeat
        self._record: SessionRecord | None = None
        self._request_ids = itertools.count(1)
        self.subscribed = asyncio.Event()  # LIST_SUBSCRIPTIONS answered, or an event arrived
        self.delivered = asyncio.Event()  # the first event arrived
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.opened_monotonic = 0.0
        self.events_received = 0
        self._first_event_at: datetime | None = None
        self._last_event_at: datetime | None = None
        self._source_by_stream: dict[str | None, Source] = {}
        self._last_frame_monotonic = time.monotonic()
        self._last_frame_at: datetime | None = None
        # Monotonic times of the last data frame (any text frame) and the last event: a
        # replica silent while its twin receives events is stale (`Shard._is_stale`).
        self.last_data_monotonic = self._last_frame_monotonic
        self.last_event_monotonic: float | None = None
        # Whether the reader is waiting on the socket (everything that arrived has been read),
        # and the last moment it was seen so: the ledger's liveness mark.
        self._receiving = False
        self._read_through_at: datetime | None = None
        # Symbols exchangeInfo (at `_checked_version`) lists; unknown ones are counted each time.
        self._checked_symbols: set[str] = set()
        self._checked_version = -1
        # Events per (market, stream kind) not yet added to the Prometheus counter.
        self._unpublished: dict[tuple[str, str], int] = {}
        self.log = log.bind(connection=spec.name, replica=replica, conn_id=next(self._ids))

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, require_confirmation: bool = False) -> None:
        """Connect, record the session, start reading, SUBSCRIBE what the URL could not carry,
        then confirm the subscription: a LIST_SUBSCRIPTIONS reply or the first event.

        Raises `ConnectionClosed` if the upgrade fails, a SUBSCRIBE is refused, or (with
        `require_confirmation`, as rotation needs) nothing confirms within `open_timeout_s`;
        the caller backs off. Without it an unconfirmed connection is kept: a quiet feed and a
        server that does not answer LIST_SUBSCRIPTIONS look the same.
        """
        try:
            async with asyncio.timeout(self._config.open_timeout_s):
                self._ws = await self._connect()
        except aiohttp.WSServerHandshakeError as exc:
            raise ConnectionClosed(f"http_{exc.status}") from exc
        except TimeoutError as exc:
            raise ConnectionClosed("connect_timeout") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionClosed("connect_failed") from exc
        now = datetime.now(UTC)
        self.opened_monotonic = self.last_data_monotonic = time.monotonic()
        self._read_through_at = now
        self._record = SessionRecord(
            session_id=uuid.uuid4(),
            connection=self.spec.name,
            host=self.spec.host,
            route=self.spec.route,
            url=self.spec.url,
            streams=self.spec.streams,
            opened_at=now,
            last_alive_at=now,
        )
        await self._writer.put(self._record, release=self._draining)
        self._metrics.ws_connects.labels(self.spec.host).inc()
        self._metrics.ws_connections.labels(self.spec.host).inc()
        self._task = asyncio.create_task(self._run(), name=f"ws-conn {self.spec.name}")
        self.log.info("ws.opened", url=self.spec.url, streams=len(self.spec.streams))
        try:
            async with asyncio.timeout(self._config.open_timeout_s):
                await self._subscribe_rest()
            confirmed = await self._confirm()
        except (TimeoutError, ConnectionClosed) as exc:
            reason = exc.reason if isinstance(exc, ConnectionClosed) else "subscribe_timeout"
            await self.close(reason)
            raise ConnectionClosed(reason) from exc
        if confirmed:
            self._metrics.ws_control_replies.labels(self.spec.host, "ok").inc()
            self.subscribed.set()
            await self._snapshot(subscribed_at=datetime.now(UTC))
        elif require_confirmation:
            await self.close("subscribe_timeout")
            raise ConnectionClosed("subscribe_timeout")
        else:
            self.log.warning("ws.subscription_unconfirmed", timeout_s=self._config.open_timeout_s)

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        return await self._http.ws_connect(
            self.spec.url,
            # Pings are answered by `_read` with the same payload (§1.4); handling them there
            # also marks the link alive for the idle watchdog.
            autoping=False,
            heartbeat=None,  # our own pings would count toward the 10 msg/s limit
            max_msg_size=16 * 1024 * 1024,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )

    async def _subscribe_rest(self) -> None:
        """SUBSCRIBE, in paced chunks, the streams that did not fit in the URL (§1.5)."""
        rest = list(self.spec.streams[_MAX_URL_STREAMS:])
        for i in range(0, len(rest), _SUBSCRIBE_CHUNK):
            reply = await self._request("SUBSCRIBE", rest[i : i + _SUBSCRIBE_CHUNK])
            if reply.error is not None:
                self._metrics.ws_control_replies.labels(self.spec.host, "error").inc()
                self.log.error("ws.subscribe_rejected", error=reply.error)
                raise ConnectionClosed("subscribe_rejected")

    async def _confirm(self) -> bool:
        """True once LIST_SUBSCRIPTIONS answers or an event arrives, within `open_timeout_s`.

        Raises `ConnectionClosed` when the list lacks a stream we SUBSCRIBEd. Whether Binance
        lists the streams named in the URL is not documented, so a list without them only logs.
        """
        listing = asyncio.ensure_future(self._request("LIST_SUBSCRIPTIONS", None))
        data: asyncio.Future[Any] = asyncio.ensure_future(self.delivered.wait())
        waiting: set[asyncio.Future[Any]] = {listing, data}
        try:
            await asyncio.wait(
                waiting, timeout=self._config.open_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            data.cancel()
            if not listing.done():
                listing.cancel()
        if listing.done() and not listing.cancelled():
            reply = listing.result()  # ConnectionClosed propagates
            if reply.error is not None:
                self.log.warning("ws.list_subscriptions_refused", error=reply.error)
                return True  # the server is alive and processed our request after the URL
            listed = set(reply.result) if isinstance(reply.result, list) else set()
            missing = set(self.spec.streams[_MAX_URL_STREAMS:]) - listed
            if missing:
                self._metrics.ws_control_replies.labels(self.spec.host, "error").inc()
                self.log.error("ws.subscription_incomplete", missing=sorted(missing)[:20])
                raise ConnectionClosed("subscribe_rejected")
            unlisted = set(self.spec.streams[:_MAX_URL_STREAMS]) - listed
            if unlisted:
                self.log.warning("ws.url_streams_unlisted", streams=sorted(unlisted)[:20])
            return True
        return self.delivered.is_set()

    async def _request(self, method: str, params: list[str] | None) -> ControlReply:
        ws = self._ws
        if ws is None or self.closed.is_set():
            raise ConnectionClosed(self.close_reason or "closed")
        ident = next(self._request_ids)  # futures require an unsigned integer id (§1.5)
        future: asyncio.Future[ControlReply] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        message: dict[str, Any] = {"method": method, "id": ident}
        if params is not None:
            message["params"] = params
        sent = False
        await self._pacer.wait()
        try:
            await ws.send_str(orjson.dumps(message).decode())
            sent = True
            closed: asyncio.Future[Any] = asyncio.ensure_future(self.closed.wait())
            waiting: set[asyncio.Future[Any]] = {future, closed}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if not future.done():
                raise ConnectionClosed(self.close_reason or "closed")
            return future.result()
        finally:
            self._pending.pop(ident, None)
            if sent and not future.done():
                self._abandoned.add(ident)

    async def close(self, reason: str) -> None:
        """Close the socket and finish the session's ledger row. Idempotent.

        A subscribed session first UNSUBSCRIBEs everything and waits for the reply: frames on
        one socket are ordered, so every event sent before it has been read and queued when the
        reply arrives. (aiohttp's close() would discard frames still in flight.)
        """
        if not self.close_reason:
            self.close_reason = reason
        # From here on what the reader reads goes behind the writer's queue if it is full: a
        # connection closed for rotation (or anything else) while the database is slow or down
        # must not wait out the UNSUBSCRIBE reply, nor be cancelled holding what it read.
        self._draining.set()
        if self.subscribed.is_set() and not self.closed.is_set():
            try:
                async with asyncio.timeout(self._config.open_timeout_s):
                    await self._request("UNSUBSCRIBE", list(self.spec.streams))
            except (TimeoutError, ConnectionClosed) as exc:
                self.log.warning("ws.unsubscribe_failed", error=type(exc).__name__)
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
        # Let the reader finish what it read (it may be waiting for queue space) rather than
        # cancel it mid-put; cancel only if it does not end.
        run = self._task
        if run is not None and run is not asyncio.current_task():
            _, pending = await asyncio.wait({run}, timeout=self._config.open_timeout_s)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._finish()

    async def _run(self) -> None:
        """Read and beat under one owner, so neither outlives the other; then finish.

        Anything but the socket's own errors escaping either (a bug, say) ends the session
        too: it is counted, and closed in the ledger at its last received frame, since nothing
        after that was read.
        """
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                beat = group.create_task(self._beat(), name=f"ws-beat {self.spec.name}")
                reader = group.create_task(self._read(), name=f"ws-read {self.spec.name}")
                reader.add_done_callback(lambda _: beat.cancel())
        except* Exception as failures:
            failure = failures.exceptions[0]
        if failure is None:
            await self._finish()
            return
        self.close_reason = self.close_reason or "reader_failed"
        self._metrics.ws_reader_failures.labels(self.spec.host).inc()
        self.log.error("ws.reader_failed", error=repr(failure), exc_info=failure)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        await self._finish(closed_at=self._last_frame_at or self._read_through_at)

    async def _finish(self, closed_at: datetime | None = None) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(self.close_reason or "closed"))
        if self._record is None:
            return
        self._metrics.ws_connections.labels(self.spec.host).dec()
        closed_at = closed_at or datetime.now(UTC)
        await self._snapshot(closed_at=closed_at, close_reason=self.close_reason)
        self.log.info(
            "ws.closed",
            reason=self.close_reason,
            events=self.events_received,
            lived_s=round(time.monotonic() - self.opened_monotonic, 3),
        )

    def _publish_metrics(self) -> None:
        for (market, kind), count in self._unpublished.items():
            self._metrics.events_received.labels(self.spec.host, market, kind).inc(count)
        if self._unpublished and self._last_event_at is not None:
            self._metrics.last_event_timestamp.labels(self.spec.host).set(
                self._last_event_at.timestamp()
            )
        self._unpublished.clear()

    @property
    def is_receiving(self) -> bool:
        """Whether the reader waits on the socket (it is not held up by a full writer queue)."""
        return self._receiving

    def _read_through(self) -> datetime:
        """Until when everything the server sent is known to be read: now while the reader
        waits on the socket, else the last moment it was seen waiting. (A reader held up by a
        full writer queue has frames buffered unread; time it did not read is not covered.)"""
        if self._receiving or self._read_through_at is None:
            self._read_through_at = datetime.now(UTC)
        return self._read_through_at

    async def _snapshot(self, **changes: Any) -> None:
        self._publish_metrics()
        assert self._record is not None
        self._record = replace(
            self._record,
            last_alive_at=self._read_through(),
            first_event_at=self._first_event_at,
            last_event_at=self._last_event_at,
            events_received=self.events_received,
            **changes,
        )
        await self._writer.put(self._record, release=self._draining)

    async def _beat(self) -> None:
        """Refresh the ledger's liveness mark; close a link that sent no frame at all (not even
        Binance's 3-minute ping) for `idle_timeout_s`. Data silence alone is normal."""
        while True:
            await asyncio.sleep(self._config.heartbeat_s)
            if time.monotonic() - self._last_frame_monotonic > self._config.idle_timeout_s:
                self.close_reason = self.close_reason or "idle_timeout"
                if self._ws is not None:
                    # The reader sees the close and finishes the session.
                    await self._ws.close()
                return
            await self._snapshot()

    # -- reading -----------------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        reason = "server_closed"
        text_type, ping_type, pong_type = (
            aiohttp.WSMsgType.TEXT,
            aiohttp.WSMsgType.PING,
            aiohttp.WSMsgType.PONG,
        )
        try:
            while True:
                self._receiving = True
                try:
                    msg = await ws.receive()
                finally:
                    self._receiving = False
                self._last_frame_monotonic = time.monotonic()
                self._last_frame_at = received_at = datetime.now(UTC)
                if msg.type is text_type:
                    await self._on_text(msg.data, received_at)
                elif msg.type is ping_type:
                    await ws.pong(msg.data)  # "a pong with a copy of ping's payload" (§1.4)
                elif msg.type is pong_type:
                    pass
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await self._dead_letter("unexpected_binary", "binary frame", msg.data)
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = "error"
                    self.log.warning("ws.error", error=repr(ws.exception()))
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
        except (aiohttp.ClientError, OSError) as exc:
            reason = "error"
            self.log.warning("ws.error", error=repr(exc))
        if not self.close_reason:
            self.close_reason = reason
        with contextlib.suppress(Exception):
            await ws.close()

    async def _on_text(self, text: str, received_at: datetime) -> None:
        received_mono = self.last_data_monotonic = self._last_frame_monotonic
        try:
            frame = decode_frame(text)
        except MalformedPayload as exc:
            await self._dead_letter("malformed_json", str(exc), text.encode())
            return
        if isinstance(frame, ControlReply):
            self._on_control(frame, text)
            return
        await self._on_data(frame, text, received_at, received_mono)

    def _on_control(self, reply: ControlReply, text: str) -> None:
        future = self._pending.get(reply.id) if reply.id is not None else None
        if future is not None and not future.done():
            future.set_result(reply)
            return
        if reply.id is not None and reply.id in self._abandoned:
            # A reply to a request we sent and no longer wait for: expected, not a warning.
            self._abandoned.discard(reply.id)
            self._metrics.ws_control_replies.labels(self.spec.host, "late").inc()
            self.log.debug("ws.late_control_reply", id=reply.id, error=reply.error)
            return
        self._metrics.ws_control_replies.labels(self.spec.host, "unexpected").inc()
        self.log.warning("ws.unexpected_control", frame=text[:500])

    def _source(self, stream: str | None) -> Source:
        source = self._source_by_stream.get(stream)
        if source is None:
            name = stream if stream is not None else self.spec.streams[0]
            source = Source(self.spec.host, self.spec.route, name)
            self._source_by_stream[stream] = source
        return source

    async def _on_data(
        self, frame: DataFrame, text: str, received_at: datetime, received_mono: float
    ) -> None:
        source = self._source(frame.stream)
        try:
            row = parse_force_order(
                frame.event,
                source=source,
                received_at=received_at,
                raw=text,
                received_monotonic=received_mono,
                contract_sizes=self._catalog.contract_sizes,
            )
        except MalformedPayload as exc:
            reason = "unknown_event" if exc.field == "e" else "malformed_event"
            await self._dead_letter(reason, str(exc), text.encode())
            return
        self.events_received += 1
        self.last_event_monotonic = received_mono
        if self._first_event_at is None:
            self._first_event_at = received_at
            self.delivered.set()
        self._last_event_at = received_at
        # Counted locally and published on each heartbeat: prometheus_client's locked inc()
        # per event was a measurable share of the hot path.
        key = (row.market.value, stream_kind(source.stream))
        self._unpublished[key] = self._unpublished.get(key, 0) + 1
        self._metrics.mark_event()
        await self._writer.put(row, release=self._draining)
        extra = unknown_fields(frame.event)
        if extra:
            await self._anomaly("unknown_field", ",".join(sorted(extra)), text)
        if self._checked_version != self._catalog.version:
            self._checked_version = self._catalog.version
            self._checked_symbols.clear()
        if row.symbol not in self._checked_symbols:
            if self._catalog.is_known(row.market, row.symbol) is False:
                await self._anomaly("unknown_symbol", f"{row.market.value}:{row.symbol}", text)
            else:
                self._checked_symbols.add(row.symbol)

    async def _anomaly(self, kind: str, what: str, text: str) -> None:
        """Count a kept row's anomaly; dead-letter (kept=True) the first example of each."""
        self._metrics.payload_anomalies.labels(kind).inc()
        key = (kind, what)
        if key in self._anomalies or len(self._anomalies) >= _MAX_ANOMALY_KEYS:
            return
        self._anomalies.add(key)
        self.log.warning("ws.payload_anomaly", kind=kind, what=what)
        await self._writer.put(
            DeadLetter(datetime.now(UTC), self._where(), kind, what, text.encode(), kept=True),
            release=self._draining,
        )

    async def _dead_letter(self, reason: str, detail: str, raw: bytes) -> None:
        self._metrics.dead_letters.labels(reason).inc()
        self.log.warning("ws.dead_letter", reason=reason, detail=detail[:300])
        await self._writer.put(
            DeadLetter(datetime.now(UTC), self._where(), reason, detail, raw),
            release=self._draining,
        )

    def _where(self) -> str:
        return f"{self.spec.host}/{self.spec.route}" if self.spec.route else self.spec.host


class Shard:
    """Keeps one connection of a shard up: reconnects with backoff, rotates before the 24 h
    cut, and replaces its connection when it is stale next to a twin (`twins`: every replica
    of the same `ShardSpec`, this one included)."""

    def __init__(
        self,
        spec: ShardSpec,
        http: aiohttp.ClientSession,
        writer: Writer,
        metrics: Metrics,
        catalog: SymbolCatalog,
        config: BinanceConfig,
        *,
        rng: random.Random | None = None,
        pause: Pause = sleep_or_stop,
        budget: AttemptBudget | None = None,
        replica: int = 0,
    ) -> None:
        self.spec = spec
        self.replica = replica
        self.twins: list[Shard] = [self]
        self._http = http
        self._writer = writer
        self._metrics = metrics
        self._catalog = catalog
        self._config = config
        self._anomalies: set[tuple[str, str]] = set()
        self._rng = rng or random.Random()
        # Waits `delay` seconds unless `stop` is set first (True then); tests record the delays.
        self._pause = pause
        # Shared by the shards of one process: connection attempts per 5 minutes.
        self._budget = budget or AttemptBudget(config.connection_attempts_per_5min, 300.0)
        self.backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s, rng=self._rng)
        self.current: Connection | None = None
        self.log = log.bind(connection=spec.name, replica=replica)

    @property
    def is_up(self) -> bool:
        """Whether this replica holds an open connection."""
        return self.current is not None and not self.current.closed.is_set()

    def share_with(self, twins: list[Shard]) -> None:
        """Make `twins` (every replica of this shard) this one's twins, sharing one anomaly
        set so that each anomaly is dead-lettered once per shard, not once per replica."""
        self.twins = twins
        self._anomalies = twins[0]._anomalies

    def _first_rotation_s(self) -> float:
        """When a fresh connection first rotates: replica i of r after
        `rotate_after_s * (1 - i / (2r))`, so the replicas of a shard rotate (and would be cut)
        at different times, `rotate_after_s / (2r)` apart (5 h 45 min at 23 h and r = 2)."""
        redundancy = max(self._config.redundancy, len(self.twins), 1)
        return self._config.rotate_after_s * (1 - self.replica / (2 * redundancy))

    def _is_stale(self, conn: Connection) -> bool:
        """Whether `conn`, waiting on its socket, received no data frame for `stall_after_s`
        while an open twin received an event in that time (silence on all is a quiet market)."""
        window = self._config.stall_after_s
        now = time.monotonic()
        if not conn.is_receiving or now - conn.last_data_monotonic < window:
            return False
        for twin in self.twins:
            other = twin.current
            if twin is self or other is None or other.closed.is_set():
                continue
            if (
                other.last_event_monotonic is not None
                and other.last_event_monotonic >= now - window
            ):
                return True
        return False

    def _new_connection(self) -> Connection:
        return Connection(
            self.spec,
            self._http,
            self._writer,
            self._metrics,
            self._catalog,
            self._config,
            self._anomalies,
            self.replica,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then close the live session and return.

        A confirmed connection (subscribed, or it delivered an event) that ends for any reason
        is replaced at once, after a jitter of at most `reconnect_jitter_s`: the server cutting
        a good session says nothing about the next attempt. Only consecutive failed attempts
        (connect, upgrade, subscribe, or a session that ended unconfirmed) back off; a
        confirmed connection resets the backoff. A session our own reader failed (a bug) backs
        off too, so a frame that kills every session cannot make us hammer the server.
        """
        try:
            while not stop.is_set():
                conn = self._new_connection()
                try:
                    await conn.open()
                except ConnectionClosed as exc:
                    self._metrics.ws_reconnects.labels(self.spec.host, exc.reason).inc()
                    delay = self.backoff.next_delay()
                    self.log.warning(
                        "ws.connect_failed",
                        reason=exc.reason,
                        error=str(exc.__cause__)[:300] if exc.__cause__ else None,
                        retry_in_s=round(delay, 3),
                    )
                    await self._pause(self._within_budget(delay), stop)
                    continue
                self.current = conn
                if conn.subscribed.is_set():
                    self.backoff.reset()
                ended = await self._hold(conn, stop)
                if ended is None:  # stopping
                    return
                self._metrics.ws_reconnects.labels(self.spec.host, ended.close_reason).inc()
                confirmed = ended.subscribed.is_set() or ended.delivered.is_set()
                if confirmed and ended.close_reason != "reader_failed":
                    self.backoff.reset()
                    delay = self._rng.random() * self._config.reconnect_jitter_s
                else:
                    delay = self.backoff.next_delay()
                delay = self._within_budget(delay)
                self.log.warning(
                    "ws.reconnect_scheduled", reason=ended.close_reason, delay_s=round(delay, 3)
                )
                await self._pause(delay, stop)
        finally:
            if self.current is not None:
                await self.current.close("shutdown")

    def _within_budget(self, delay: float) -> float:
        """`delay`, lengthened if the attempt after it would exceed the attempt budget."""
        now = time.monotonic()
        at = now + delay
        booked = self._budget.reserve(at)
        return delay if booked == at else booked - now

    async def _hold(self, conn: Connection, stop: asyncio.Event) -> Connection | None:
        """Keep `conn` (and its successors after rotation) until it closes or we stop.

        Returns the connection that closed, or None when `stop` was set.
        """
        rotate_at = conn.opened_monotonic + self._first_rotation_s()
        # With twins, look for staleness a few times per `stall_after_s`.
        check_s = self._config.stall_after_s / 4 if len(self.twins) > 1 else None
        while True:
            rotate_in = rotate_at - time.monotonic()
            timeout = max(rotate_in, 0) if check_s is None else max(min(rotate_in, check_s), 0)
            stopping: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
            closing: asyncio.Future[bool] = asyncio.ensure_future(conn.closed.wait())
            try:
                await asyncio.wait(
                    {stopping, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
                closing.cancel()
            if stop.is_set():
                return None
            if conn.closed.is_set():
                return conn
            if self._is_stale(conn):
                self.log.warning(
                    "ws.stale",
                    silent_s=round(time.monotonic() - conn.last_data_monotonic, 3),
                    stall_after_s=self._config.stall_after_s,
                )
                # Make before break, as rotation does; the replacement keeps the schedule.
                replacement = await self._rotate(conn, reason="stale")
                if replacement is None:
                    await conn.close("stale")
                    return conn  # `run` counts it and reconnects
                self._metrics.ws_reconnects.labels(self.spec.host, "stale").inc()
                conn = replacement
                continue
            if time.monotonic() < rotate_at:
                continue
            successor = await self._rotate(conn)
            if successor is None:  # the old connection keeps the stream covered; retry soon
                rotate_at = time.monotonic() + _ROTATION_RETRY_S
            else:
                conn = successor
                rotate_at = conn.opened_monotonic + self._config.rotate_after_s

    async def _rotate(self, old: Connection, *, reason: str = "rotated") -> Connection | None:
        """Make before break: open a new session, wait until it delivers or is subscribed,
        then close the old one (with `reason`). On failure keep the old one (the caller
        decides what then)."""
        new = self._new_connection()
        try:
            await new.open(require_confirmation=True)
        except ConnectionClosed as exc:
            self.log.warning("ws.replacement_failed", reason=exc.reason, replacing=reason)
            return None
        self.current = new
        await old.close(reason)
        if reason == "rotated":
            self._metrics.ws_rotations.labels(self.spec.host).inc()
        self.log.info("ws.replaced", reason=reason)
        return new


def _connections_up(twins: list[Shard]) -> int:
    return sum(twin.is_up for twin in twins)


async def run_ws_sources(
    config: BinanceConfig,
    writer: Writer,
    metrics: Metrics,
    catalog: SymbolCatalog,
    stop: asyncio.Event,
    shards_out: list[Shard] | None = None,
) -> None:
    """Run every shard, each held by `config.redundancy` replicas, until `stop`; each closes
    its session in the ledger on the way out.

    `shards_out` (readiness reads it) is set to this run's replicas, replacing a failed run's.
    """
    async with aiohttp.ClientSession() as http:
        budget = AttemptBudget(config.connection_attempts_per_5min, 300.0)
        shards: list[Shard] = []
        for spec in plan_shards(config):
            twins = [
                Shard(spec, http, writer, metrics, catalog, config, budget=budget, replica=i)
                for i in range(config.redundancy)
            ]
            for shard in twins:
                shard.share_with(twins)
            metrics.watch_shard(spec.name, functools.partial(_connections_up, twins), len(twins))
            shards += twins
        if shards_out is not None:
            shards_out[:] = shards
        async with asyncio.TaskGroup() as group:
            for shard in shards:
                group.create_task(shard.run(stop), name=f"shard {shard.spec.name}")
