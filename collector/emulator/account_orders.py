"""Account force orders of the emulator: one stored record per order and its wire shapes.

Pure code (no I/O, no clock): an order is stored once, in the futures field names of
docs/binance.md §4.1, and rendered in the exact shape of whichever endpoint returns
it (§4.1 limit-style rows, §4.2 page-style rows, §4.3 margin order lookups). A seeded generator
makes deterministic histories for tests and benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Final

from collector.emulator.events import CM, UM, market_spec, pair_of


class Product(StrEnum):
    """Which book a force order belongs to; with the account kind it picks the endpoint (§4.4).

    UM: /fapi/v1/forceOrders (classic) or /papi/v1/um/forceOrders (Portfolio Margin).
    CM: /dapi/v1/forceOrders (classic) or /papi/v1/cm/forceOrders (Portfolio Margin).
    MARGIN_PM: /papi/v1/margin/forceOrders. MARGIN_CLASSIC: /sapi/v1/margin/forceLiquidationRec.
    """

    UM = "um"
    CM = "cm"
    MARGIN_PM = "margin_pm"
    MARGIN_CLASSIC = "margin_classic"

    @property
    def is_margin(self) -> bool:
        """Whether rows of this product are served by a page-style endpoint (§4.2)."""
        return self in (Product.MARGIN_PM, Product.MARGIN_CLASSIC)


class AutoCloseType(StrEnum):
    """The `autoCloseType` filter of the limit-style endpoints (§4.1)."""

    LIQUIDATION = "LIQUIDATION"
    ADL = "ADL"


class Shape(StrEnum):
    """A wire shape: which fields, in which order, an endpoint returns for one order."""

    FAPI = "fapi"
    DAPI = "dapi"
    PAPI_UM = "papi_um"
    PAPI_CM = "papi_cm"
    PAPI_MARGIN = "papi_margin"
    SAPI_MARGIN = "sapi_margin"
    PAPI_MARGIN_ORDER = "papi_margin_order"
    SAPI_MARGIN_ORDER = "sapi_margin_order"


_FAPI: Final = (
    "orderId", "symbol", "status", "clientOrderId", "price", "avgPrice", "origQty",
    "executedQty", "cumQuote", "timeInForce", "type", "reduceOnly", "closePosition", "side",
    "positionSide", "stopPrice", "workingType", "origType", "time", "updateTime",
)  # fmt: skip
_DAPI: Final = (
    "orderId", "symbol", "pair", "status", "clientOrderId", "price", "avgPrice", "origQty",
    "executedQty", "cumBase", "timeInForce", "type", "reduceOnly", "closePosition", "side",
    "positionSide", "stopPrice", "workingType", "priceProtect", "origType", "time", "updateTime",
)  # fmt: skip
_NOT_ON_PAPI: Final = frozenset({"closePosition", "stopPrice", "workingType", "priceProtect"})
_PAGE_ROW: Final = (
    "avgPrice", "executedQty", "orderId", "price", "qty", "side", "symbol", "timeInForce",
    "updatedTime",
)  # fmt: skip
_MARGIN_ORDER: Final = (
    "clientOrderId", "cummulativeQuoteQty", "executedQty", "icebergQty", "isWorking", "orderId",
    "origQty", "price", "side", "status", "stopPrice", "symbol", "time", "timeInForce", "type",
    "updateTime", "accountId", "selfTradePreventionMode", "preventedMatchId", "preventedQuantity",
)  # fmt: skip

SHAPES: Final[Mapping[Shape, tuple[str, ...]]] = {
    Shape.FAPI: _FAPI,
    Shape.DAPI: _DAPI,
    # §4.1: the PM endpoints omit closePosition, stopPrice, workingType (and priceProtect).
    Shape.PAPI_UM: tuple(f for f in _FAPI if f not in _NOT_ON_PAPI),
    Shape.PAPI_CM: tuple(f for f in _DAPI if f not in _NOT_ON_PAPI),
    # §4.2: the papi row is the sapi row minus isIsolated.
    Shape.PAPI_MARGIN: _PAGE_ROW,
    Shape.SAPI_MARGIN: (*_PAGE_ROW[:-1], "isIsolated", _PAGE_ROW[-1]),
    # §4.3; the classic-margin lookup adds isIsolated.
    Shape.PAPI_MARGIN_ORDER: _MARGIN_ORDER,
    Shape.SAPI_MARGIN_ORDER: (*_MARGIN_ORDER[:12], "isIsolated", *_MARGIN_ORDER[12:]),
}
"""Field order per shape, as in the documentation's response examples."""

