"""The NATS JetStream publisher (`[nats]`, docs/nats.md): every committed row, in cursor order,
to `<subject_prefix>.<venue>.<symbol>`, driven by a durable cursor (`collector.out.cursor`).

A batch is published pipelined (one round trip for all of it), every JetStream ack is awaited,
and only then does the cursor move: a broker that is down, restarts, or loses an ack gets the
same rows again from the database, and JetStream's duplicate window drops the copies by their
`Nats-Msg-Id` (the row's key, the same on every replica). A second replica publishes the same
rows with the same ids, so the stream stores each row once.

The publisher is one supervised component among the others: the writer and the sources never
wait for it, and readiness does not depend on the broker. The connection is ours to manage
(nats-py's own reconnect is off): a failure closes it, and the cursor's backoff (`[nats]
retry_initial_s`..`retry_max_s`) paces the next connect and publish. Credentials are read from
their files at connect and are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from collector.config import NatsConfig
from collector.metrics import Metrics
from collector.out.cursor import ConsumerUnavailable, DurableCursor
from collector.out.events import FeedEvent
from collector.out.feed import Feed
from collector.retry import Policy

log = structlog.get_logger(__name__)

# What a subject token may not hold (NATS: tokens are separated by `.`, `*` and `>` are
# wildcards, whitespace ends a subject); each such character becomes `_`.
_NOT_IN_TOKEN = re.compile(r"[\s.*>\x00-\x1f\x7f]")
MSG_ID = "Nats-Msg-Id"
# The row's place in the database's committed order, for consumers that want to resume a read
# or compare with the feed's SSE `id:`.
CURSOR_HEADER = "Collector-Cursor"
# The errors that mean "the broker cannot take it now": network, timeouts, the client's own
# connection errors, and JetStream answering with an error (no stream yet, a server restarting).
_UNAVAILABLE = (OSError, TimeoutError, nats.errors.Error)


def token(text: str) -> str:
    """`text` as one subject token: every whitespace, control, `.`, `*` and `>` character
    replaced by `_` (an empty text: `_`)."""
    return _NOT_IN_TOKEN.sub("_", text) or "_"


def subject(prefix: str, event: FeedEvent) -> str:
    """The subject of `event`: `<prefix>.<venue>.<symbol>`, venue and symbol as tokens."""
    return f"{prefix}.{token(event.venue)}.{token(event.symbol)}"


def body(event: FeedEvent) -> bytes:
    """The message body: the same JSON object as the SSE feed's `data:` (decimals as strings)."""
    return orjson.dumps(event.as_json())


class Publisher:
    """The `[nats]` publisher; `run` is its component, `cursor` its durable position."""

    def __init__(self, config: NatsConfig, feed: Feed, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.cursor = DurableCursor(
            config.cursor, feed, self.publish, metrics, batch_rows=config.batch_rows,
            policy=Policy(config.retry_initial_s, config.retry_max_s),
        )  # fmt: skip
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        stream = config.stream
        for result in ("stored", "duplicate"):
            metrics.nats_published.labels(stream, result)
        metrics.nats_connected.labels(stream).set(0)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish every committed row after the cursor until `stop`."""
        try:
            await self.cursor.run(stop)
        finally:
            await self._close()

    async def publish(self, batch: list[FeedEvent]) -> None:
        """Publish `batch` and wait for every ack; `ConsumerUnavailable` when the broker did
        not take all of it (the cursor then hands the same batch over again)."""
        config, stream = self.config, self.config.stream
        js = await self._jetstream()
        pending: list[asyncio.Future[PubAck]] = []
        try:
            async with asyncio.timeout(config.publish_timeout_s):
                for event in batch:
                    headers = {MSG_ID: event.key, CURSOR_HEADER: str(event.cursor)}
                    pending.append(await js.publish_async(
                        subject(config.subject_prefix, event), body(event),
                        wait_stall=config.publish_timeout_s, stream=stream, headers=headers,
                    ))  # fmt: skip
                acks = await asyncio.gather(*pending)
        except _UNAVAILABLE as exc:
            for future in pending:
                future.cancel()
            reason = _reason(exc)
            self.metrics.nats_publish_failures.labels(stream, reason).inc()
            await self._close()
            raise ConsumerUnavailable(f"NATS publish failed: {reason}") from None
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self.metrics.nats_published.labels(stream, "stored").inc(len(acks) - duplicates)
        if duplicates:
            self.metrics.nats_published.labels(stream, "duplicate").inc(duplicates)

    async def _jetstream(self) -> JetStreamContext:
        """The open connection's JetStream context, connecting (and checking the stream) first
        when there is none."""
        if self._nc is not None and self._js is not None and self._nc.is_connected:
            return self._js
        await self._close()
        config = self.config
        try:
            nc = await nats.connect(
                servers=list(config.servers), name="collector", allow_reconnect=False,
                connect_timeout=max(1, round(config.connect_timeout_s)),
                # nats-py tries each server at most twice here (0 would be forever); our backoff
                # paces the next connect.
                max_reconnect_attempts=1, reconnect_time_wait=0, error_cb=self._on_error,
                **self._auth(),
            )  # fmt: skip
        except _UNAVAILABLE as exc:
            self.metrics.nats_publish_failures.labels(config.stream, _reason(exc)).inc()
            raise ConsumerUnavailable(f"cannot connect to NATS: {_reason(exc)}") from None
        self._nc = nc
        self._js = nc.jetstream(timeout=config.publish_timeout_s)
        try:
            await self._ensure_stream(self._js)
        except ConsumerUnavailable:
            await self._close()
            raise
        except _UNAVAILABLE as exc:
            await self._close()
            raise ConsumerUnavailable(f"NATS stream check failed: {_reason(exc)}") from None
        self.metrics.nats_connected.labels(config.stream).set(1)
        log.info("nats.connected", stream=config.stream, subjects=f"{config.subject_prefix}.>")
        return self._js

    def _auth(self) -> dict[str, str]:
        config = self.config
        if config.credentials_file is not None:
            return {"user_credentials": config.credentials_file}
        if config.token_file is not None:
            return {"token": Path(config.token_file).read_text(encoding="utf-8").strip()}
        return {}

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream when it is absent (`create_stream`); check that an existing one
        captures our subjects (never change it: its retention is its owner's choice)."""
        config = self.config
        wanted = f"{config.subject_prefix}.>"
        try:
            info = await js.stream_info(config.stream)
        except nats.js.errors.NotFoundError:
            if not config.create_stream:
                raise ConsumerUnavailable(
                    f"stream {config.stream!r} does not exist ([nats] create_stream = false)"
                ) from None
            await js.add_stream(name=config.stream, subjects=[wanted],
                                duplicate_window=config.duplicate_window_s)  # fmt: skip
            log.info("nats.stream_created", stream=config.stream, subjects=wanted,
                     duplicate_window_s=config.duplicate_window_s)  # fmt: skip
            return
        subjects = info.config.subjects or []
        if wanted not in subjects and ">" not in subjects:
            raise ConsumerUnavailable(
                f"stream {config.stream!r} captures {subjects}, not {wanted!r}"
            )

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats.connection_error", error=_reason(exc))

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self.metrics.nats_connected.labels(self.config.stream).set(0)
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for a metric label and a log line: the error's type."""
    return type(exc).__name__
