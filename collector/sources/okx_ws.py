"""OKX `liquidation-orders` into the sink, with contract terms refreshed and gaps repaired.

One connection to `/ws/v5/public` subscribes the channel once per configured instType (SWAP,
FUTURES, MARGIN; docs/okx.md section 1.2), each ack or `error` event checked. A text `ping`
goes out after `heartbeat_s` without a message, before OKX's 30 s no-data cut; no `pong` within
`pong_timeout_s` closes the session (section 1.4). `GET /api/v5/public/instruments` gives the
contract terms (ctVal, ctMult, ctValCcy) that turn SWAP/FUTURES contracts into USD notional,
refreshed every `instruments_refresh_s`. Each session is a ledger row with venue "okx"; each
gap between sessions (and, at start-up, the time since the ledger's last OKX session, bounded by
the look-back) goes to the REST repair (`repair.GapRepairer` over `okx_repair.OkxHistory`) unless
`[okx] repair` is off. A service-upgrade notice (64008) hands over to a new connection before the
old one is closed (`venue_link.Link`).
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import structlog

from collector.config import OkxConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.model import Sink
from collector.retry import AttemptBudget, exchange_info_retry, sleep_or_stop, ws_reconnect
from collector.sources.okx_parse import (
    CHANNEL,
    OkxEvent,
    OkxInstrument,
    OkxPong,
    parse_frame,
    parse_instruments,
)
from collector.sources.okx_repair import OkxHistory, stream_name
from collector.sources.repair import Gap, GapRepairer
from collector.sources.venue_ledger import LinkSpec, last_session_end
from collector.sources.venue_link import Link
from collector.sources.venue_session import SessionClosed, VenueSession
from collector.venues import Venue, VenueApiError

log = structlog.get_logger(__name__)

VENUE = Venue.OKX
PATH = "/ws/v5/public"
# "Connection limit: 3 requests per second (based on IP)" (docs/okx.md section 1.4).
CONNECTS_PER_S = 3
# The `notice` event's code for "The connection will soon be closed for a service upgrade"
# (docs/okx.md section 1.3).
SERVICE_UPGRADE = "64008"
_LOGGED_ERROR_CHARS = 300


async def fetch_instruments(
    http: aiohttp.ClientSession, config: OkxConfig, inst_type: str
) -> list[OkxInstrument]:
    """`GET /api/v5/public/instruments?instType=…` (section 2.1). Raises `MalformedPayload` (HTTP
    error, bad body), `VenueApiError` (a `code`), or aiohttp/OS errors."""
    url = f"{config.rest_url.rstrip('/')}/api/v5/public/instruments"
    timeout = aiohttp.ClientTimeout(total=config.open_timeout_s * 3)
    async with http.get(url, params={"instType": inst_type}, timeout=timeout) as response:
        body = await response.read()
        if response.status != 200:
            raise MalformedPayload(f"HTTP {response.status} from {url}: {body[:200]!r}")
    return parse_instruments(body)


class OkxSession(VenueSession):
    """One connection to `/ws/v5/public`; see the module docstring."""

    idle_ping = True  # "after N < 30 s without a message, send the text ping" (section 1.4)

    def __init__(
        self,
        spec: LinkSpec,
        http: aiohttp.ClientSession,
        sink: Sink,
        metrics: Metrics,
        config: OkxConfig,
        instruments: dict[str, OkxInstrument],
    ) -> None:
        super().__init__(
            spec,
            http,
            sink,
            metrics,
            open_timeout_s=config.open_timeout_s,
            heartbeat_s=config.heartbeat_s,
            pong_timeout_s=config.pong_timeout_s,
        )
        self._inst_types = config.inst_types
        self._instruments = instruments

    def _ping_text(self) -> str:
        return "ping"

    async def _subscribe(self) -> tuple[str, ...]:
        """One request per instType, so an `error` event (which names no arg) names its type."""
        confirmed: list[str] = []
        for inst_type in self._inst_types:
            ident = self.next_request_id()
            arg = {"channel": CHANNEL, "instType": inst_type}
            reply = await self.request({"id": ident, "op": "subscribe", "args": [arg]}, ident)
            assert isinstance(reply, OkxEvent)
            if reply.event == "subscribe":
                self._metrics.venue_subscribe_replies.labels(VENUE.value, "ok").inc()
                confirmed.append(stream_name(inst_type))
                continue
            self._metrics.venue_subscribe_replies.labels(VENUE.value, "error").inc()
            self.log.error(
                "okx.subscribe_refused", inst_type=inst_type, code=reply.code, msg=reply.msg
            )
        if not confirmed:
            raise SessionClosed("subscribe_rejected")
        self._metrics.venue_subscribed_topics.labels(VENUE.value, self.spec.host).set(
            len(confirmed)
        )
        return tuple(confirmed)

    async def _on_text(self, text: str, received_at: datetime) -> None:
        try:
            frame = parse_frame(text, received_at=received_at, instruments=self._instruments)
        except MalformedPayload as exc:
            await self.dead_letter("malformed_frame", str(exc), text.encode())
            return
        if isinstance(frame, OkxPong):
            self.pong_received()
        elif isinstance(frame, OkxEvent):
            self._on_event(frame, text)
        else:
            await self.deliver(frame)

    def _on_event(self, event: OkxEvent, text: str) -> None:
        if event.event in ("subscribe", "unsubscribe", "error") and self.resolve(event.id, event):
            return
        if event.event == "notice":
            # 64008: "The connection will soon be closed for a service upgrade. Please
            # reconnect.", pushed 30 s before the upgrade so that a new connection avoids the
            # cut (docs/okx.md section 1.3): the link opens the next session, then closes this.
            handover = event.code == SERVICE_UPGRADE
            self.log.warning("okx.notice", code=event.code, msg=event.msg, handover=handover)
            if handover:
                self.handover.set()
        elif event.event.startswith("channel-conn-count"):
            self.log.debug("okx.conn_count", frame=text[:500])
        else:
            self._metrics.venue_subscribe_replies.labels(VENUE.value, "unexpected").inc()
            self.log.warning("okx.unexpected_event", frame=text[:500])


class OkxSource:
    """The connection, the instrument refresh and the gap repair; see the module docstring."""

    def __init__(
        self,
        config: OkxConfig,
        http: aiohttp.ClientSession,
        sink: Sink,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
        startup_gap_from: datetime | None = None,
    ) -> None:
        self._config = config
        self._http = http
        self._sink = sink
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._startup_gap_from = startup_gap_from
        self.instruments: dict[str, OkxInstrument] = {}
        self.spec = LinkSpec(VENUE, "okx/public#0", "public", config.ws_url.rstrip("/") + PATH)
        self.history = OkxHistory(http, config, self.instruments, metrics)
        self.repairer: GapRepairer | None = None
        if config.repair:
            self.repairer = GapRepairer(self.history, sink, metrics)
        else:
            metrics.set_repair_state(VENUE.value, "disabled")
        self.link = Link(
            self.spec.name,
            VENUE.value,
            lambda: OkxSession(self.spec, http, sink, metrics, config, self.instruments),
            metrics,
            backoff=ws_reconnect(config.reconnect_initial_s, config.reconnect_max_s).backoff(
                self._rng
            ),
            jitter_s=config.reconnect_jitter_s,
            budget=AttemptBudget(CONNECTS_PER_S, 1.0),
            rng=self._rng,
            on_subscribed=self._on_subscribed,
        )
        self.log = log.bind(venue=VENUE.value)

    def state(self) -> dict[str, Any]:
        """`/readyz`'s view: whether the connection is up, the terms known, the repair state."""
        repair = "disabled" if self.repairer is None else "on" if self.repairer.is_on else "off"
        return {"up": self.link.is_up, "instruments": len(self.instruments), "repair": repair}

    async def run(self, stop: asyncio.Event) -> None:
        """Load the contract terms (once; the refresh retries), then hold the connection,
        refresh and repair until `stop`."""
        await self.refresh()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.link.run(stop), name="okx link")
            group.create_task(self._refresh_loop(stop), name="okx instruments")
            if self.repairer is not None:
                group.create_task(self.repairer.run(stop), name="okx repair")

    async def refresh(self) -> bool:
        """Re-read every configured instType's instruments; False if one failed (logged,
        counted; the terms already known stay)."""
        ok = True
        for inst_type in self._config.inst_types:
            try:
                listed = await fetch_instruments(self._http, self._config, inst_type)
            except (MalformedPayload, VenueApiError, aiohttp.ClientError, OSError,
                    TimeoutError) as exc:  # fmt: skip
                ok = False
                refreshes = self._metrics.venue_instrument_refreshes
                refreshes.labels(VENUE.value, inst_type, "error").inc()
                self.log.warning(
                    "okx.instruments_failed", inst_type=inst_type,
                    error=str(exc)[:_LOGGED_ERROR_CHARS],
                )  # fmt: skip
                continue
            self._metrics.venue_instrument_refreshes.labels(VENUE.value, inst_type, "ok").inc()
            for gone in [k for k, v in self.instruments.items() if v.inst_type == inst_type]:
                if gone not in {i.inst_id for i in listed}:
                    del self.instruments[gone]
            self.instruments.update((i.inst_id, i) for i in listed)
        return ok

    async def _refresh_loop(self, stop: asyncio.Event) -> None:
        config = self._config
        retry = exchange_info_retry(config.reconnect_initial_s, config.instruments_refresh_s)
        backoff = retry.backoff(self._rng)
        delay = config.instruments_refresh_s if self.instruments else backoff.next_delay()
        while not await sleep_or_stop(delay, stop):
            if await self.refresh():
                backoff.reset()
                delay = config.instruments_refresh_s
            else:
                delay = backoff.next_delay()

    async def _on_subscribed(self, session: VenueSession, previous: VenueSession | None) -> None:
        """Hand the gap before `session` to the repair: since the previous session's last
        read, or (the first session) the look-back before it."""
        if self.repairer is None:
            return
        if previous is not None and not previous.closed.is_set():
            return  # a handover: the previous session is still reading, so there is no gap
        record = session.ledger.record
        assert record is not None
        end = record.subscribed_at or datetime.now(UTC)
        if previous is not None and previous.ledger.record is not None:
            start, why = previous.ledger.record.last_alive_at, "reconnect"
        else:
            # The gap since the last session the ledger knows (the collector's downtime), or
            # the look-back when it knows none; never further back than REST reaches.
            earliest = end - timedelta(seconds=self._config.repair_lookback_s)
            known = self._startup_gap_from
            start = earliest if known is None else max(known, earliest)
            why = "startup" if known is None else "restart"
        self.repairer.submit(Gap(start, end, why))


async def run_okx(
    config: OkxConfig,
    sink: Sink,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    sources_out: list[OkxSource] | None = None,
    startup_gap_from: datetime | None = None,
    ledger: asyncpg.Pool | None = None,
) -> None:
    """Follow OKX's liquidations until `stop`; the session closes in the ledger on the way out.

    `startup_gap_from`: when coverage last ended before this start, if known; else, with a
    `ledger` pool, the end of the latest OKX session recorded there (`last_session_end`); else
    the repair reads back `repair_lookback_s`. `sources_out` (tests, readiness) receives the
    source.
    """
    if startup_gap_from is None and ledger is not None and config.repair:
        startup_gap_from = await last_session_end(ledger, VENUE)
    async with aiohttp.ClientSession() as http:
        source = OkxSource(config, http, sink, metrics, startup_gap_from=startup_gap_from)
        if sources_out is not None:
            sources_out[:] = [source]
        await source.run(stop)
