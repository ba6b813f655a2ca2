"""What the collector knows about each account force-order endpoint (docs/binance.md §4).

Pure data: path, API family, product, paging style, documented weight, retention and the widest
window sent. Which endpoints an account polls follows §4.4: classic accounts use fapi, dapi and
sapi; Portfolio Margin accounts use papi (PM restricts fapi/dapi user data).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from collector.config import AccountConfig, AccountKind, ApiFamily, Product

DAY_MS = 86_400_000
AUTO_CLOSE_TYPES = ("LIQUIDATION", "ADL")


class Paging(StrEnum):
    """How an endpoint pages."""

    LIMIT = "limit"  # limit <= 100, no cursor: time windows, bisected when a page is full
    PAGE = "page"  # current/size <= 100 with {rows, total}


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One force-order endpoint."""

    path: str
    family: ApiFamily  # the base URL and the server clock
    product: Product  # the `product` column
    paging: Paging
    weight: int  # documented weight of one request as the collector sends it
    # Oldest data the endpoint serves, in days, when Binance documents it; requests older than
    # that can only fail, so none are sent. None: not documented (see `default_depth_days`).
    retention_days: float | None
    # How far back the initial backfill goes when neither retention nor backfill_days says.
    default_depth_days: float
    # Widest startTime..endTime span sent: never rely on the undocumented defaults (§4.5).
    max_window_ms: int = 7 * DAY_MS
    page_size: int = 100


# §3.1 weights: 50 without `symbol` (the collector polls all symbols at once), 1 for the
# page-style endpoints. COIN-M retention: the docs say 200 days, the 2026 connectors 90 (§4.1 ⚠);
# the shorter is used so no request can only fail. UM and margin retention is not documented.
FAPI_FORCE_ORDERS = EndpointSpec(
    "/fapi/v1/forceOrders", ApiFamily.FAPI, Product.UM, Paging.LIMIT, 50, None, 180.0
)
DAPI_FORCE_ORDERS = EndpointSpec(
    "/dapi/v1/forceOrders", ApiFamily.DAPI, Product.CM, Paging.LIMIT, 50, 90.0, 90.0
)
PAPI_UM_FORCE_ORDERS = EndpointSpec(
    "/papi/v1/um/forceOrders", ApiFamily.PAPI, Product.UM, Paging.LIMIT, 50, None, 180.0
)
PAPI_CM_FORCE_ORDERS = EndpointSpec(
    "/papi/v1/cm/forceOrders", ApiFamily.PAPI, Product.CM, Paging.LIMIT, 50, 90.0, 90.0
)
PAPI_MARGIN_FORCE_ORDERS = EndpointSpec(
    "/papi/v1/margin/forceOrders", ApiFamily.PAPI, Product.MARGIN, Paging.PAGE, 1, None, 180.0
)
SAPI_FORCE_LIQUIDATION_REC = EndpointSpec(
    "/sapi/v1/margin/forceLiquidationRec",
    ApiFamily.SAPI,
    Product.MARGIN,
    Paging.PAGE,
    1,
    None,
    180.0,
)


@dataclass(frozen=True, slots=True)
class OrderLookupSpec:
    """The margin order endpoint used to enrich margin force orders (§4.3), weight 10."""

    path: str
    family: ApiFamily
    weight: int = 10


PAPI_MARGIN_ORDER = OrderLookupSpec("/papi/v1/margin/order", ApiFamily.PAPI)
SAPI_MARGIN_ORDER = OrderLookupSpec("/sapi/v1/margin/order", ApiFamily.SAPI)


@dataclass(frozen=True, slots=True)
class Scope:
    """One independently checkpointed stream of rows: an endpoint plus its fixed parameters.

    `name` is the checkpoint key within (account, endpoint): the autoCloseType for limit-style
    endpoints (rows carry no type, so each type is queried on its own), `cross` or
    `isolated:<SYMBOL>` for the classic margin endpoint, `all` for PM margin.
    """

    spec: EndpointSpec
    name: str
    params: tuple[tuple[str, str], ...]
    auto_close_type: str


def scopes_for(account: AccountConfig) -> list[Scope]:
    """Every scope polled for `account`, by kind and products (§4.4)."""
    pm = account.kind == AccountKind.PORTFOLIO_MARGIN
    out: list[Scope] = []
    futures = {
        Product.UM: PAPI_UM_FORCE_ORDERS if pm else FAPI_FORCE_ORDERS,
        Product.CM: PAPI_CM_FORCE_ORDERS if pm else DAPI_FORCE_ORDERS,
    }
    for product, spec in futures.items():
        if product in account.products:
            for act in AUTO_CLOSE_TYPES:
                out.append(Scope(spec, act, (("autoCloseType", act),), act))
    if Product.MARGIN in account.products:
        if pm:
            out.append(Scope(PAPI_MARGIN_FORCE_ORDERS, "all", (), "LIQUIDATION"))
        else:
            out.append(Scope(SAPI_FORCE_LIQUIDATION_REC, "cross", (), "LIQUIDATION"))
            out.extend(
                Scope(
                    SAPI_FORCE_LIQUIDATION_REC,
                    f"isolated:{symbol}",
                    (("isolatedSymbol", symbol),),
                    "LIQUIDATION",
                )
                for symbol in account.isolated_symbols
            )
    return out


def order_lookup_for(account: AccountConfig) -> OrderLookupSpec:
    """The margin order endpoint for `account`'s kind."""
    return PAPI_MARGIN_ORDER if account.kind == AccountKind.PORTFOLIO_MARGIN else SAPI_MARGIN_ORDER


def depth_days(spec: EndpointSpec, backfill_days: float | None) -> float:
    """How many days back the initial backfill starts: the configured depth (default: all
    Binance keeps), never beyond a documented retention."""
    depth = backfill_days if backfill_days is not None else spec.default_depth_days
    if spec.retention_days is not None:
        depth = min(depth, spec.retention_days)
    return depth