DRIFT_FIELDS: Final[Mapping[Shape, tuple[str, ...]]] = {
    Shape.FAPI: ("pair", "cumBase"),
    Shape.DAPI: ("goodTillDate", "cumQuote"),
}
"""Fields the 2026 connectors added (§4.1 "schema drift"), appended when drift is switched on."""

_STORED_AS: Final = {"qty": "origQty", "updatedTime": "updateTime"}
"""Page-style names (§4.2) of fields stored under their futures names."""

_DECIMAL_FIELDS: Final = frozenset(
    {"price", "avgPrice", "origQty", "executedQty", "cumQuote", "cumBase", "stopPrice",
     "cummulativeQuoteQty", "icebergQty"}
)  # fmt: skip
_INT_FIELDS: Final = frozenset({"orderId", "time", "updateTime", "accountId", "goodTillDate"})
_BOOL_FIELDS: Final = frozenset(
    {"reduceOnly", "closePosition", "priceProtect", "isIsolated", "isWorking"}
)
_TEXT_FIELDS: Final = frozenset(
    {"symbol", "pair", "status", "clientOrderId", "timeInForce", "type", "side", "positionSide",
     "workingType", "origType", "selfTradePreventionMode"}
)  # fmt: skip
_NULLABLE_FIELDS: Final = frozenset({"preventedMatchId", "preventedQuantity"})
SETTABLE_FIELDS: Final = (
    _DECIMAL_FIELDS | _INT_FIELDS | _BOOL_FIELDS | _TEXT_FIELDS | _NULLABLE_FIELDS
    | frozenset(_STORED_AS) | {"autoCloseType"}
)  # fmt: skip
"""Keyword names `build_order` and `update_fields` accept (wire names of any shape)."""

DEFAULT_SYMBOLS: Final[Mapping[Product, tuple[str, ...]]] = {
    Product.UM: ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"),
    Product.CM: ("BTCUSD_PERP", "ETHUSD_PERP", "BNBUSD_PERP", "SOLUSD_PERP"),
    Product.MARGIN_PM: ("BTCUSDT", "ETHUSDT", "BNBUSDT"),
    Product.MARGIN_CLASSIC: ("BTCUSDT", "ETHUSDT", "BNBBTC"),
}
_EIGHT_DP: Final = Decimal("0.00000001")


def decimal_text(value: Decimal | str | int) -> str:
    """A price or quantity as Binance sends it: a plain decimal string. Floats are refused."""
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise TypeError(f"expected Decimal, str or int, got {type(value).__name__}")
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    Decimal(text)  # raises decimal.InvalidOperation for text that is not a number
    return text


