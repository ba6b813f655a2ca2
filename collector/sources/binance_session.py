"""One Binance websocket session: connect, subscribe, read frames into the sink, close cleanly.

A `Connection` reads frames, answers each ping with a pong carrying its payload
(docs/binance.md §1.4) and hands control replies to its `ControlChannel` (§1.5). A data frame
runs one way: `binance_parse` decodes and judges it, the row goes to the sink (what does not
parse is dead-lettered), then `binance_parse.find_anomalies` checks the row against the symbol
catalog. On close it UNSUBSCRIBEs first, so no frame already sent to it is dropped. Its
`SessionLedger` records when it listened; reconnecting and rotating is the shard's job
(`binance_ws`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from datetime import UTC, datetime

import aiohttp
import structlog

from collector.config import BinanceConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.model import DeadLetter, Sink
from collector.sources import ws_common
from collector.sources.binance_control import ConnectionClosed, ControlChannel
from collector.sources.binance_ledger import SessionLedger
from collector.sources.binance_parse import (
    Anomaly,
    ControlReply,
    DataFrame,
    Source,
    decode_frame,
    find_anomalies,
    judge_event,
)
from collector.sources.binance_plan import ShardSpec
from collector.sources.catalog import SymbolCatalog
from collector.sources.twins import FrameTwins, Twin, twin_key

log = structlog.get_logger(__name__)

# Anomalies remembered per shard for first-example dead letters; beyond it they are only counted.
_MAX_ANOMALY_KEYS = 10_000
# How much of a dead letter's detail the warning quotes.
_LOGGED_DETAIL_CHARS = 300


class AnomalyExamples:
    """The anomalies already dead-lettered for one shard (its replicas share one), so each is
    dead-lettered once per shard, not once per replica or per event."""

    def __init__(self) -> None:
        self._seen: set[Anomaly] = set()

    def is_first(self, anomaly: Anomaly) -> bool:
        """True the first time `anomaly` is seen (and remembered; False once the set is full)."""
        if anomaly in self._seen or len(self._seen) >= _MAX_ANOMALY_KEYS:
            return False
        self._seen.add(anomaly)
        return True


class Connection:
    """One websocket session; see the module docstring."""

    _ids = itertools.count(1)

    def __init__(
        self,
        spec: ShardSpec,
        http: aiohttp.ClientSession,
        sink: Sink,
        metrics: Metrics,
        catalog: SymbolCatalog,
        config: BinanceConfig,
        anomalies: AnomalyExamples,
        replica: int = 0,
        twins: FrameTwins | None = None,
    ) -> None:
        self.spec = spec
        self._http = http
        self._sink = sink
        self._draining = asyncio.Event()
        self._metrics = metrics
        self._catalog = catalog
        self._config = config
        self._anomalies = anomalies
        # Shared by the shard's replicas: a frame already parsed on a twin is not parsed again.
        self._twins = twins
        self._twin_duplicates = metrics.duplicates.labels("memory")
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None  # `_run`: owns the reader and the heartbeat
        self.subscribed = asyncio.Event()  # LIST_SUBSCRIPTIONS answered, or an event arrived
        self.delivered = asyncio.Event()  # the first event arrived
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.opened_monotonic = 0.0
        self._source_by_stream: dict[str | None, Source] = {}
        self._last_frame_monotonic = time.monotonic()
        self._last_frame_at: datetime | None = None
        # Monotonic times of the last data frame (any text frame) and the last event: a
        # replica silent while its twin receives events is stale (`Shard._is_stale`).
        self.last_data_monotonic = self._last_frame_monotonic
        self.last_event_monotonic: float | None = None
        self.log = log.bind(connection=spec.name, replica=replica, conn_id=next(self._ids))
        self._ledger = SessionLedger(spec, sink, metrics, self._draining)
        self._control = ControlChannel(
            spec,
            metrics,
            config.control_messages_per_s,
            self.closed,
            lambda: self.close_reason or "closed",
            self.log,
        )

    @property
    def events_received(self) -> int:
        """forceOrder events this session has parsed (dead-lettered frames are not counted)."""
        return self._ledger.events_received

    @property
    def is_receiving(self) -> bool:
        """Whether the reader waits on the socket (it is not held up by a full sink)."""
        return self._ledger.receiving

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
            # Pings are answered by `_read` with the same payload (§1.4), which also marks the
            # link alive for the idle watchdog; no own pings (they count toward 10 msg/s).
            self._ws = await ws_common.connect(
                self._http, self.spec.url, timeout_s=self._config.open_timeout_s, autoping=False
            )
        except ws_common.ConnectFailed as exc:
            raise ConnectionClosed(exc.reason) from exc.__cause__
        self.opened_monotonic = self.last_data_monotonic = time.monotonic()
        await self._ledger.open()
        self._metrics.ws_connects.labels(self.spec.host).inc()
        self._metrics.ws_connections.labels(self.spec.host).inc()
        self._task = asyncio.create_task(self._run(), name=f"ws-conn {self.spec.name}")
        self.log.info("ws.opened", url=self.spec.url, streams=len(self.spec.streams))
        try:
            async with asyncio.timeout(self._config.open_timeout_s):
                await self._control.subscribe(self._ws, self.spec.subscribed_streams)
            confirmed = await self._control.confirm(
                self._ws, self.delivered, self._config.open_timeout_s
            )
        except (TimeoutError, ConnectionClosed) as exc:
            reason = exc.reason if isinstance(exc, ConnectionClosed) else "subscribe_timeout"
            await self.close(reason)
            raise ConnectionClosed(reason) from exc
        if confirmed:
            self._metrics.ws_control_replies.labels(self.spec.host, "ok").inc()
            self.subscribed.set()
            await self._ledger.snapshot(subscribed_at=datetime.now(UTC))
        elif require_confirmation:
            await self.close("subscribe_timeout")
            raise ConnectionClosed("subscribe_timeout")
        else:
            self.log.warning("ws.subscription_unconfirmed", timeout_s=self._config.open_timeout_s)

    async def _request(self, method: str, params: list[str] | None) -> ControlReply:
        return await self._control.request(self._ws, method, params)

    async def close(self, reason: str) -> None:
        """Close the socket and finish the session's ledger row. Idempotent.

        A subscribed session first UNSUBSCRIBEs everything and waits for the reply: frames on
        one socket are ordered, so every event sent before it has been read and queued when the
        reply arrives. (aiohttp's close() would discard frames still in flight.)
        """
        if not self.close_reason:
            self.close_reason = reason
        # From here on what the reader reads goes behind the sink's queue if it is full: a
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
        await ws_common.let_finish(self._task, self._config.open_timeout_s)
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
        await self._finish(closed_at=self._last_frame_at or self._ledger.read_through_at)

    async def _finish(self, closed_at: datetime | None = None) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._control.fail_pending()
        if self._ledger.record is None:
            return
        self._metrics.ws_connections.labels(self.spec.host).dec()
        closed_at = closed_at or datetime.now(UTC)
        await self._ledger.snapshot(closed_at=closed_at, close_reason=self.close_reason)
        self.log.info(
            "ws.closed",
            reason=self.close_reason,
            events=self._ledger.events_received,
            lived_s=round(time.monotonic() - self.opened_monotonic, 3),
        )

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
            await self._ledger.snapshot()

    # -- reading -----------------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        reason = await ws_common.read_frames(
            ws, self._ledger, on_frame=self._stamp, on_text=self._on_text,
            on_binary=self._on_binary, answer_pings=True, log=self.log, event="ws.error",
        )  # fmt: skip
        if not self.close_reason:
            self.close_reason = reason
        with contextlib.suppress(Exception):
            await ws.close()

    def _stamp(self) -> datetime:
        """A frame arrived: the link is alive (idle watchdog); its receive time."""
        self._last_frame_monotonic = time.monotonic()
        self._last_frame_at = received_at = datetime.now(UTC)
        return received_at

    async def _on_binary(self, data: bytes) -> None:
        await self._dead_letter("unexpected_binary", "binary frame", data)

    async def _on_text(self, text: str, received_at: datetime) -> None:
        received_mono = self.last_data_monotonic = self._last_frame_monotonic
        twins, key = self._twins, ""
        if twins is not None:
            key = twin_key(text)
            if (twin := twins.take(key)) is not None:
                await self._on_twin(twin, text, received_at, received_mono)
                return
        try:
            frame = decode_frame(text)
        except MalformedPayload as exc:
            await self._dead_letter("malformed_json", str(exc), text.encode())
            return
        if isinstance(frame, ControlReply):
            self._control.on_reply(frame, text)
            return
        await self._on_data(frame, text, received_at, received_mono, key)

    def _source(self, stream: str | None) -> Source:
        source = self._source_by_stream.get(stream)
        if source is None:
            name = stream if stream is not None else self.spec.streams[0]
            source = Source(self.spec.host, self.spec.route, name)
            self._source_by_stream[stream] = source
        return source

    async def _on_data(
        self, frame: DataFrame, text: str, received_at: datetime, received_mono: float, key: str
    ) -> None:
        catalog = self._catalog
        verdict = judge_event(
            frame,
            source=self._source(frame.stream),
            received_at=received_at,
            raw=text,
            received_monotonic=received_mono,
            contract_sizes=catalog.contract_sizes,
        )
        row = verdict.row
        if row is None:
            await self._dead_letter(verdict.reason, verdict.detail, text.encode())
            return
        self.last_event_monotonic = received_mono
        if self._ledger.count(row):
            self.delivered.set()
        try:
            anomalies = find_anomalies(frame, row, is_known=catalog.is_known)
        except BaseException:
            # A check cannot cost a row: queue it, then let the failure (a bug) end the reader.
            await self._sink.put(row, release=self._draining)
            raise
        await self._sink.put(row, release=self._draining)
        # Remembered only once queued: a put that waits for queue space can be cancelled (the
        # session closed or replaced) and lose this copy, and the twin on the other connection
        # must then be parsed and queued, not matched and dropped. (A twin arriving during
        # that wait is parsed too; the writer's key window drops the copy it no longer needs.)
        if self._twins is not None:
            self._twins.remember(key, Twin(row, anomalies))
        for anomaly in anomalies:
            await self._anomaly(anomaly, text)

    async def _on_twin(
        self, twin: Twin, text: str, received_at: datetime, received_mono: float
    ) -> None:
        """A frame a twin connection already parsed: counted in this session's ledger (at
        its own receive time) and as a duplicate, its anomalies counted; not parsed again."""
        self.last_event_monotonic = received_mono
        if self._ledger.count(twin.row._replace(received_at=received_at)):
            self.delivered.set()
        self._twin_duplicates.inc()
        for anomaly in twin.anomalies:
            await self._anomaly(anomaly, text)

    async def _anomaly(self, anomaly: Anomaly, text: str) -> None:
        """Count a kept row's anomaly; dead-letter (kept=True) the first example of each."""
        self._metrics.payload_anomalies.labels(anomaly.kind).inc()
        if not self._anomalies.is_first(anomaly):
            return
        self.log.warning("ws.payload_anomaly", kind=anomaly.kind, what=anomaly.what)
        await self._sink.put(
            DeadLetter(
                datetime.now(UTC), self.spec.where, anomaly.kind, anomaly.what, text.encode(),
                kept=True,
            ),
            release=self._draining,
        )  # fmt: skip

    async def _dead_letter(self, reason: str, detail: str, raw: bytes) -> None:
        self._metrics.dead_letters.labels(reason).inc()
        self.log.warning("ws.dead_letter", reason=reason, detail=detail[:_LOGGED_DETAIL_CHARS])
        await self._sink.put(
            DeadLetter(datetime.now(UTC), self.spec.where, reason, detail, raw),
            release=self._draining,
        )
