"""One websocket session of a venue beside Binance (Bybit, OKX): connect, read, keep alive, close.

`VenueSession` owns the socket, the reader, the application-level heartbeat (a ping the venue
answers with a pong; none in time closes the session as `pong_timeout`), the ledger row
(`venue_ledger`) and request/reply matching by id. A venue's module subclasses it with what
its frames mean (`_on_text`), how it subscribes (`_subscribe`) and what its ping is. Holding a
session up (reconnects, backoff) is `venue_link`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog

from collector.metrics import Metrics
from collector.model import DeadLetter, Sink
from collector.sources import ws_common
from collector.sources.venue_ledger import LinkSpec, VenueLedger
from collector.venues import VenueLiquidation

log = structlog.get_logger(__name__)

# The ledger's liveness mark is refreshed this often (the ledger counts an open session live
# for 30 s after its mark; binance_session uses 5 s too).
LEDGER_MARK_S = 5.0
_LOGGED_DETAIL_CHARS = 300


class SessionClosed(Exception):
    """A session ended or could not open; `reason` is a bounded label for metrics and the
    ledger."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class VenueSession:
    """One websocket session; see the module docstring. Subclasses implement `_subscribe`,
    `_on_text` and `_ping_text`."""

    _ids = itertools.count(1)
    idle_ping = False
    """True: ping after `heartbeat_s` without any frame (OKX); False: every `heartbeat_s`
    (Bybit)."""

    def __init__(
        self,
        spec: LinkSpec,
        http: aiohttp.ClientSession,
        sink: Sink,
        metrics: Metrics,
        *,
        open_timeout_s: float,
        heartbeat_s: float,
        pong_timeout_s: float,
        mark_s: float = LEDGER_MARK_S,
    ) -> None:
        self.spec = spec
        self._http = http
        self._sink = sink
        self._metrics = metrics
        self._venue = spec.venue.value
        self.open_timeout_s = open_timeout_s
        self._heartbeat_s = heartbeat_s
        self._pong_timeout_s = pong_timeout_s
        self._mark_s = mark_s
        self._draining = asyncio.Event()
        self.ledger = VenueLedger(spec, sink, metrics, self._draining)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._request_ids = itertools.count(1)
        self._pong: asyncio.Future[None] | None = None
        self.subscribed = asyncio.Event()
        self.delivered = asyncio.Event()
        self.closed = asyncio.Event()
        self.handover = asyncio.Event()
        """Set when the venue announced this session's end (OKX's service-upgrade notice): the
        link opens the next session first, then closes this one (`venue_link`)."""
        self.close_reason = ""
        self.pongs = 0
        self._last_frame_monotonic = time.monotonic()
        self.log = log.bind(venue=self._venue, connection=spec.name, conn_id=next(self._ids))

    # -- for subclasses ----------------------------------------------------------------------

    async def _subscribe(self) -> tuple[str, ...]:
        """Subscribe what this session reads; return the streams confirmed. Raise
        `SessionClosed` when none could be."""
        raise NotImplementedError

    async def _on_text(self, text: str, received_at: datetime) -> None:
        """Handle one text frame."""
        raise NotImplementedError

    def _ping_text(self) -> str:
        """The heartbeat message."""
        raise NotImplementedError

    def next_request_id(self) -> str:
        """A fresh id for a request on this session."""
        return str(next(self._request_ids))

    async def request(self, message: dict[str, Any], request_id: str) -> Any:
        """Send `message` and return the reply `resolve(request_id, …)` hands over. Raises
        `SessionClosed` when the session closes first, TimeoutError after `open_timeout_s`."""
        if self._ws is None or self.closed.is_set():
            raise SessionClosed(self.close_reason or "closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            try:
                await self._ws.send_str(orjson.dumps(message).decode())
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise SessionClosed(self.close_reason or "error") from exc
            closing: asyncio.Future[Any] = asyncio.ensure_future(self.closed.wait())
            try:
                await asyncio.wait(
                    {future, closing},
                    timeout=self.open_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                closing.cancel()
            if future.done():
                return future.result()
            if self.closed.is_set():
                raise SessionClosed(self.close_reason or "closed")
            raise TimeoutError(f"no reply to request {request_id}")
        finally:
            self._pending.pop(request_id, None)

    def resolve(self, request_id: str | None, reply: Any) -> bool:
        """Hand `reply` to the request waiting for `request_id`; False when none waits."""
        future = self._pending.get(request_id) if request_id is not None else None
        if future is None or future.done():
            return False
        future.set_result(reply)
        return True

    def pong_received(self) -> None:
        """The venue answered the heartbeat."""
        self.pongs += 1
        if self._pong is not None and not self._pong.done():
            self._pong.set_result(None)

    async def deliver(self, rows: list[VenueLiquidation]) -> None:
        """Put parsed liquidations into the sink, counted in the ledger."""
        for row in rows:
            if self.ledger.count(row):
                self.delivered.set()
            await self._sink.put(row, release=self._draining)

    async def dead_letter(self, reason: str, detail: str, raw: bytes) -> None:
        """Keep an unusable frame for a person to look at; counted, never fatal."""
        self._metrics.dead_letters.labels(reason).inc()
        self.log.warning(
            "venue_ws.dead_letter", reason=reason, detail=detail[:_LOGGED_DETAIL_CHARS]
        )
        source = f"{self._venue}/{self.spec.host}"
        await self._sink.put(
            DeadLetter(datetime.now(UTC), source, reason, detail, raw), release=self._draining
        )

    async def snapshot_streams(self, streams: tuple[str, ...]) -> None:
        """Record that the session now reads `streams` (after a live subscribe/unsubscribe)."""
        await self.ledger.snapshot(streams=streams)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, record the session, start reading and beating, subscribe.

        Raises `SessionClosed` if the upgrade fails or nothing could be subscribed; the session
        is then closed in the ledger (if it got that far) and the caller backs off.
        """
        try:
            # Protocol-level pings, if a venue sends any, are answered by aiohttp; the venues
            # want application-level pings (`_beat`).
            self._ws = await ws_common.connect(
                self._http, self.spec.url, timeout_s=self.open_timeout_s, autoping=True
            )
        except ws_common.ConnectFailed as exc:
            raise SessionClosed(exc.reason) from exc.__cause__
        self._last_frame_monotonic = time.monotonic()
        await self.ledger.open(())
        self._metrics.venue_ws_sessions.labels(self._venue).inc()
        self._metrics.venue_ws_connections.labels(self._venue).inc()
        self._task = asyncio.create_task(self._run(), name=f"venue-ws {self.spec.name}")
        self.log.info("venue_ws.opened", url=self.spec.url)
        try:
            streams = await self._subscribe()
        except (TimeoutError, SessionClosed) as exc:
            reason = exc.reason if isinstance(exc, SessionClosed) else "subscribe_timeout"
            await self.close(reason)
            raise SessionClosed(reason) from exc
        self.subscribed.set()
        await self.ledger.snapshot(streams=streams, subscribed_at=datetime.now(UTC))

    async def close(self, reason: str) -> None:
        """Close the socket and finish the session's ledger row. Idempotent."""
        if not self.close_reason:
            self.close_reason = reason
        self._draining.set()
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
        await ws_common.let_finish(self._task, self.open_timeout_s)
        await self._finish()

    async def _run(self) -> None:
        """Read and beat under one owner; a bug in either ends the session (`reader_failed`)."""
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                beat = group.create_task(self._beat(), name=f"venue-beat {self.spec.name}")
                mark = group.create_task(self._mark(), name=f"venue-mark {self.spec.name}")
                reader = group.create_task(self._read(), name=f"venue-read {self.spec.name}")
                reader.add_done_callback(lambda _: (beat.cancel(), mark.cancel()))
        except* Exception as failures:
            failure = failures.exceptions[0]
        if failure is not None:
            self.close_reason = self.close_reason or "reader_failed"
            self.log.error("venue_ws.reader_failed", error=repr(failure), exc_info=failure)
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await self._ws.close()
        await self._finish()

    async def _finish(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._draining.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SessionClosed(self.close_reason or "closed"))
        if self.ledger.record is None:
            return
        self._metrics.venue_ws_connections.labels(self._venue).dec()
        await self.ledger.snapshot(closed_at=datetime.now(UTC), close_reason=self.close_reason)
        self.log.info(
            "venue_ws.closed", reason=self.close_reason, events=self.ledger.events_received
        )
        await self._after_close()

    async def _after_close(self) -> None:
        """Called once the session's last ledger row is put (a venue hook; nothing by default)."""

    async def _beat(self) -> None:
        """Ping as the venue asks; close the session when a pong does not come in time."""
        last_ping = time.monotonic()
        loop = asyncio.get_running_loop()
        while True:
            since = self._last_frame_monotonic if self.idle_ping else last_ping
            wait_s = since + self._heartbeat_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            ws = self._ws
            assert ws is not None
            self._pong = loop.create_future()
            last_ping = time.monotonic()
            try:
                await ws.send_str(self._ping_text())
            except (aiohttp.ClientError, ConnectionError):
                return  # the socket is closing: the reader sees it and finishes the session
            try:
                async with asyncio.timeout(self._pong_timeout_s):
                    await self._pong
            except TimeoutError:
                self._metrics.venue_heartbeats.labels(self._venue, "timeout").inc()
                self.log.warning("venue_ws.pong_timeout", timeout_s=self._pong_timeout_s)
                self.close_reason = self.close_reason or "pong_timeout"
                await ws.close()  # the reader sees the close and finishes the session
                return
            self._metrics.venue_heartbeats.labels(self._venue, "pong").inc()

    async def _mark(self) -> None:
        """Refresh the ledger's liveness mark."""
        while True:
            await asyncio.sleep(self._mark_s)
            await self.ledger.snapshot()

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        reason = await ws_common.read_frames(
            ws, self.ledger, on_frame=self._stamp, on_text=self._on_text,
            on_binary=self._on_binary, answer_pings=False, log=self.log, event="venue_ws.error",
        )  # fmt: skip
        if not self.close_reason:
            self.close_reason = reason
        with contextlib.suppress(Exception):
            await ws.close()

    def _stamp(self) -> datetime:
        """A frame arrived: everything up to it has been read, so the gap repair starts from
        here; its receive time."""
        self._last_frame_monotonic = time.monotonic()
        self.ledger.read_through_at = received_at = datetime.now(UTC)
        return received_at

    async def _on_binary(self, data: bytes) -> None:
        await self.dead_letter("unexpected_binary", "binary frame", data)