def _plain(value: Decimal) -> str:
    """`value` without trailing fractional zeros, never in exponent notation."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _coerce(name: str, value: Any) -> Any:
    if name in _DECIMAL_FIELDS:
        return decimal_text(value)
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        return value
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        return value
    if name in _TEXT_FIELDS:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        return value
    return value  # nullable fields: anything JSON-serialisable


@dataclass(slots=True)
class ForceOrder:
    """One stored force order of one account.

    `fields` holds every wire field in its futures name (`origQty`, `updateTime`); page-style
    shapes rename on the way out. `visible_from_ms` makes a "late row": it exists with its past
    `time` but no endpoint returns it before that server time. `is_queryable=False` makes the
    margin order lookup (§4.3) answer -2013 for it. `extra` is appended to every shape.
    """

    product: Product
    auto_close_type: AutoCloseType
    fields: dict[str, Any]
    visible_from_ms: int | None = None
    is_queryable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def order_id(self) -> int:
        """`orderId`."""
        return int(self.fields["orderId"])

    @property
    def symbol(self) -> str:
        """`symbol`."""
        return str(self.fields["symbol"])

    @property
    def time_ms(self) -> int:
        """`time` (order creation), ms."""
        return int(self.fields["time"])

    @property
    def update_time_ms(self) -> int:
        """`updateTime` (`updatedTime` on page-style rows), ms."""
        return int(self.fields["updateTime"])

    @property
    def is_isolated(self) -> bool:
        """Whether a classic-margin order is on an isolated-margin pair."""
        return bool(self.fields.get("isIsolated", False))

    def is_visible(self, now_ms: int) -> bool:
        """Whether endpoints return this order at server time `now_ms` (see late rows)."""
        return self.visible_from_ms is None or now_ms >= self.visible_from_ms

    def render(self, shape: Shape, *, drift: bool = False) -> dict[str, Any]:
        """The order as `shape`'s endpoint returns it (with 2026 drift fields if `drift`)."""
        names = SHAPES[shape] + (DRIFT_FIELDS.get(shape, ()) if drift else ())
        row = {name: self.fields[_STORED_AS.get(name, name)] for name in names}
        row.update(self.extra)
        return row


