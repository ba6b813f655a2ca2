"""Account (USER_DATA) side of the REST emulator: the force-order endpoints of fapi, dapi, papi and
sapi with Binance's signing, timing, weight limits (429 → 418) and scripted faults.

Install with `Emulator(options, extensions=[install_account_api])` (or
`account_extension(AccountOptions(...))`) and script it through `account_api(emulator)`.
Behaviour follows docs/binance.md §2-§5; every point docs/binance.md marks ⚠ is an
`AccountOptions` field (`account_options`), so tests can exercise each reading. This module is
the I/O shell; the pure parts are `account_auth` (keys, signatures, timestamps, error bodies),
`account_queries` (which rows a request gets), `account_orders` (stored orders, wire shapes,
seeded histories) and `account_limits` (weight budgets, bans, clock, faults).

Once installed, this module's middleware is the outermost one on all four REST apps: it owns
request weight, 429/418 and the weight headers for market-data routes too (their declared
`ROUTE_WEIGHTS` still apply), so that one injectable clock drives every minute window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final
from weakref import WeakKeyDictionary

from aiohttp import web

from collector.emulator.account_auth import (
    API_KEY_FORMAT,
    API_KEY_HEADER,
    AccountKind,
    ApiError,
    ApiKey,
    KeyType,
    Permission,
    bad_api_key_format,
    check_timestamp,
    default_permissions,
    invalid_signature,
    make_api_key,
    mandatory_missing,
    parse_signed_query,
    rejected_api_key,
    unread_parameters,
)
from collector.emulator.account_limits import (
    MINUTE_MS,
    BanPolicy,
    FaultPlan,
    ManualClock,
    RateLimiter,
    Stall,
    WeightPool,
)
from collector.emulator.account_options import (
    AccountOptions,
    AccountStats,
    SignedRequest,
    SortOrder,
    TimeField,
)
from collector.emulator.account_orders import (
    AutoCloseType,
    ForceOrder,
    Product,
    Shape,
    build_order,
    generate_fields,
    update_fields,
)
from collector.emulator.account_queries import (
    LIMIT_PARAMS,
    ORDER_PARAMS,
    PAGE_PARAMS,
    find_margin_order,
    select_limit_style,
    select_page,
)
from collector.emulator.market_rest import (
    ROUTE_WEIGHTS,
    WEIGHT_HEADER,
    add_route_weight,
    json_response,
)

if TYPE_CHECKING:
    from collector.emulator.core import Emulator

SAPI_WEIGHT_HEADER: Final = "X-SAPI-USED-IP-WEIGHT-1M"
FUTURES_POOL: Final = "futures"
"""Name of the weight pool fapi and dapi share (§3.1); `papi` and `api` are the others, and each
`/sapi` endpoint's pool is named by its path."""
_NO_LIMIT: Final = 2**62
_TIME_ROUTES: Final = {"/fapi/v1/time": "fapi", "/dapi/v1/time": "dapi"}
"""Market-data time routes answered here, so that they report the skewed, injectable clock."""
_COMMON_PARAMS: Final = frozenset({"recvWindow", "timestamp"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = [
    "AccountEmulator",
    "AccountKind",
    "AccountOptions",
    "AccountStats",
    "AutoCloseType",
    "ForceOrder",
    "KeyType",
    "ManualClock",
    "Permission",
    "Product",
    "SignedRequest",
    "SortOrder",
    "TimeField",
    "account_api",
    "account_extension",
    "install_account_api",
]


@dataclass(slots=True)
class Account:
    """One emulated account and its force orders per product."""

    name: str
    kind: AccountKind
    account_id: int
    orders: dict[Product, list[ForceOrder]] = field(default_factory=dict)


Access = Callable[[AccountKind, frozenset[Permission]], bool]


def _futures_access(kind: AccountKind, permissions: frozenset[Permission]) -> bool:
    # §4.4: Portfolio Margin restricts fapi/dapi user-data endpoints.
    return kind is AccountKind.CLASSIC and Permission.FUTURES in permissions


def _papi_access(kind: AccountKind, permissions: frozenset[Permission]) -> bool:
    return kind is AccountKind.PORTFOLIO_MARGIN and Permission.PORTFOLIO_MARGIN in permissions


def _sapi_access(kind: AccountKind, permissions: frozenset[Permission]) -> bool:
    return Permission.MARGIN in permissions


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    path: str
    product: Product
    shape: Shape
    access: Access


_LIMIT_STYLE: Final = (
    _Endpoint("fapi", "/fapi/v1/forceOrders", Product.UM, Shape.FAPI, _futures_access),
    _Endpoint("dapi", "/dapi/v1/forceOrders", Product.CM, Shape.DAPI, _futures_access),
    _Endpoint("papi", "/papi/v1/um/forceOrders", Product.UM, Shape.PAPI_UM, _papi_access),
    _Endpoint("papi", "/papi/v1/cm/forceOrders", Product.CM, Shape.PAPI_CM, _papi_access),
)
_PAGE_STYLE: Final = (
    _Endpoint(
        "papi", "/papi/v1/margin/forceOrders", Product.MARGIN_PM, Shape.PAPI_MARGIN, _papi_access
    ),
    _Endpoint(
        "sapi",
        "/sapi/v1/margin/forceLiquidationRec",
        Product.MARGIN_CLASSIC,
        Shape.SAPI_MARGIN,
        _sapi_access,
    ),
)
_ORDER_LOOKUP: Final = (
    _Endpoint(
        "papi", "/papi/v1/margin/order", Product.MARGIN_PM, Shape.PAPI_MARGIN_ORDER, _papi_access
    ),
    _Endpoint(
        "sapi",
        "/sapi/v1/margin/order",
        Product.MARGIN_CLASSIC,
        Shape.SAPI_MARGIN_ORDER,
        _sapi_access,
    ),
)


def _symbol_weight(request: web.Request) -> int:
    """§3.1: the limit-style endpoints weigh 20 with `symbol`, 50 without."""
    return 20 if "symbol" in request.query else 50


def _fault_response(status: int) -> web.Response:
    """A scripted 5xx: JSON bodies for the statuses Binance itself answers, a proxy's HTML page
    for 502/504, so clients cannot assume an error body is JSON."""
    if status in (502, 504):
        text = "Bad Gateway" if status == 502 else "Gateway Time-out"
        return web.Response(
            status=status,
            text=f"<html><body><h1>{status} {text}</h1></body></html>",
            content_type="text/html",
        )
    if status == 503:
        body = {"code": -1001, "msg": "Service Unavailable."}
    else:
        body = {"code": -1000, "msg": "An unknown error occured while processing the request."}
    return json_response(body, status=status)


class AccountEmulator:
    """The scripting surface and state of the account endpoints of one `Emulator`.

    Accounts and keys: `add_account`, `add_api_key`. Data: `add_force_order`, `update_order`,
    `seed_history`, `orders`. Faults: `fail_next`, `stall_next`, `release_stalls`. Limits:
    `pools`, `used_weight`, `banned_until_ms`, `reset_limits`. Behaviour: `options`,
    `configure`. Observation: `stats`, `wait_until`.
    """

    def __init__(self, emulator: Emulator, options: AccountOptions) -> None:
        self._emulator = emulator
        self.stats = AccountStats(signed=deque(maxlen=options.signed_log_size))
        self._accounts: dict[str, Account] = {}
        self._keys: dict[str, ApiKey] = {}
        self._faults = FaultPlan()
        self._limiter = RateLimiter(BanPolicy())
        self.pools: dict[str, WeightPool] = {
            FUTURES_POOL: WeightPool(FUTURES_POOL, 1, WEIGHT_HEADER, can_ban=True),
            "papi": WeightPool("papi", 1, WEIGHT_HEADER, can_ban=True),
            "api": WeightPool("api", 1, WEIGHT_HEADER, can_ban=False),
        }
        """Weight budgets by name: futures (fapi + dapi), papi, api, and one per sapi path."""
        self._next_order_id = 6_071_832_819
        self._sequence = 0
        self._release: asyncio.Event | None = None
        self._change: asyncio.Event | None = None
        self._options = options
        self._apply_options()

    # -- options --------------------------------------------------------------------------------

    @property
    def options(self) -> AccountOptions:
        """Current behaviour; assigning (or `configure`) takes effect on the next request."""
        return self._options

    @options.setter
    def options(self, options: AccountOptions) -> None:
        self._options = options
        self._apply_options()

    def configure(self, **changes: Any) -> AccountOptions:
        """Change some options (`AccountOptions` field names); return the new options."""
        self.options = replace(self._options, **changes)
        return self._options

    def _apply_options(self) -> None:
        options = self._options
        futures = options.futures_weight_limit or self._emulator.options.weight_limit_1m
        self.pools[FUTURES_POOL].limit = futures
        self.pools["papi"].limit = options.papi_weight_limit
        self.pools["api"].limit = options.api_weight_limit
        for pool in self.pools.values():
            if pool.header == SAPI_WEIGHT_HEADER:
                pool.limit = options.sapi_weight_limit
        self._limiter.policy = BanPolicy(options.ban_after_429s, options.ban_base_s)
        if self.stats.signed.maxlen != options.signed_log_size:
            self.stats.signed = deque(self.stats.signed, maxlen=options.signed_log_size)

    def server_time_ms(self, host: str) -> int:
        """The clock of `host` (fapi, dapi, papi, sapi): `clock()` plus that host's skew."""
        return self._options.clock() + self._options.skew_ms.get(host, 0)

    # -- accounts -------------------------------------------------------------------------------

    def add_account(
        self,
        name: str,
        kind: AccountKind | str,
        api_key: str,
        secret_or_public_pem: str,
        key_type: KeyType | str = KeyType.HMAC,
        *,
        permissions: Sequence[Permission | str] | None = None,
        account_id: int | None = None,
    ) -> Account:
        """Create account `name` of `kind` (classic | portfolio_margin) with one API key.

        `secret_or_public_pem` is the HMAC secret, or the PEM public key for RSA / ED25519.
        `permissions` default to `default_permissions(kind)`; `account_id` (the margin order's
        `accountId`) to one more than the highest so far. Raises ValueError for a duplicate
        name or key, or a malformed key, secret or PEM.
        """
        if name in self._accounts:
            raise ValueError(f"account {name!r} exists")
        kind = AccountKind(kind)
        if account_id is None:
            account_id = (
                max((a.account_id for a in self._accounts.values()), default=152_950_865) + 1
            )
        account = Account(name, kind, account_id)
        self._accounts[name] = account
        try:
            self.add_api_key(name, api_key, secret_or_public_pem, key_type, permissions=permissions)
        except ValueError:
            del self._accounts[name]
            raise
        return account

    def add_api_key(
        self,
        account: str,
        api_key: str,
        secret_or_public_pem: str,
        key_type: KeyType | str = KeyType.HMAC,
        *,
        permissions: Sequence[Permission | str] | None = None,
    ) -> ApiKey:
        """Register another API key for `account` (same rules as `add_account`)."""
        owner = self._account(account)
        if api_key in self._keys:
            raise ValueError(f"API key {api_key!r} is already registered")
        chosen = default_permissions(owner.kind) if permissions is None else permissions
        key = make_api_key(api_key, account, key_type, secret_or_public_pem, chosen)
        self._keys[api_key] = key
        return key

    def _account(self, name: str) -> Account:
        try:
            return self._accounts[name]
        except KeyError:
            raise KeyError(f"no account {name!r}") from None

    # -- data -----------------------------------------------------------------------------------

    def add_force_order(
        self,
        account: str,
        product: Product | str,
        *,
        visible_from_ms: int | None = None,
        is_queryable: bool = True,
        extra_fields: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> ForceOrder:
        """Store one force order of `account` and return it; see `account_orders.build_order`.

        `fields` are wire names of any shape (orderId, symbol, side, price, avgPrice, origQty or
        qty, time, updateTime or updatedTime, autoCloseType, clientOrderId, isIsolated, …);
        prices and quantities as str, Decimal or int. `visible_from_ms`: a late row, hidden until
        that server time. `is_queryable=False`: the margin order lookup answers -2013.
        `extra_fields` are appended verbatim to every shape. The same orderId may be used on
        two symbols, but not twice on one. MARGIN_PM needs a Portfolio Margin account,
        MARGIN_CLASSIC a classic one.
        """
        owner = self._account(account)
        kind = Product(product)
        if kind is Product.MARGIN_PM and owner.kind is not AccountKind.PORTFOLIO_MARGIN:
            raise ValueError("margin_pm orders belong to Portfolio Margin accounts")
        if kind is Product.MARGIN_CLASSIC and owner.kind is not AccountKind.CLASSIC:
            raise ValueError("margin_classic orders belong to classic accounts")
        self._sequence += 1
        order = build_order(
            kind,
            fields,
            order_id=self._next_order_id,
            now_ms=self._options.clock(),
            sequence=self._sequence,
            account_id=owner.account_id,
        )
        store = owner.orders.setdefault(kind, [])
        if any(o.order_id == order.order_id and o.symbol == order.symbol for o in store):
            raise ValueError(f"{kind} order {order.symbol} {order.order_id} exists")
        self._next_order_id = max(self._next_order_id, order.order_id) + 1
        order.visible_from_ms = visible_from_ms
        order.is_queryable = is_queryable
        order.extra = dict(extra_fields or {})
        store.append(order)
        return order

    def update_order(
        self,
        account: str,
        product: Product | str,
        order_id: int,
        *,
        symbol: str | None = None,
        visible_from_ms: int | None = None,
        is_queryable: bool | None = None,
        **fields: Any,
    ) -> ForceOrder:
        """Change a stored order (e.g. bump `updateTime`, set `status`); return it.

        `symbol` is needed when `order_id` is used on several symbols. Raises KeyError when no
        order matches, ValueError when several do.
        """
        store = self._account(account).orders.get(Product(product), [])
        matches = [o for o in store if o.order_id == order_id and symbol in (None, o.symbol)]
        if not matches:
            raise KeyError(f"no {product} order {order_id} of {account!r}")
        if len(matches) > 1:
            raise ValueError(f"order id {order_id} is used on several symbols; pass symbol")
        order = matches[0]
        update_fields(order, fields)
        if visible_from_ms is not None:
            order.visible_from_ms = visible_from_ms
        if is_queryable is not None:
            order.is_queryable = is_queryable
        return order

    def seed_history(
        self,
        account: str,
        product: Product | str,
        n: int,
        start_ms: int,
        end_ms: int,
        seed: int,
        *,
        symbols: Sequence[str] | None = None,
        adl_share: float = 0.1,
        isolated_share: float = 0.0,
    ) -> list[ForceOrder]:
        """Add `n` deterministic orders with `time` in [start_ms, end_ms]; return them, oldest
        first. Same seed and arguments on a fresh emulator, same orders (ids included)."""
        kind = Product(product)
        rows = generate_fields(
            kind,
            n,
            start_ms,
            end_ms,
            seed,
            symbols=symbols,
            adl_share=adl_share,
            isolated_share=isolated_share,
        )
        return [self.add_force_order(account, kind, **fields) for fields in rows]

    def orders(self, account: str, product: Product | str) -> list[ForceOrder]:
        """The stored orders of `account` for `product` (live objects), in insertion order."""
        return list(self._account(account).orders.get(Product(product), []))

    # -- faults and limits ----------------------------------------------------------------------

    def fail_next(self, path: str, count: int = 1, status: int = 503) -> None:
        """Answer the next `count` requests to route `path` (e.g. "/fapi/v1/forceOrders"; "*" =
        any route) with `status`: 503 `{"code":-1001,"msg":"Service Unavailable."}`, 500 -1000,
        502/504 an HTML page. Scripted failures cost no weight (§3.2) and carry no weight header.
        """
        self._faults.fail_next(path, count, status)

    def stall_next(self, path: str, count: int = 1, seconds: float | None = None) -> None:
        """Hold the next `count` responses of route `path` ("*" = any) for `seconds`, or until
        `release_stalls()` (or shutdown) when None. The weight is counted before the stall."""
        self._faults.stall_next(path, count, seconds)

    def release_stalls(self) -> None:
        """Let every response held by a stall go now."""
        release, self._release = self._release, None
        if release is not None:
            release.set()

    def clear_faults(self) -> None:
        """Drop every scripted failure and stall not yet consumed."""
        self._faults.clear()

    def used_weight(self, pool: str) -> int:
        """Weight used in the current minute of `pool` (futures, papi, api or a sapi path)."""
        return self.pools[pool].used_at(self._options.clock())

    @property
    def banned_until_ms(self) -> int:
        """When the current (or last) fapi/dapi/papi IP ban ends, ms; 0 if never banned."""
        return self._limiter.banned_until_ms

    def reset_limits(self) -> None:
        """Forget all used weight, lift any ban and forget past offences."""
        for pool in self.pools.values():
            pool.reset()
        self._limiter.reset()

    # -- observation ----------------------------------------------------------------------------

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - tests read better with the deadline inline
    ) -> None:
        """Wait until `predicate()` holds, re-checking whenever a request arrives, finishes or
        starts stalling. Raises TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._change is None:
                    self._change = asyncio.Event()
                await self._change.wait()

    def _notify(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    # -- wiring ---------------------------------------------------------------------------------

    def _pool_for(self, host: str, path: str) -> WeightPool:
        if host in ("fapi", "dapi"):
            return self.pools[FUTURES_POOL]
        if host == "papi":
            return self.pools["papi"]
        if path.startswith("/api/"):
            return self.pools["api"]
        pool = self.pools.get(path)
        if pool is None:  # §3.1: every /sapi endpoint has its own budget and never bans
            pool = WeightPool(
                path, self._options.sapi_weight_limit, SAPI_WEIGHT_HEADER, can_ban=False
            )
            self.pools[path] = pool
        return pool

    def middleware(self, host: str) -> Callable[..., Any]:
        """The middleware `install_account_api` puts outermost on `host`'s REST app."""

        @web.middleware
        async def account_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            if resource is None:  # unmatched (404/405): neither counted nor limited
                return await handler(request)
            path = resource.canonical
            self.stats.requests[path] += 1
            self._notify()
            try:
                response = await self._admit(request, host, path, handler)
            finally:
                self._notify()
            self.stats.responses[(path, response.status)] += 1
            return response

        return account_middleware

    async def _admit(
        self, request: web.Request, host: str, path: str, handler: _Handler
    ) -> web.StreamResponse:
        failure = self._faults.take_failure(path)
        if failure is not None:
            self.stats.faults_served += 1
            return _fault_response(failure)
        pool = self._pool_for(host, path)
        declared = request.app[ROUTE_WEIGHTS].get(path, 1)
        weight = declared if isinstance(declared, int) else declared(request)
        now_ms = self._options.clock()
        decision = self._limiter.check(pool, weight, now_ms)
        stats = self.stats
        stats.max_used_weight[pool.name] = max(stats.max_used_weight[pool.name], decision.used)
        response: web.StreamResponse
        if decision.status != 200:
            if decision.status == 418:
                stats.banned_418 += 1
            else:
                stats.rate_limited_429 += 1
                stats.minutes_429[pool.name].add(now_ms // MINUTE_MS)
            stats.errors[-1003] += 1
            response = json_response({"code": -1003, "msg": decision.msg}, status=decision.status)
            # Spot docs promise Retry-After (§3.2); the futures docs do not (⚠).
            if not pool.can_ban or self._options.is_futures_retry_after_sent:
                response.headers["Retry-After"] = str(decision.retry_after_s)
        else:
            stall = self._faults.take_stall(path)
            if stall is not None:
                await self._stall(stall)
            if path in _TIME_ROUTES:
                response = json_response({"serverTime": self.server_time_ms(host)})
            else:
                response = await handler(request)
        response.headers[pool.header] = str(decision.used)
        return response

    async def _stall(self, stall: Stall) -> None:
        if self._release is None:
            self._release = asyncio.Event()
        release = self._release
        self.stats.stalls += 1
        self.stats.stalled_now += 1
        self._notify()
        try:
            if stall.seconds is None:
                await release.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(stall.seconds):
                        await release.wait()
        finally:
            self.stats.stalled_now -= 1

    async def _on_shutdown(self, app: web.Application) -> None:
        self.release_stalls()

    def _route(self, endpoint: _Endpoint, serve: Callable[..., Awaitable[Any]]) -> _Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                body = await serve(request, endpoint)
            except ApiError as error:
                self.stats.errors[error.code] += 1
                return json_response(error.body, status=error.status)
            return json_response(body)

        return handle

    # -- request handling -----------------------------------------------------------------------

    async def _authenticate(
        self, request: web.Request, endpoint: _Endpoint, accepted: frozenset[str]
    ) -> tuple[Account, dict[str, str], int]:
        """Check key, permissions, signature and timestamp (in that order), then the parameter
        names; return the account, the decoded parameters and the host's server time."""
        api_key = request.headers.get(API_KEY_HEADER)
        if api_key is None or not API_KEY_FORMAT.fullmatch(api_key):
            raise bad_api_key_format()
        key = self._keys.get(api_key)
        if key is None:
            raise rejected_api_key()
        account = self._accounts[key.account]
        if not endpoint.access(account.kind, key.permissions):
            raise rejected_api_key()
        body = (await request.read()).decode("utf-8", "replace")
        signed = parse_signed_query(request.raw_path.partition("?")[2], body)
        record = SignedRequest(
            endpoint.host, endpoint.path, api_key, signed.payload, signed.signature
        )
        self.stats.signed.append(record)
        now = self.server_time_ms(endpoint.host)
        try:
            if not key.verify(signed.payload, signed.signature):
                raise invalid_signature()
            check_timestamp(signed.params, now)
        except ApiError as error:
            record.code = error.code
            raise
        params = signed.params
        if self._options.is_unknown_param_rejected:
            allowed = accepted | _COMMON_PARAMS
            read = sum(1 for name in params if name in allowed)
            if read != len(params):
                raise unread_parameters(read, len(params))
        for name, value in params.items():
            if not value:  # an empty value is as good as none, and Binance says so
                raise mandatory_missing(name)
        return account, params, now

    async def _serve_limit_style(self, request: web.Request, endpoint: _Endpoint) -> Any:
        account, params, now = await self._authenticate(request, endpoint, LIMIT_PARAMS)
        return select_limit_style(
            account.orders.get(endpoint.product, ()),
            params,
            now,
            self._options,
            product=endpoint.product,
            shape=endpoint.shape,
            is_dapi=endpoint.host == "dapi",
        )

    async def _serve_page_style(self, request: web.Request, endpoint: _Endpoint) -> Any:
        is_sapi = endpoint.host == "sapi"
        accepted = PAGE_PARAMS | {"isolatedSymbol"} if is_sapi else PAGE_PARAMS
        account, params, now = await self._authenticate(request, endpoint, accepted)
        return select_page(
            account.orders.get(endpoint.product, ()),
            params,
            now,
            self._options,
            product=endpoint.product,
            shape=endpoint.shape,
            is_sapi=is_sapi,
        )

    async def _serve_order(self, request: web.Request, endpoint: _Endpoint) -> Any:
        is_sapi = endpoint.host == "sapi"
        accepted = ORDER_PARAMS | {"isIsolated"} if is_sapi else ORDER_PARAMS
        account, params, now = await self._authenticate(request, endpoint, accepted)
        return find_margin_order(
            account.orders.get(endpoint.product, ()),
            params,
            now,
            shape=endpoint.shape,
            is_sapi=is_sapi,
        )

    async def _serve_time(self, request: web.Request, endpoint: _Endpoint) -> Any:
        return {"serverTime": self.server_time_ms(endpoint.host)}

    async def _serve_ping(self, request: web.Request, endpoint: _Endpoint) -> Any:
        return {}

    def install(self, apps: Mapping[str, web.Application]) -> None:
        """Add the middleware, routes and weights to the REST apps (before they start)."""
        for host, app in apps.items():
            # First in the list = outermost: see the module docstring.
            app.middlewares.insert(0, self.middleware(host))
            app.on_shutdown.append(self._on_shutdown)
        for endpoint in _LIMIT_STYLE:
            self._add(apps, endpoint, self._serve_limit_style, _symbol_weight)
        for endpoint in _PAGE_STYLE:
            self._add(apps, endpoint, self._serve_page_style, 1)
        for endpoint in _ORDER_LOOKUP:
            self._add(apps, endpoint, self._serve_order, 10)
        sapi = apps["sapi"]
        existing = {resource.canonical for resource in sapi.router.resources()}
        for path, serve in (("/api/v3/time", self._serve_time), ("/api/v3/ping", self._serve_ping)):
            if path not in existing:
                endpoint = _Endpoint("sapi", path, Product.UM, Shape.FAPI, _sapi_access)
                self._add(apps, endpoint, serve, 1)

    def _add(
        self,
        apps: Mapping[str, web.Application],
        endpoint: _Endpoint,
        serve: Callable[[web.Request, _Endpoint], Awaitable[Any]],
        weight: int | Callable[[web.Request], int],
    ) -> None:
        app = apps[endpoint.host]
        app.router.add_get(endpoint.path, self._route(endpoint, serve))
        add_route_weight(app, endpoint.path, weight)


_INSTALLED: WeakKeyDictionary[Emulator, AccountEmulator] = WeakKeyDictionary()


def _install(emulator: Emulator, options: AccountOptions) -> AccountEmulator:
    if emulator in _INSTALLED:
        raise RuntimeError("the account API is already installed on this emulator")
    accounts = AccountEmulator(emulator, options)
    accounts.install(emulator.rest_apps)
    # market_rest's own weight middleware (inner) keeps counting on its wall-clock counters; only
    # ours answers 429/418, so theirs must never refuse a request ours admitted (e.g. after an
    # injected clock moved past a minute boundary ahead of the wall clock).
    emulator.futures_weight.limit = _NO_LIMIT
    emulator.papi_weight.limit = _NO_LIMIT
    _INSTALLED[emulator] = accounts
    setattr(emulator, "accounts", accounts)  # noqa: B010 - untyped convenience; see account_api
    return accounts


def install_account_api(emulator: Emulator) -> None:
    """Emulator extension: add the account endpoints with default `AccountOptions`."""
    _install(emulator, AccountOptions())


def account_extension(options: AccountOptions) -> Callable[[Emulator], None]:
    """Emulator extension adding the account endpoints with `options`."""

    def install(emulator: Emulator) -> None:
        _install(emulator, options)

    return install


def account_api(emulator: Emulator) -> AccountEmulator:
    """The `AccountEmulator` installed on `emulator` (typed; `emulator.accounts` is the same
    object). Raises LookupError if the extension was not installed."""
    try:
        return _INSTALLED[emulator]
    except KeyError:
        raise LookupError(
            "account API not installed: pass extensions=[install_account_api]"
        ) from None
