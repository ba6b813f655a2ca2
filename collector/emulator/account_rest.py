"""Account (USER_DATA) side of the REST emulator: the force-order endpoints of fapi, dapi, papi and
sapi with Binance's signing, timing, weight limits (429 → 418) and scripted faults.

Install with `Emulator(options, extensions=[install_account_api])` (or
`account_extension(AccountOptions(...))`) and script it through `account_api(emulator)`.
Behaviour follows docs/binance.md §2-§5; every point docs/binance.md marks ⚠ is an
`AccountOptions` field (`account_options`), so tests can exercise each reading. This module is
the endpoints (authentication, then each endpoint's query) and the installation; the
`AccountEmulator` it defines keeps its data in `account_store` and admits requests in
`account_gate` (weights, bans, faults, stalls). The pure parts are `account_auth` (keys,
signatures, timestamps, error bodies), `account_queries` (which rows a request gets),
`account_orders` (stored orders, wire shapes, seeded histories) and `account_limits` (weight
budgets, bans, clock, faults).

Once installed, this module's middleware is the outermost one on all four REST apps: it owns
request weight, 429/418 and the weight headers for market-data routes too (their declared
`ROUTE_WEIGHTS` still apply), so that one injectable clock drives every minute window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final
from weakref import WeakKeyDictionary

from aiohttp import web

from collector.emulator.account_auth import (
    API_KEY_FORMAT,
    API_KEY_HEADER,
    AccountKind,
    ApiError,
    KeyType,
    Permission,
    bad_api_key_format,
    check_timestamp,
    invalid_signature,
    mandatory_missing,
    parse_signed_query,
    rejected_api_key,
    unread_parameters,
)
from collector.emulator.account_gate import FUTURES_POOL, SAPI_WEIGHT_HEADER, AccountGate, Handler
from collector.emulator.account_limits import (
    BanPolicy,
    ManualClock,
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
)
from collector.emulator.account_queries import (
    LIMIT_PARAMS,
    ORDER_PARAMS,
    PAGE_PARAMS,
    find_margin_order,
    select_limit_style,
    select_page,
)
from collector.emulator.account_store import Account, AccountStore
from collector.emulator.market_rest import (
    add_route_weight,
    json_response,
)

if TYPE_CHECKING:
    from collector.emulator.core import Emulator

_NO_LIMIT: Final = 2**62
_COMMON_PARAMS: Final = frozenset({"recvWindow", "timestamp"})

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


class AccountEmulator(AccountStore, AccountGate):
    """The scripting surface and state of the account endpoints of one `Emulator`: the data
    (`account_store`), the admission (`account_gate`) and here the endpoints that serve it.

    Accounts and keys: `add_account`, `add_api_key`. Data: `add_force_order`, `update_order`,
    `seed_history`, `orders`. Faults: `fail_next`, `stall_next`, `release_stalls`. Limits:
    `pools`, `used_weight`, `banned_until_ms`, `reset_limits`. Behaviour: `options`,
    `configure`. Observation: `stats`, `wait_until`.
    """

    def __init__(self, emulator: Emulator, options: AccountOptions) -> None:
        AccountStore.__init__(self)
        AccountGate.__init__(self, options)
        self._emulator = emulator
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

    # -- wiring ---------------------------------------------------------------------------------

    def _route(self, endpoint: _Endpoint, serve: Callable[..., Awaitable[Any]]) -> Handler:
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
