"""A Bybit-speaking server on loopback: the v5 public linear/inverse streams and instruments-info.

Reproduces docs/bybit.md: `/v5/public/linear` and `/v5/public/inverse` with the
`allLiquidation.{symbol}` topic (section 1.2), op `subscribe`/`unsubscribe`/`ping` and their replies
(section 1.3), the 21,000-character args limit, the connection-rate limit and the idle cut
(section 1.4); `GET /v5/market/instruments-info`, paged with a cursor, under the 600 requests /
5 s IP limit (section 2). Pushes batch a symbol's liquidations into one frame, as Bybit does
every 500 ms. Wordings Bybit does not document (error `ret_msg`s, close codes, the refusal
status) are the emulator's.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from collector.emulator.events import UM, fixed_point, market_spec
from collector.emulator.market_rest import json_response, server_time_ms
from collector.emulator.venue_emulator import VenueEmulator
from collector.emulator.venue_ws import (
    RateWindow,
    VenueConnection,
    VenueWsHost,
)

CATEGORIES: Final = ("linear", "inverse")
TOPIC_PREFIX: Final = "allLiquidation."
DEFAULT_LINEAR: Final = (
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "DOGEUSDT",
    "1000PEPEUSDT",
    "BTCPERP",
    "ETHPERP",
)
DEFAULT_INVERSE: Final = ("BTCUSD", "ETHUSD", "XRPUSD")
IDLE_CLOSE_CODE: Final = 1000
"""⚠ Bybit documents the idle cut (section 1.4) but not its close code."""


@dataclass(frozen=True, slots=True)
class BybitOptions:
    """How the Bybit emulator behaves. Defaults are Bybit's documented values (docs/bybit.md)."""

    seed: int = 0
    rate_per_s: float = 0.0
    """Generated liquidations per second across both categories; 0 = none (publish by hand)."""
    linear_symbols: tuple[str, ...] = DEFAULT_LINEAR
    inverse_symbols: tuple[str, ...] = DEFAULT_INVERSE
    push_interval_s: float = 0.5
    """Generated liquidations are pushed in batches this often (section 1.2: "Push frequency:
    500ms")."""
    max_args_chars: int = 21_000
    """Per public connection: the JSON text of all subscribed args (section 1.4)."""
    idle_timeout_s: float = 600.0
    """No ping-pong and no data for this long cuts the connection (section 1.4: 10 minutes)."""
    connections_per_window: int = 500
    connection_window_s: float = 300.0
    rest_limit: int = 600
    rest_window_s: float = 5.0

    def __post_init__(self) -> None:
        problems = []
        if self.rate_per_s < 0 or not math.isfinite(self.rate_per_s):
            problems.append("rate_per_s must be a finite number >= 0")
        for name in ("push_interval_s", "idle_timeout_s", "connection_window_s", "rest_window_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        for name in ("max_args_chars", "connections_per_window", "rest_limit"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if set(self.linear_symbols) & set(self.inverse_symbols):
            problems.append("a symbol cannot be both linear and inverse")
        if problems:
            raise ValueError("invalid BybitOptions: " + "; ".join(problems))


def make_bybit_liquidation(
    symbol: str, side: str, size: str, price: str, trade_time_ms: int
) -> dict[str, Any]:
    """One `allLiquidation` data item (section 1.2). `side` is the liquidated position's ("Buy" = a
    long was liquidated); `size` and `price` are sent exactly as given."""
    return {"T": trade_time_ms, "s": symbol, "S": side, "v": size, "p": price}


def push_frame(symbol: str, items: Sequence[Mapping[str, Any]], ts_ms: int) -> str:
    """The push of one batch of `symbol`'s liquidations (section 1.2 response example)."""
    return orjson.dumps(
        {"topic": TOPIC_PREFIX + symbol, "type": "snapshot", "ts": ts_ms, "data": list(items)}
    ).decode()


def instrument_row(category: str, symbol: str, status: str = "Trading") -> dict[str, Any]:
    """An instruments-info `list` row for `symbol` (section 2.1), with plausible filters."""
    if category == "inverse":
        base, quote, settle = symbol.removesuffix("USD"), "USD", symbol.removesuffix("USD")
        contract_type = "InversePerpetual"
    elif symbol.endswith("PERP"):
        base, quote, settle = symbol.removesuffix("PERP"), "USDC", "USDC"
        contract_type = "LinearPerpetual"
    else:
        base, quote = symbol.removesuffix("USDT"), "USDT"
        settle, contract_type = "USDT", "LinearPerpetual"
    spec = market_spec(symbol, UM)
    tick = format(spec.tick_size, "f")
    step = "1" if category == "inverse" else format(spec.step_size, "f")
    return {
        "symbol": symbol,
        "contractType": contract_type,
        "status": status,
        "baseCoin": base,
        "quoteCoin": quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(max(0, -spec.tick_size.as_tuple().exponent)),  # type: ignore[operator]
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": tick, "maxPrice": "1999999.80", "tickSize": tick},
        "lotSizeFilter": {
            "maxOrderQty": "1000000",
            "minOrderQty": step,
            "qtyStep": step,
            "postOnlyMaxOrderQty": "1000000",
            "maxMktOrderQty": "100000",
            "minNotionalValue": "5",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": settle,
        "copyTrading": "both",
        "upperFundingRate": "0.00375",
        "lowerFundingRate": "-0.00375",
        "isPreListing": False,
        "preListingInfo": None,
        "symbolType": "",
    }


class BybitGenerator:
    """Seeded liquidations: `take(count, now_ms)` returns (category, item) pairs; for a seed,
    the same calls give the same items. Linear sizes sit on the symbol's step, inverse sizes are
    whole USD."""

    def __init__(self, symbols: Mapping[str, Sequence[str]], *, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._markets = [(c, s) for c in CATEGORIES for s in symbols.get(c, ())]
        self._mid = {s: market_spec(s, UM).base_price for _, s in self._markets}

    def take(self, count: int, now_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """`count` liquidations stamped a little before `now_ms`."""
        if not self._markets:
            return []
        rng = self._rng
        out = []
        for _ in range(count):
            category, symbol = self._markets[int(rng.random() * len(self._markets))]
            spec = market_spec(symbol, UM)
            decimals = max(0, -int(spec.tick_size.as_tuple().exponent))
            mid = self._mid[symbol] * (0.997 + 0.006 * rng.random())
            self._mid[symbol] = mid
            price = fixed_point(max(1, round(mid * 10**decimals)), decimals)
            notional = 20.0 * 10_000.0 ** rng.random()
            if category == "inverse":
                size = str(max(1, round(notional)))
            else:
                step = max(0, -int(spec.step_size.as_tuple().exponent))
                size = fixed_point(max(1, round(notional / mid * 10**step)), step)
            side = "Buy" if rng.random() < 0.55 else "Sell"
            item = make_bybit_liquidation(
                symbol, side, size, price, now_ms - int(400 * rng.random())
            )
            out.append((category, item))
        return out


class BybitEmulator(VenueEmulator):
    """Bybit's public linear/inverse WebSocket (`ws_url`) and REST (`rest_url`) on loopback.

    `ws_url + "/v5/public/linear"` stands in for wss://stream.bybit.com/v5/public/linear;
    `rest_url` for https://api.bybit.com. Use `async with` or `start()`/`stop()`.
    """

    NAME = "bybit"

    def __init__(self, options: BybitOptions = BybitOptions()) -> None:  # frozen: safe default
        super().__init__()
        self.options = options
        self.instruments: dict[str, dict[str, str]] = {
            "linear": dict.fromkeys(options.linear_symbols, "Trading"),
            "inverse": dict.fromkeys(options.inverse_symbols, "Trading"),
        }
        """category → symbol → status; `list_symbol`/`delist` change it."""
        self.ws = VenueWsHost(
            "bybit-stream",
            [f"/v5/public/{c}" for c in CATEGORIES],
            on_text=self._on_text,
            idle_deadline=self._idle_deadline,
            connect_limit=RateWindow(options.connections_per_window, options.connection_window_s),
            connect_limit_status=429,
        )
        self.rest_limit = RateWindow(options.rest_limit, options.rest_window_s)
        self.rest_requests = 0
        self.rest_app = web.Application(middlewares=[self._limit])
        self.rest_app.router.add_get("/v5/market/instruments-info", self._instruments_info)

    # -- scripting ------------------------------------------------------------------------------

    async def publish(self, category: str, items: Iterable[Mapping[str, Any]]) -> int:
        """Push `items` (see `make_bybit_liquidation`) on `category`'s host: one frame per symbol,
        in first-seen order, to every subscriber of its topic. Returns the frames delivered."""
        by_symbol: dict[str, list[Mapping[str, Any]]] = {}
        for item in items:
            by_symbol.setdefault(str(item["s"]), []).append(item)
        now_ms = server_time_ms()
        reached = 0
        for symbol, batch in by_symbol.items():
            key = f"{category}:{TOPIC_PREFIX}{symbol}"
            reached += await self.ws.deliver(key, push_frame(symbol, batch, now_ms))
        return reached

    def list_symbol(self, category: str, symbol: str, status: str = "Trading") -> None:
        """Add (or re-status) an instrument, as a new listing does."""
        self.instruments[category][symbol] = status

    def delist(self, category: str, symbol: str) -> None:
        """Remove an instrument from instruments-info (subscriptions stay, and get nothing)."""
        self.instruments[category].pop(symbol, None)

    # -- the stream protocol (section 1.3) ---------------------------------------------------------

    def _idle_deadline(self, info: VenueConnection) -> tuple[float, int, str]:
        return info.last_sent_at + self.options.idle_timeout_s, IDLE_CLOSE_CODE, "idle"

    async def _on_text(self, host: VenueWsHost, info: VenueConnection, text: str) -> None:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            await self._reply(info, "", None, ok=False, msg="error:request is not a JSON object")
            return
        op = request.get("op")
        req_id = request.get("req_id")
        req_id = req_id if isinstance(req_id, str) else None
        if op == "ping":
            await self._reply(info, "ping", req_id, ok=True, msg="pong")
        elif op in ("subscribe", "unsubscribe"):
            error = self._change_subscriptions(info, op, request.get("args"))
            await self._reply(info, op, req_id, ok=error is None, msg=error or "")
        else:
            shown = op if isinstance(op, str) else orjson.dumps(op).decode()
            await self._reply(info, shown, req_id, ok=False, msg=f"error:unknown op {shown}")

    async def _reply(
        self, info: VenueConnection, op: str, req_id: str | None, *, ok: bool, msg: str
    ) -> None:
        # The linear/inverse reply shape of section 1.3: req_id is "" when the request had none.
        reply = {
            "success": ok,
            "ret_msg": msg,
            "conn_id": info.conn_id,
            "req_id": req_id or "",
            "op": op,
        }
        await self.ws.send(info, orjson.dumps(reply).decode())

    def _change_subscriptions(self, info: VenueConnection, op: str, args: Any) -> str | None:
        """Apply a subscribe/unsubscribe; return the error `ret_msg`, or None on success. A
        request with one bad topic changes nothing."""
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return "error:args must be an array of strings"
        category = info.path.rsplit("/", 1)[-1]
        subs = info.subscriptions
        keys = [f"{category}:{a}" for a in args]
        if op == "unsubscribe":
            for key in keys:
                subs.pop(key, None)
            return None
        for name, key in zip(args, keys, strict=True):
            if not name.startswith(TOPIC_PREFIX):
                return f"error:handler not found,topic:{name}"
            if name[len(TOPIC_PREFIX) :] not in self.instruments[category]:
                return f"Invalid symbol :[{name}]"
            if key in subs:
                return f"error:already subscribed,topic:{name}"
        topics = [k.split(":", 1)[1] for k in subs] + list(args)
        if len(orjson.dumps(topics)) > self.options.max_args_chars:
            return f"error:args length exceeds {self.options.max_args_chars} characters"
        for key in keys:
            subs[key] = None
        if info.subscribed_at is None:
            info.subscribed_at = self.ws.now()
        return None

    # -- REST (section 2) --------------------------------------------------------------------------

    @web.middleware
    async def _limit(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.rest_requests += 1
        if not self.rest_limit.admit():
            # section 2.2: "403, access too frequent"; the body is the emulator's.
            return web.Response(status=403, text="access too frequent")
        response: web.StreamResponse = await handler(request)
        return response

    async def _instruments_info(self, request: web.Request) -> web.Response:
        query = request.query
        category = query.get("category", "")
        if category not in CATEGORIES:
            return _error(10001, "params error: category is invalid")
        try:
            limit = int(query.get("limit", "500"))
        except ValueError:
            return _error(10001, "params error: limit is invalid")
        if not 1 <= limit <= 1000:
            return _error(10001, "params error: limit must be within [1, 1000]")
        status = query.get("status", "Trading")
        rows = [
            (symbol, state)
            for symbol, state in self.instruments[category].items()
            if state == status and query.get("symbol", symbol) == symbol
        ]
        try:
            offset = _decode_cursor(query.get("cursor", ""))
        except ValueError:
            return _error(10001, "params error: cursor is invalid")
        page = rows[offset : offset + limit]
        next_offset = offset + len(page)
        body = {
            "retCode": 0,
            "retMsg": "OK",
            "result": {
                "category": category,
                "list": [instrument_row(category, s, state) for s, state in page],
                "nextPageCursor": _encode_cursor(next_offset) if next_offset < len(rows) else "",
            },
            "retExtInfo": {},
            "time": server_time_ms(),
        }
        return json_response(body)

    # -- generation -----------------------------------------------------------------------------

    async def _generate(self) -> None:
        options = self.options
        generator = BybitGenerator(
            {"linear": options.linear_symbols, "inverse": options.inverse_symbols},
            seed=options.seed,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        due_total = 0
        while True:
            await asyncio.sleep(options.push_interval_s)
            due = int((loop.time() - started) * options.rate_per_s) - due_total
            if due <= 0:
                continue
            due_total += due
            batch = generator.take(due, time.time_ns() // 1_000_000)
            for category in CATEGORIES:
                items = [item for c, item in batch if c == category]
                if items:
                    await self.publish(category, items)


def _error(code: int, msg: str) -> web.Response:
    return json_response(
        {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": server_time_ms()}
    )


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset={offset}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(cursor) from None
    name, _, value = text.partition("=")
    if name != "offset" or not value.isdigit():
        raise ValueError(cursor)
    return int(value)