def _check_names(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - SETTABLE_FIELDS
    if unknown:
        raise TypeError(
            f"unknown force-order field(s) {sorted(unknown)}; settable: {sorted(SETTABLE_FIELDS)}"
            " (use extra_fields for fields of no documented shape)"
        )


def update_fields(order: ForceOrder, changes: Mapping[str, Any]) -> None:
    """Overwrite the given wire fields of `order` (page-style names map to futures names).

    Derived fields (cumQuote, cumBase, …) are not recomputed; pass them too if they change.
    """
    _check_names(changes)
    for name, value in changes.items():
        if name == "autoCloseType":
            order.auto_close_type = AutoCloseType(value)
            continue
        stored = _STORED_AS.get(name, name)
        order.fields[stored] = _coerce(stored, value)


def build_order(
    product: Product,
    fields: Mapping[str, Any],
    *,
    order_id: int,
    now_ms: int,
    sequence: int,
    account_id: int,
) -> ForceOrder:
    """A complete `ForceOrder` from the fields given (wire names), defaulting the rest.

    Defaults: `order_id`, `time` = `now_ms`, `updateTime` = time + 43, a BTC symbol of the
    product, SELL, FILLED, LIMIT, `executedQty` = `origQty`, `avgPrice` = `price`, cumQuote /
    cumBase / cummulativeQuoteQty computed, and `clientOrderId` by §4.1's conventions:
    `autoclose-<time><sequence:06d>` for LIQUIDATION, `adl_autoclose` for ADL (whose
    `autoCloseType` is inferred from a given `clientOrderId` when not passed).
    """
    _check_names(fields)
    given = {_STORED_AS.get(name, name): value for name, value in fields.items()}
    if "autoCloseType" in given:
        close_type = AutoCloseType(given.pop("autoCloseType"))
    elif str(given.get("clientOrderId", "")).startswith("adl_"):
        close_type = AutoCloseType.ADL
    else:
        close_type = AutoCloseType.LIQUIDATION
    values = {name: _coerce(name, value) for name, value in given.items()}
    symbol = values.setdefault("symbol", DEFAULT_SYMBOLS[product][0])
    time_ms = values.setdefault("time", now_ms)
    values.setdefault("orderId", order_id)
    values.setdefault("updateTime", time_ms + 43)
    is_margin = product.is_margin
    spec = market_spec(symbol, CM if product is Product.CM else UM)
    if is_margin:
        price = Decimal(str(spec.base_price)).quantize(_EIGHT_DP)
        default_qty = "0.01000000"
    else:
        price = Decimal(str(spec.base_price)).quantize(spec.tick_size)
        default_qty = "1" if product is Product.CM else "0.010"
    values.setdefault("price", format(price, "f"))
    values.setdefault("origQty", default_qty)
    values.setdefault("executedQty", values["origQty"])
    values.setdefault("avgPrice", values["price"])
    avg = Decimal(values["avgPrice"])
    executed = Decimal(values["executedQty"])
    contract_size = spec.contract_size or 10
    notional = executed * contract_size if product is Product.CM else avg * executed
    base_qty = executed * contract_size / avg if product is Product.CM and avg else executed
    values.setdefault("cumQuote", _plain(notional))
    values.setdefault("cumBase", format(base_qty.quantize(_EIGHT_DP, ROUND_HALF_UP), "f"))
    values.setdefault("cummulativeQuoteQty", format(notional.quantize(_EIGHT_DP), "f"))
    values.setdefault("pair", pair_of(symbol))
    values.setdefault("status", "FILLED")
    if close_type is AutoCloseType.ADL:
        values.setdefault("clientOrderId", "adl_autoclose")
    else:
        values.setdefault("clientOrderId", f"autoclose-{time_ms}{sequence % 1_000_000:06d}")
    values.setdefault(
        "timeInForce", "GTC" if is_margin or close_type is AutoCloseType.ADL else "IOC"
    )
    values.setdefault("type", "LIMIT")
    values.setdefault("origType", values["type"])
    values.setdefault("side", "SELL")
    values.setdefault("positionSide", "BOTH")
    values.setdefault("reduceOnly", False)
    values.setdefault("closePosition", False)
    values.setdefault("stopPrice", "0.00000000" if is_margin else "0")
    values.setdefault("workingType", "CONTRACT_PRICE")
    values.setdefault("priceProtect", False)
    values.setdefault("goodTillDate", 0)
    values.setdefault("isIsolated", False)
    values.setdefault("icebergQty", "0.00000000")
    values.setdefault("isWorking", True)
    values.setdefault("accountId", account_id)
    values.setdefault("selfTradePreventionMode", "NONE")
    values.setdefault("preventedMatchId", None)
    values.setdefault("preventedQuantity", None)
    return ForceOrder(product, close_type, values)


def generate_fields(
    product: Product,
    n: int,
    start_ms: int,
    end_ms: int,
    seed: int,
    *,
    symbols: Sequence[str] | None = None,
    adl_share: float = 0.1,
    isolated_share: float = 0.0,
) -> list[dict[str, Any]]:
    """`n` plausible force orders of `product` with `time` in [start_ms, end_ms], oldest first.

    Deterministic for a given seed: same arguments, same fields. Order ids are left to the
    caller. Prices sit within ±5% of the symbol's reference price on its tick; `updateTime`
    trails `time` by 5-80 ms.
    """
    if n < 0 or end_ms < start_ms:
        raise ValueError("need n >= 0 and start_ms <= end_ms")
    rng = random.Random(seed)
    pool: Iterable[str] = symbols if symbols is not None else DEFAULT_SYMBOLS[product]
    names = tuple(pool)
    if not names:
        raise ValueError("symbols is empty")
    times = sorted(rng.randint(start_ms, end_ms) for _ in range(n))
    rows = []
    for time_ms in times:
        symbol = rng.choice(names)
        spec = market_spec(symbol, CM if product is Product.CM else UM)
        tick = _EIGHT_DP if product.is_margin else spec.tick_size
        price = Decimal(str(spec.base_price * rng.uniform(0.95, 1.05))).quantize(tick)
        avg = (price * Decimal(str(rng.uniform(1.0, 1.002)))).quantize(tick)
        if product is Product.CM:
            qty = Decimal(rng.randint(1, 200))
        else:
            steps = rng.randint(1, 500)
            step = _EIGHT_DP * 10**5 if product.is_margin else spec.step_size
            qty = step * steps
            if product.is_margin:
                qty = qty.quantize(_EIGHT_DP)
        fields: dict[str, Any] = {
            "symbol": symbol,
            "time": time_ms,
            "updateTime": time_ms + rng.randint(5, 80),
            "price": format(price, "f"),
            "avgPrice": format(avg, "f"),
            "origQty": format(qty, "f"),
            "side": rng.choice(("SELL", "BUY")),
            "autoCloseType": "ADL" if rng.random() < adl_share else "LIQUIDATION",
        }
        if product is Product.MARGIN_CLASSIC:
            fields["isIsolated"] = rng.random() < isolated_share
        rows.append(fields)
    return rows
