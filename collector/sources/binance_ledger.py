"""The coverage ledger of one Binance websocket session: when we were (and were not) listening.

`SessionLedger` is the shared `session_ledger.LedgerRow` for Binance: a row opens with its
shard's streams, and events are counted per (market, stream kind) for
`collector_events_received_total` and `collector_last_event_timestamp_seconds` by host.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from collector.metrics import Metrics
from collector.model import MarketLiquidation, SessionRecord, Sink
from collector.sources.binance_plan import ShardSpec, stream_kind
from collector.sources.session_ledger import LedgerRow


class SessionLedger(LedgerRow[MarketLiquidation, tuple[str, str]]):
    """One Binance session's ledger row and event counts (see `LedgerRow`)."""

    def __init__(
        self, spec: ShardSpec, sink: Sink, metrics: Metrics, release: asyncio.Event
    ) -> None:
        super().__init__(sink, metrics, release)
        self._spec = spec

    async def open(self) -> None:
        """Record the session as opened now (and alive until now)."""
        spec = self._spec
        now = datetime.now(UTC)
        await self._put_opened(
            SessionRecord(
                session_id=uuid.uuid4(),
                connection=spec.name,
                host=spec.host,
                route=spec.route,
                url=spec.url,
                streams=spec.streams,
                opened_at=now,
                last_alive_at=now,
            )
        )

    def _count_key(self, row: MarketLiquidation) -> tuple[str, str]:
        return row.market.value, stream_kind(row.source_stream)

    def _publish(self, counts: Mapping[tuple[str, str], int], last_event_at: datetime) -> None:
        host = self._spec.host
        for (market, kind), count in counts.items():
            self._metrics.events_received.labels(host, market, kind).inc(count)
        self._metrics.last_event_timestamp.labels(host).set(last_event_at.timestamp())
