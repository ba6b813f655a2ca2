"""An OKX-speaking server on loopback: `/ws/v5/public` and the public REST calls the collector uses.

Reproduces docs/okx.md: the `liquidation-orders` channel per instType (section 1.2), subscribe /
unsubscribe / error events (section 1.3), text `ping`/`pong` and the 30 s no-data cut (close 4004),
3 connection requests per second per IP, 480 subscribe requests per hour per connection, the
64 KB request limit (close 1009) (section 1.4); `GET /api/v5/public/instruments` (section 2.1)
and the best-effort `GET /api/v5/public/liquidation-orders` (section 2.2: per instFamily/uly,
`state=filled`, a one-day look-back, 40 requests / 2 s, 429 with code 50011), whose
`liquidation_orders_mode` can make it answer 404 or an error, as it is missing from the current
docs. Every published liquidation is kept for the REST look-back. What OKX does not document
is the emulator's choice. Instruments and wire shapes are `okx_data`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from aiohttp import web

from collector.emulator.market_rest import json_response, server_time_ms
from collector.emulator.okx_data import (
    DEFAULT_INSTRUMENTS,
    OkxInstrumentSpec,
    generated_detail,
    instrument_row,
    make_okx_detail,
)
from collector.emulator.venue_emulator import VenueEmulator
from collector.emulator.venue_ws import (
    RateWindow,
    VenueConnection,
    VenueWsHost,
)

CHANNEL: Final = "liquidation-orders"
INST_TYPES: Final = ("SWAP", "FUTURES", "MARGIN", "OPTION")
"""The instTypes the channel documents (section 1.2)."""
__all__ = [
    "DEFAULT_INSTRUMENTS",
    "OkxEmulator",
    "OkxInstrumentSpec",
    "OkxOptions",
    "generated_detail",
    "instrument_row",
    "make_okx_detail",
]
LOOK_BACK_MS: Final = 86_400_000
"""The REST endpoint's look-back: "liquidation orders in the last day" (section 2.2)."""
NO_DATA_CLOSE: Final = 4004
"""Close code "No data received in 30s" (section 1.4)."""

LiquidationOrdersMode = Literal["serve", "not_found", "error"]


