"""Which Binance forceOrder streams go on which websocket connection: pure planning, no I/O.

`plan_shards` spreads the configured streams over connections within Binance's per-connection
limits; each `ShardSpec` is one logical connection (held by `redundancy` replicas elsewhere).
URLs and stream names: docs/binance.md §1.1, §1.2.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.config import BinanceConfig

ALL_MARKET = "!forceOrder@arr"
# Keep URLs short; further streams are added with paced SUBSCRIBE messages.
MAX_URL_STREAMS = 50


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
        return f"{prefix.rstrip('/')}/stream?streams={'/'.join(self.url_streams)}"

    @property
    def url_streams(self) -> tuple[str, ...]:
        """The streams named in the URL; the rest are SUBSCRIBEd once connected."""
        return self.streams[:MAX_URL_STREAMS]

    @property
    def subscribed_streams(self) -> tuple[str, ...]:
        """The streams that did not fit in the URL, SUBSCRIBEd once connected (§1.5)."""
        return self.streams[MAX_URL_STREAMS:]

    @property
    def where(self) -> str:
        """`host/route` (or the host alone): the `source` of this connection's dead letters."""
        return f"{self.host}/{self.route}" if self.route else self.host


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
