"""REST side of the emulator: the fapi/dapi/papi/sapi applications and their market-data routes.

Serves `GET /fapi/v1/time|ping|exchangeInfo`, the `/dapi/v1/` equivalents and
`GET /papi/v1/ping` (docs/binance.md §3, §6). Every matched route costs request
weight on an IP counter that is reported in `X-MBX-USED-WEIGHT-1M`; fapi and dapi share one
counter since the 2026-06-30 merge (§3.1). Account routes are added by other modules through
`add_route_weight` and the applications in `Emulator.rest_apps`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from collector.emulator.events import CM, UM, MarketSpec, decimals_of, specs

WEIGHT_HEADER: Final = "X-MBX-USED-WEIGHT-1M"
REQUEST_WEIGHT_LIMIT: Final = 2400
"""fapi + dapi IP weight per minute (§3.1); also what exchangeInfo's rateLimits advertise."""
PERPETUAL_DELIVERY_MS: Final = 4133404800000
"""deliveryDate of perpetual contracts (2100-12-25), as Binance publishes it."""
_ONBOARD_MS: Final = 1569398400000

Weight = int | Callable[[web.Request], int]
"""A route's request weight: a constant, or computed from the request (e.g. 20 with `symbol`,
50 without)."""
ROUTE_WEIGHTS: Final = web.AppKey("route_weights", dict[str, Weight])
"""Per-application map: canonical route path → weight; routes not in it weigh 1."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_time_ms() -> int:
    """The emulated server's clock: this machine's wall clock in milliseconds."""
    return time.time_ns() // 1_000_000


def json_response(body: Any, *, status: int = 200) -> web.Response:
    """A JSON response serialised with orjson, with Binance's content type."""
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", charset="UTF-8"
    )


