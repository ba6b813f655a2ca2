"""The Binance emulator: fstream/dstream WebSocket hosts and fapi/dapi/papi/sapi REST hosts on
loopback, plus the scripting surface tests use (publish, drop, stall, failed upgrades; drop and
stall also per connection).

Delivery follows docs/binance.md §1: liquidation events reach fstream `/market` and
dstream subscribers of `!forceOrder@arr` or `<symbol>@forceOrder`; with `merged` (the
2026-06-30 UM/CM merge, §1.3) both hosts carry both universes. Connection handling lives in
`ws`, REST routes in `market_rest`, event shapes and generation in `events`, the options in
`emulator_options`, the `collector simulate` loop in `simulate`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

import orjson
import structlog
from aiohttp import web

from collector.emulator.emulator_options import EmulatorOptions
from collector.emulator.events import (
    CM,
    UM,
    EventGenerator,
)
from collector.emulator.market_rest import (
    UsedWeight,
    add_dapi_routes,
    add_fapi_routes,
    add_papi_routes,
    new_rest_app,
)
from collector.emulator.ws import FORCE_ORDER_ARR, StreamHost
from collector.emulator.ws_state import ConnectionInfo, EmulatorStats, Faults, WsSettings

log = structlog.get_logger(__name__)

WS_HOSTS: Final = ("fstream", "dstream")
REST_HOSTS: Final = ("fapi", "dapi", "papi", "sapi")


class Emulator:
    """A Binance-speaking server on loopback, for tests, benchmarks and the offline demo.

    Build it, optionally add REST routes (`rest_apps`, `extensions`), then `start()` (or use
    `async with`). Every host listens on its own port; the `*_url` properties are the base URLs a
    client configures in place of Binance's production ones.
    """

    def __init__(
        self,
        options: EmulatorOptions = EmulatorOptions(),  # noqa: B008 - frozen: one shared default is safe
        *,
        extensions: Sequence[Callable[[Emulator], None]] = (),
    ) -> None:
        self.options = options
        self.stats = EmulatorStats()
        self.faults = Faults()
        self._change: asyncio.Event | None = None
        self._cm_symbols = frozenset(options.cm_symbols)

        def settings(max_streams: int) -> WsSettings:
            return WsSettings(
                max_streams=max_streams,
                ping_interval_s=options.ping_interval_s,
                pong_timeout_s=options.pong_timeout_s,
                max_lifetime_s=options.max_lifetime_s,
                max_incoming_per_s=options.max_incoming_per_s,
            )

        self.stream_hosts: dict[str, StreamHost] = {
            "fstream": StreamHost(
                "fstream",
                is_routed=True,
                settings=settings(options.max_streams_um),
                faults=self.faults,
                stats=self.stats,
                on_change=self._notify,
            ),
            "dstream": StreamHost(
                "dstream",
                is_routed=False,
                settings=settings(options.max_streams_cm),
                faults=self.faults,
                stats=self.stats,
                on_change=self._notify,
            ),
        }
        fstream, dstream = self.stream_hosts["fstream"], self.stream_hosts["dstream"]
        self._carriers: dict[int, tuple[StreamHost, ...]]
        if options.merged:  # §1.3: both hosts carry the merged UM + CM universe
            self._carriers = {UM: (fstream, dstream), CM: (fstream, dstream)}
        else:
            self._carriers = {UM: (fstream,), CM: (dstream,)}
        self.futures_weight = UsedWeight(options.weight_limit_1m)
        """fapi and dapi share one IP weight counter since the merge (§3.1)."""
        self.papi_weight = UsedWeight(6000)
        self.rest_apps: dict[str, web.Application] = {
            "fapi": new_rest_app(self.futures_weight),
            "dapi": new_rest_app(self.futures_weight),
            "papi": new_rest_app(self.papi_weight),
            "sapi": new_rest_app(None),
        }
        add_fapi_routes(self.rest_apps["fapi"], options.um_symbols, options.weight_limit_1m)
        add_dapi_routes(self.rest_apps["dapi"], options.cm_symbols, options.weight_limit_1m)
        add_papi_routes(self.rest_apps["papi"])
        self._send_lock = asyncio.Lock()
        self._runners: list[web.AppRunner] = []
        self._urls: dict[str, str] = {}
        self._generator_task: asyncio.Task[None] | None = None
        for extension in extensions:
            extension(self)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", *, ports: Mapping[str, int] | None = None
    ) -> None:
        """Listen on `host`, one port per emulated host (`ports[name]`, default 0 = any free)."""
        if self._runners:
            raise RuntimeError("emulator already started")
        ports = ports or {}
        apps = {name: h.app for name, h in self.stream_hosts.items()} | self.rest_apps
        try:
            for name, app in apps.items():
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, host, ports.get(name, 0))
                await site.start()
                port = runner.addresses[0][1]
                scheme = "ws" if name in WS_HOSTS else "http"
                shown = f"[{host}]" if ":" in host else host
                self._urls[name] = f"{scheme}://{shown}:{port}"
        except BaseException:
            await self.stop()
            raise
        if self.options.rate_per_s > 0:
            self._generator_task = asyncio.create_task(self._generate(), name="emulator.generate")

    async def stop(self) -> None:
        """Stop generating, close every connection (1001) and every listener. Idempotent."""
        task, self._generator_task = self._generator_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        for stream_host in self.stream_hosts.values():
            await stream_host.close_all()
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
        self._urls = {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        """Base URL per host name (fstream, dstream, fapi, dapi, papi, sapi) while running."""
        return dict(self._urls)

    def _url(self, name: str) -> str:
        try:
            return self._urls[name]
        except KeyError:
            raise RuntimeError("emulator not started") from None

    @property
    def fstream_url(self) -> str:
        """USD-M WebSocket base, in place of wss://fstream.binance.com."""
        return self._url("fstream")

    @property
    def dstream_url(self) -> str:
        """COIN-M WebSocket base, in place of wss://dstream.binance.com."""
        return self._url("dstream")

    @property
    def fapi_url(self) -> str:
        """In place of https://fapi.binance.com."""
        return self._url("fapi")

    @property
    def dapi_url(self) -> str:
        """In place of https://dapi.binance.com."""
        return self._url("dapi")

    @property
    def papi_url(self) -> str:
        """In place of https://papi.binance.com."""
        return self._url("papi")

    @property
    def sapi_url(self) -> str:
        """In place of https://api.binance.com (the `/sapi` family)."""
        return self._url("sapi")

    # -- scripting ------------------------------------------------------------------------------

    async def publish(self, event: Mapping[str, Any], *, symbol_type: int | None = None) -> int:
        """Deliver one raw `forceOrder` event (as given, serialised once) to every connection
        subscribed to `!forceOrder@arr` or `<symbol>@forceOrder` on each host that carries it.

        The event is COIN-M if `symbol_type` is 2, else if its `st` is 2, else if `o.ps` is set or
        the symbol is one of `cm_symbols`. Returns the number of sockets it reached (0 while
        stalled). Frames reach each socket in `publish` order.
        """
        order = event["o"]
        symbol: str = order["s"]
        kind = symbol_type or event.get("st")
        if kind is None:
            kind = CM if "ps" in order or symbol in self._cm_symbols else UM
        payload = orjson.dumps(event)
        async with self._send_lock:
            return await self._route(symbol, kind, payload)

    async def _route(self, symbol: str, kind: int, payload: bytes) -> int:
        self.stats.events_published += 1
        if self.faults.is_stalled():
            self.stats.events_stalled += 1
            return 0
        streams = (FORCE_ORDER_ARR, symbol.lower() + "@forceOrder")
        reached = 0
        for stream_host in self._carriers.get(kind, ()):
            reached += await stream_host.deliver(streams, payload)
        return reached

    async def send_raw(self, text: str, *, host: str = "fstream") -> int:
        """Send `text` as one text frame to every open connection on `host`; return the count."""
        async with self._send_lock:
            return await self.stream_hosts[host].send_text(text.encode())

    async def drop_connections(self, host: str | None = None) -> int:
        """Abort the TCP connection of every (or `host`'s) WebSocket without a close frame."""
        return sum(h.drop() for name, h in self.stream_hosts.items() if host in (None, name))

    async def drop_connection(self, info: ConnectionInfo) -> bool:
        """Abort one connection's TCP transport (no close frame); False if it is not open."""
        return self.stream_hosts[info.host].drop({info.id}) == 1

    def stall_connection(self, info: ConnectionInfo, seconds: float) -> bool:
        """Deliver no data to one connection for `seconds` (its socket stays open, pings and
        control replies go on; the other connections get everything; 0 ends it); False if
        it is not open."""
        return self.stream_hosts[info.host].stall_connection(info.id, seconds)

    def close_connections(self, host: str | None = None) -> int:
        """Close every (or `host`'s) open WebSocket with a 1001 close frame; return the count."""
        return sum(
            h.close_connections() for name, h in self.stream_hosts.items() if host in (None, name)
        )

    def stall(self, seconds: float) -> None:
        """Deliver no data for `seconds` (events are dropped, sockets stay open, pings and
        control replies go on); `stall(0)` ends a stall."""
        self.faults.stalled_until = time.monotonic() + seconds if seconds > 0 else 0.0

    def fail_upgrades(self, count: int, status: int = 503) -> None:
        """Refuse the next `count` WebSocket upgrades (either host) with HTTP `status`."""
        self.faults.failing_upgrades = count
        self.faults.failure_status = status

    def hold_control_replies(self) -> None:
        """Hold every control reply (either host) until `release_control_replies`; data, pings
        and the requests themselves (`messages_received`) go on."""
        if self.faults.replies_released is None:
            self.faults.replies_released = asyncio.Event()

    def release_control_replies(self) -> None:
        """Send the held control replies, in order, and answer new requests at once again."""
        released, self.faults.replies_released = self.faults.replies_released, None
        if released is not None:
            released.set()

    @property
    def connections(self) -> list[ConnectionInfo]:
        """Open WebSocket connections (live objects), fstream first, oldest first."""
        return [info for h in self.stream_hosts.values() for info in h.connections]

    def _connections_on(self, host: str | None) -> list[ConnectionInfo]:
        return [c for c in self.connections if host is None or c.host == host]

    async def wait_for_connections(
        self,
        n: int,
        *,
        host: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - tests read better with the deadline inline
    ) -> list[ConnectionInfo]:
        """Wait until at least `n` connections are open (on `host`); return them.

        Raises TimeoutError after `timeout` seconds.
        """
        await self.wait_until(lambda: len(self._connections_on(host)) >= n, timeout=timeout)
        return self._connections_on(host)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - tests read better with the deadline inline
    ) -> None:
        """Wait until `predicate()` holds, re-checking whenever a connection opens, closes or
        receives a message. Raises TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._change is None:
                    self._change = asyncio.Event()
                await self._change.wait()

    def _notify(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    # -- generation -----------------------------------------------------------------------------

    async def _generate(self) -> None:
        """Emit `rate_per_s` events per second in small batches, one batch per timer tick."""
        options = self.options
        generator = EventGenerator(
            options.um_symbols,
            options.cm_symbols,
            seed=options.seed,
            cm_share=options.cm_share,
            merged=options.merged,
        )
        rate = options.rate_per_s
        tick_s = min(0.05, max(0.005, 1.0 / rate))
        loop = asyncio.get_running_loop()
        started = loop.time()
        due_total = 0
        is_capped = False
        while True:
            await asyncio.sleep(tick_s)
            due = int((loop.time() - started) * rate) - due_total
            if due <= 0:
                continue
            due_total += due
            batch = generator.take(due, time.time_ns() // 1_000_000)
            self.stats.events_generated += len(batch)
            if len(batch) < due:
                self.stats.events_rate_capped += due - len(batch)
                if not is_capped:
                    is_capped = True
                    log.warning(
                        "emulator.rate_capped",
                        rate_per_s=rate,
                        symbols=len(options.um_symbols) + len(options.cm_symbols),
                        hint="too few symbols ready (EmulatorOptions.for_rate adds some), "
                        "or the emulator cannot keep up",
                    )
            if not batch:
                continue
            async with self._send_lock:
                hosts = list(self.stream_hosts.values())
                for host in hosts:
                    host.cork()
                try:
                    for generated in batch:
                        payload = orjson.dumps(generated.event)
                        await self._route(generated.symbol, generated.symbol_type, payload)
                finally:
                    for host in hosts:
                        await host.uncork()
