"""What a running daemon is made of (`Runtime`) and what it runs (`Component`s): shared by the
lifecycle (`collector.supervisor`), the components it builds (`collector.components`) and the
tests that add their own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from collector.config import Config
from collector.health import Health
from collector.metrics import Metrics
from collector.sink.writer import Writer
from collector.sources.catalog import SymbolCatalog

if TYPE_CHECKING:  # each is imported only where its feature is enabled (collector.components)
    from collector.out.alerts import Alerts
    from collector.out.broker import Publisher
    from collector.out.feed import Feed
    from collector.sources.binance_ws import Shard
    from collector.sources.bybit_ws import BybitCategory
    from collector.sources.okx_ws import OkxSource

Component = Callable[[asyncio.Event], Awaitable[None]]
"""A supervised task: runs until its stop event is set (`collector.supervisor.supervise`)."""


@dataclass(slots=True)
class Runtime:
    """What a running daemon exposes to its components, to tests and to components added
    later. The lists are filled by the sources as they start (readiness reads them)."""

    config: Config
    dsn: str = field(repr=False)
    pool: asyncpg.Pool
    metrics: Metrics
    health: Health
    writer: Writer
    catalog: SymbolCatalog
    http_port: int
    shards: list[Shard] = field(default_factory=list)
    bybit: list[BybitCategory] = field(default_factory=list)
    okx: list[OkxSource] = field(default_factory=list)
    feed: Feed | None = None
    alerts: Alerts | None = None
    nats: Publisher | None = None