class UsedWeight:
    """Request weight used by one IP in the current UTC minute (Binance resets per minute)."""

    def __init__(self, limit: int = REQUEST_WEIGHT_LIMIT) -> None:
        self.limit = limit
        self.clock: Callable[[], float] = time.time
        """Unix time source; tests pin it so that no minute boundary falls inside a test."""
        self._minute = -1
        self._used = 0

    @property
    def used(self) -> int:
        """Weight used so far in the current minute."""
        return self._used if self._minute == int(self.clock() // 60) else 0

    def add(self, weight: int) -> int:
        """Count `weight` against the current minute; return the new total."""
        minute = int(self.clock() // 60)
        if minute != self._minute:
            self._minute = minute
            self._used = 0
        self._used += weight
        return self._used


def add_route_weight(app: web.Application, path: str, weight: Weight) -> None:
    """Declare the weight of the route registered at `path` (its canonical form) on `app`."""
    app[ROUTE_WEIGHTS][path] = weight


def _weight_middleware(counter: UsedWeight, header: str) -> Callable[..., Any]:
    @web.middleware
    async def count_weight(request: web.Request, handler: _Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None:  # unmatched (404/405): not counted
            return await handler(request)
        weight = request.app[ROUTE_WEIGHTS].get(resource.canonical, 1)
        used = counter.add(weight if isinstance(weight, int) else weight(request))
        if used > counter.limit:
            # §3.2: 429 with code -1003; the futures docs do not promise Retry-After.
            response: web.StreamResponse = json_response(
                {
                    "code": -1003,
                    "msg": f"Too many requests; current limit of IP(127.0.0.1) request weight "
                    f"per minute is {counter.limit}. Please use WebSocket Streams for live "
                    "updates to avoid polling the API.",
                },
                status=429,
            )
        else:
            response = await handler(request)
        response.headers[header] = str(used)
        return response

    return count_weight


def new_rest_app(counter: UsedWeight | None, header: str = WEIGHT_HEADER) -> web.Application:
    """An empty REST application; with a counter, every matched route costs weight on it."""
    middlewares = [_weight_middleware(counter, header)] if counter is not None else []
    app = web.Application(middlewares=middlewares)
    app[ROUTE_WEIGHTS] = {}
    return app


async def _time(request: web.Request) -> web.Response:
    return json_response({"serverTime": server_time_ms()})


async def _ping(request: web.Request) -> web.Response:
    return json_response({})


def _delivery_ms(symbol: str) -> tuple[str, int]:
    """(contractType, deliveryDate) from a symbol: "_PERP"/none → perpetual, "_YYMMDD" → quarter."""
    _, _, suffix = symbol.partition("_")
    if len(suffix) == 6 and suffix.isdigit():
        day = datetime.strptime(suffix, "%y%m%d").replace(hour=8, tzinfo=UTC)
        return "CURRENT_QUARTER", int(day.timestamp() * 1000)
    return "PERPETUAL", PERPETUAL_DELIVERY_MS


_ORDER_TYPES: Final = [
    "LIMIT",
    "MARKET",
    "STOP",
    "STOP_MARKET",
    "TAKE_PROFIT",
    "TAKE_PROFIT_MARKET",
    "TRAILING_STOP_MARKET",
]


def _filters(spec: MarketSpec) -> list[dict[str, Any]]:
    tick = format(spec.tick_size, "f")
    step = format(spec.step_size, "f")
    return [
        {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000", "tickSize": tick},
        {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "1000000", "stepSize": step},
        {"filterType": "MARKET_LOT_SIZE", "minQty": step, "maxQty": "100000", "stepSize": step},
    ]


def _um_symbol(spec: MarketSpec) -> dict[str, Any]:
    contract_type, delivery = _delivery_ms(spec.symbol)
    return {
        "symbol": spec.symbol,
        "pair": spec.pair,
        "contractType": contract_type,
        "deliveryDate": delivery,
        "onboardDate": _ONBOARD_MS,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset,
        "quoteAsset": spec.quote_asset,
        "marginAsset": spec.quote_asset,
        "pricePrecision": max(0, decimals_of(spec.tick_size)),
        "quantityPrecision": max(0, decimals_of(spec.step_size)),
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": _filters(spec),
        "orderTypes": _ORDER_TYPES,
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }


def _cm_symbol(spec: MarketSpec) -> dict[str, Any]:
    contract_type, delivery = _delivery_ms(spec.symbol)
    return {
        "symbol": spec.symbol,
        "pair": spec.pair,
        "contractType": contract_type,
        "deliveryDate": delivery,
        "onboardDate": _ONBOARD_MS,
        "contractStatus": "TRADING",
        "contractSize": spec.contract_size,
        "marginAsset": spec.base_asset,
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset,
        "quoteAsset": spec.quote_asset,
        "pricePrecision": max(0, decimals_of(spec.tick_size)),
        "quantityPrecision": 0,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "equalQtyPrecision": 4,
        "triggerProtect": "0.0500",
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "liquidationFee": "0.010000",
        "marketTakeBound": "0.05",
        "filters": _filters(spec),
        "orderTypes": _ORDER_TYPES,
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def _rate_limits(weight_limit: int) -> list[dict[str, Any]]:
    return [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
         "limit": weight_limit},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
    ]  # fmt: skip


def _exchange_info_handler(
    head: Mapping[str, Any], build_symbols: Callable[[], list[dict[str, Any]]]
) -> _Handler:
    """Serve exchangeInfo. Everything but `serverTime` is built and serialised once, on the first
    request: a benchmark universe has tens of thousands of symbols."""
    cached: list[bytes] = []

    async def exchange_info(request: web.Request) -> web.Response:
        if not cached:
            before = orjson.dumps({"timezone": "UTC"})[:-1] + b',"serverTime":'
            after = b"," + orjson.dumps({**head, "symbols": build_symbols()})[1:]
            cached.extend((before, after))
        body = b"".join((cached[0], str(server_time_ms()).encode(), cached[1]))
        return web.Response(body=body, content_type="application/json", charset="UTF-8")

    return exchange_info


def add_fapi_routes(app: web.Application, um_symbols: Sequence[str], weight_limit: int) -> None:
    """USDⓈ-M market data: time, ping and exchangeInfo (§6) for `um_symbols`."""
    head = {
        "futuresType": "U_MARGINED",
        "rateLimits": _rate_limits(weight_limit),
        "exchangeFilters": [],
        "assets": [
            {"asset": asset, "marginAvailable": True, "autoAssetExchange": "-10000"}
            for asset in ("USDT", "USDC", "BTC", "ETH", "BNB")
        ],
    }
    symbols = tuple(um_symbols)
    app.router.add_get("/fapi/v1/time", _time)
    app.router.add_get("/fapi/v1/ping", _ping)
    app.router.add_get(
        "/fapi/v1/exchangeInfo",
        _exchange_info_handler(head, lambda: [_um_symbol(s) for s in specs(symbols, UM)]),
    )


def add_dapi_routes(app: web.Application, cm_symbols: Sequence[str], weight_limit: int) -> None:
    """COIN-M market data: time, ping and exchangeInfo (§6, with `contractStatus` and
    `contractSize`) for `cm_symbols`."""
    head = {"rateLimits": _rate_limits(weight_limit), "exchangeFilters": []}
    symbols = tuple(cm_symbols)
    app.router.add_get("/dapi/v1/time", _time)
    app.router.add_get("/dapi/v1/ping", _ping)
    app.router.add_get(
        "/dapi/v1/exchangeInfo",
        _exchange_info_handler(head, lambda: [_cm_symbol(s) for s in specs(symbols, CM)]),
    )


def add_papi_routes(app: web.Application) -> None:
    """Portfolio Margin: only `GET /papi/v1/ping` (account routes come from elsewhere)."""
    app.router.add_get("/papi/v1/ping", _ping)