@dataclass(frozen=True, slots=True)
class OkxOptions:
    """How the OKX emulator behaves. Defaults are OKX's documented values (docs/okx.md)."""

    seed: int = 0
    rate_per_s: float = 0.0
    """Generated liquidations per second; 0 = none (publish by hand)."""
    instruments: tuple[OkxInstrumentSpec, ...] = DEFAULT_INSTRUMENTS
    no_data_timeout_s: float = 30.0
    """No subscription, or nothing pushed, for this long closes the connection with 4004."""
    connections_per_s: int = 3
    subscribe_requests_per_hour: int = 480
    max_request_bytes: int = 64 * 1024
    liquidation_orders_limit: int = 40
    liquidation_orders_window_s: float = 2.0
    instruments_limit: int = 20
    instruments_window_s: float = 2.0
    liquidation_orders_mode: LiquidationOrdersMode = "serve"

    def __post_init__(self) -> None:
        problems = []
        if self.rate_per_s < 0 or not math.isfinite(self.rate_per_s):
            problems.append("rate_per_s must be a finite number >= 0")
        for name in ("no_data_timeout_s", "liquidation_orders_window_s", "instruments_window_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        for name in (
            "connections_per_s",
            "subscribe_requests_per_hour",
            "max_request_bytes",
            "liquidation_orders_limit",
            "instruments_limit",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise ValueError("invalid OkxOptions: " + "; ".join(problems))


@dataclass(slots=True)
class _Stored:
    ts_ms: int
    spec: OkxInstrumentSpec
    detail: dict[str, str]


class OkxEmulator(VenueEmulator):
    """OKX's public WebSocket (`ws_url + "/ws/v5/public"`, in place of wss://ws.okx.com:8443)
    and REST (`rest_url`, in place of https://www.okx.com) on loopback. A `stall` pushes nothing
    (pongs and event replies go on), but published liquidations still reach the REST history,
    so a stall is a gap REST can repair."""

    NAME = "okx"

    def __init__(self, options: OkxOptions = OkxOptions()) -> None:  # frozen: a safe default
        super().__init__()
        self.options = options
        self.specs = {s.inst_id: s for s in options.instruments}
        self.clock = time.time
        """Unix time (s) of the REST look-back; tests pin it."""
        self.liquidation_orders_mode: LiquidationOrdersMode = options.liquidation_orders_mode
        self.liquidation_orders_requests = 0
        self.history: list[_Stored] = []
        self.ws = VenueWsHost(
            "okx-public",
            ["/ws/v5/public"],
            on_text=self._on_text,
            idle_deadline=self._idle_deadline,
            connect_limit=RateWindow(options.connections_per_s, 1.0),
            connect_limit_status=429,
        )
        self.liquidation_orders_limit = RateWindow(
            options.liquidation_orders_limit, options.liquidation_orders_window_s
        )
        self.instruments_limit = RateWindow(options.instruments_limit, options.instruments_window_s)
        self.rest_app = web.Application()
        self.rest_app.router.add_get("/api/v5/public/instruments", self._instruments)
        self.rest_app.router.add_get("/api/v5/public/liquidation-orders", self._liquidation_orders)
        self._subscribe_counts: dict[int, list[float]] = {}

    # -- scripting ------------------------------------------------------------------------------

    async def publish(
        self, inst_id: str, details: Iterable[Mapping[str, str]], *, stream: bool = True
    ) -> int:
        """Record `details` (see `make_okx_detail`) of one instrument for the REST look-back and,
        unless `stream` is False (a liquidation the stream missed), push them as one frame to
        the subscribers of its instType. Returns the frames delivered."""
        spec = self.specs[inst_id]
        batch = [dict(d) for d in details]
        for detail in batch:
            self.history.append(_Stored(int(detail["ts"]), spec, detail))
        if not stream:
            return 0
        frame = {
            "arg": {"channel": CHANNEL, "instType": spec.inst_type},
            "data": [
                {
                    "details": batch,
                    "instFamily": "" if spec.inst_type == "MARGIN" else spec.family,
                    "instId": spec.inst_id,
                    "instType": spec.inst_type,
                    "uly": spec.family,
                }
            ],
        }
        return await self.ws.deliver(f"{CHANNEL}:{spec.inst_type}", orjson.dumps(frame).decode())

    async def send_notice(self) -> int:
        """Send the service-upgrade `notice` event (section 1.3, code 64008) to every connection."""
        sent = 0
        for info in self.ws.connections:
            notice = {
                "event": "notice",
                "code": "64008",
                "msg": "The connection will soon be closed for a service upgrade. "
                "Please reconnect.",
                "connId": info.conn_id,
            }
            sent += await self.ws.send(info, orjson.dumps(notice).decode())
        return sent

    # -- the WebSocket protocol (section 1.3, section 1.4) -----------------------------------------

    def _idle_deadline(self, info: VenueConnection) -> tuple[float, int, str]:
        # "The connection will break automatically if the subscription is not established or
        # data has not been pushed for more than 30 seconds" (section 1.4): from the upgrade while
        # nothing is subscribed, else from the last frame sent (a pong counts).
        start = info.opened_at if not info.subscriptions else info.last_sent_at
        return start + self.options.no_data_timeout_s, NO_DATA_CLOSE, "no_data"

    async def _on_text(self, host: VenueWsHost, info: VenueConnection, text: str) -> None:
        if text == "ping":
            await host.send(info, "pong")
            return
        if len(text.encode()) > self.options.max_request_bytes:
            host.close(info, code=1009, reason="request_too_large")
            return
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            await self._error(info, None, "60012", f"Invalid request: {text[:200]}")
            return
        req_id = request.get("id")
        req_id = req_id if isinstance(req_id, str) else None
        op = request.get("op")
        if op not in ("subscribe", "unsubscribe"):
            await self._error(info, req_id, "60019", f"Invalid op: {op}")
            return
        if not self._admit_request(info):
            await self._error(info, req_id, "60014", "Requests too frequent")
            return
        args = request.get("args")
        if not isinstance(args, list) or not args:
            await self._error(info, req_id, "60013", "Invalid args")
            return
        for arg in args:
            await self._apply(info, req_id, op, arg)

    def _admit_request(self, info: VenueConnection) -> bool:
        """480 subscribe/unsubscribe requests per connection per hour (section 1.4)."""
        now = self.ws.now()
        times = self._subscribe_counts.setdefault(info.id, [])
        times[:] = [t for t in times if t > now - 3600.0]
        if len(times) >= self.options.subscribe_requests_per_hour:
            return False
        times.append(now)
        return True

    async def _apply(self, info: VenueConnection, req_id: str | None, op: str, arg: Any) -> None:
        if not isinstance(arg, dict) or "channel" not in arg:
            await self._error(info, req_id, "60013", "Invalid args")
            return
        channel, inst_type = arg.get("channel"), arg.get("instType")
        if channel != CHANNEL or inst_type not in INST_TYPES:
            shown = f"channel:{channel},instType:{inst_type}"
            await self._error(
                info,
                req_id,
                "60018",
                f"Wrong URL or {shown} doesn't exist. Please use the correct URL, channel and "
                "parameters referring to API document.",
            )
            return
        key = f"{CHANNEL}:{inst_type}"
        if op == "subscribe":
            info.subscriptions[key] = None
            if info.subscribed_at is None:
                info.subscribed_at = self.ws.now()
        else:
            info.subscriptions.pop(key, None)
        reply: dict[str, Any] = {}
        if req_id is not None:
            reply["id"] = req_id
        reply |= {"event": op, "arg": {"channel": CHANNEL, "instType": inst_type}}
        reply["connId"] = info.conn_id
        await self.ws.send(info, orjson.dumps(reply).decode())

    async def _error(self, info: VenueConnection, req_id: str | None, code: str, msg: str) -> None:
        reply: dict[str, Any] = {}
        if req_id is not None:
            reply["id"] = req_id
        reply |= {"event": "error", "code": code, "msg": msg, "connId": info.conn_id}
        await self.ws.send(info, orjson.dumps(reply).decode())

    # -- REST (section 2) --------------------------------------------------------------------------

    async def _instruments(self, request: web.Request) -> web.Response:
        if not self.instruments_limit.admit():
            return _rate_limited()
        query = request.query
        inst_type = query.get("instType")
        if not inst_type:
            return _error(400, "50014", "Parameter instType can not be empty.")
        family = query.get("instFamily")
        rows = [
            instrument_row(s)
            for s in self.specs.values()
            if s.inst_type == inst_type
            and (family is None or s.family == family)
            and query.get("instId", s.inst_id) == s.inst_id
        ]
        return json_response({"code": "0", "msg": "", "data": rows})

    async def _liquidation_orders(self, request: web.Request) -> web.Response:
        self.liquidation_orders_requests += 1
        if self.liquidation_orders_mode == "not_found":
            return web.Response(status=404, text="Not Found")
        if self.liquidation_orders_mode == "error":
            return _error(410, "50005", "API endpoint is inactive or unavailable.")
        if not self.liquidation_orders_limit.admit():
            return _rate_limited()
        query = request.query
        inst_type = query.get("instType")
        if not inst_type:
            return _error(400, "50014", "Parameter instType can not be empty.")
        family = query.get("instFamily") or query.get("uly")
        inst_id = query.get("instId")
        if inst_type in ("SWAP", "FUTURES") and not family:
            return _error(400, "50015", "Either parameter uly or instFamily is required")
        alias = query.get("alias")
        if inst_type == "FUTURES" and not alias:  # "required for FUTURES" (section 2.2)
            return _error(400, "50014", "Parameter alias can not be empty.")
        state = query.get("state", "unfilled")
        try:
            limit = min(100, int(query.get("limit", "100")))
            before = int(query["before"]) if "before" in query else None
            after = int(query["after"]) if "after" in query else None
        except ValueError:
            return _error(400, "51000", "Parameter limit error")
        if state != "filled":
            return json_response({"code": "0", "msg": "", "data": []})
        now_ms = int(self.clock() * 1000)
        rows = sorted(
            (
                s
                for s in self.history
                if s.spec.inst_type == inst_type
                and (family is None or s.spec.family == family)
                and (alias is None or s.spec.alias == alias)
                and (inst_id is None or s.spec.inst_id == inst_id)
                and s.ts_ms > now_ms - LOOK_BACK_MS
                and (before is None or s.ts_ms > before)
                and (after is None or s.ts_ms < after)
            ),
            key=lambda s: -s.ts_ms,
        )[:limit]
        groups: dict[str, list[_Stored]] = {}
        for stored in rows:
            groups.setdefault(stored.spec.inst_id, []).append(stored)
        data = []
        for group_id, stored_rows in groups.items():
            spec = self.specs[group_id]
            data.append(
                {
                    "details": [s.detail for s in stored_rows],
                    "instFamily": "" if spec.inst_type == "MARGIN" else spec.family,
                    "instId": spec.inst_id,
                    "instType": spec.inst_type,
                    "totalLoss": "0",
                    "uly": spec.family,
                }
            )
        return json_response({"code": "0", "msg": "", "data": data})

    # -- generation -----------------------------------------------------------------------------

    async def _generate(self) -> None:
        rng = random.Random(self.options.seed)
        specs = [s for s in self.specs.values() if s.inst_type != "OPTION"]
        tick_s = min(0.1, max(0.005, 1.0 / self.options.rate_per_s))
        loop = asyncio.get_running_loop()
        started, due_total = loop.time(), 0
        while True:
            await asyncio.sleep(tick_s)
            due = int((loop.time() - started) * self.options.rate_per_s) - due_total
            due_total += max(0, due)
            for _ in range(max(0, due)):
                spec = specs[int(rng.random() * len(specs))]
                await self.publish(spec.inst_id, [generated_detail(spec, rng, server_time_ms())])


def _error(status: int, code: str, msg: str) -> web.Response:
    return json_response({"code": code, "msg": msg, "data": []}, status=status)


def _rate_limited() -> web.Response:
    # section 2.2 / error codes: HTTP 429 with code 50011 "Too Many Requests".
    return _error(429, "50011", "Too Many Requests")
