"""Pure parsing of account force-order rows (docs/binance.md §4) into `AccountForceOrder`.

No I/O, logging or metrics. Every number is a `Decimal` from the wire string; every time a
tz-aware UTC datetime. Unknown fields are ignored (kept in `raw`); missing optional ones are None.
Bad input raises `MalformedPayload(field=...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from collector import wire
from collector.exceptions import MalformedPayload
from collector.rest.endpoints import Paging, Scope

# Quote assets tried, longest first, to name the asset of a notional (`notional_asset`).
_QUOTES = (
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "USD", "BTC", "ETH", "BNB", "EUR",
    "TRY", "BRL", "JPY", "GBP", "AUD", "BIDR", "IDRT", "UAH", "RUB", "ZAR", "PLN", "RON", "ARS",
    "MXN", "COP", "CZK", "XRP", "DOGE", "TRX", "DOT",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AccountForceOrder:
    """One force order of one account, as the `account_force_orders` table stores it."""

    account: str
    product: str  # um | cm | margin
    symbol: str
    order_id: int
    endpoint: str
    auto_close_type: str  # LIQUIDATION | ADL
    side: str | None
    position_side: str | None
    status: str | None
    order_type: str | None
    orig_type: str | None
    time_in_force: str | None
    client_order_id: str | None
    price: Decimal | None
    avg_price: Decimal | None
    orig_qty: Decimal | None
    executed_qty: Decimal | None
    cum_quote: Decimal | None
    cum_base: Decimal | None
    pair: str | None
    is_isolated: bool | None
    order_time: datetime | None
    update_time: datetime | None
    notional: Decimal | None
    notional_asset: str | None
    raw: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str, str, int]:
        """The natural key: order ids are unique per symbol only."""
        return (self.account, self.product, self.symbol, self.order_id)


def time_field(row: Mapping[str, Any], field: str) -> datetime | None:
    """`row[field]`, epoch milliseconds (an integer, or digits in a string), as an exact UTC
    datetime (`wire.millis`); None when absent."""
    value = row.get(field)
    if value is None:
        return None
    if type(value) is str and value.isdigit():
        value = int(value)
    return wire.millis(value, field)


def decimal_field(row: Mapping[str, Any], field: str) -> Decimal | None:
    """`row[field]` as an exact Decimal (decimal strings on the wire); None when absent."""
    value = row.get(field)
    return None if value is None else wire.decimal(value, field)


def _str(row: Mapping[str, Any], field: str) -> str | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPayload("expected a string", field=field)
    return value


def _bool(row: Mapping[str, Any], field: str) -> bool | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise MalformedPayload("expected true or false", field=field)
    return value


def _order_id(row: Mapping[str, Any]) -> int:
    value = row.get("orderId")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedPayload("expected an integer order id", field="orderId")
    try:
        return int(value)
    except ValueError:
        raise MalformedPayload("expected an integer order id", field="orderId") from None


def _symbol(row: Mapping[str, Any]) -> str:
    symbol = row.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise MalformedPayload("expected a symbol", field="symbol")
    return symbol


def quote_asset(symbol: str) -> str | None:
    """The quote asset a symbol ends with (`BTCUSDT` -> `USDT`; delivery suffixes ignored)."""
    base = symbol.split("_", 1)[0]
    for quote in _QUOTES:
        if base.endswith(quote) and len(base) > len(quote):
            return quote
    return None


def _product_of(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return a * b if a is not None and b is not None else None


def parse_futures_row(row: Mapping[str, Any], account: str, scope: Scope) -> AccountForceOrder:
    """A row of `/fapi|dapi/v1/forceOrders` or `/papi/v1/um|cm/forceOrders` (§4.1).

    `auto_close_type` is the type the row was queried with (rows do not carry it). UM notional is
    `cumQuote` (or executed x average price) in the quote asset; COIN-M notional needs the
    contract size, so it is left None here and filled from the `symbols` table on write.
    """
    if not isinstance(row, Mapping):
        raise MalformedPayload("expected an object per force order")
    product = scope.spec.product
    symbol = _symbol(row)
    executed = decimal_field(row, "executedQty")
    avg = decimal_field(row, "avgPrice")
    cum_quote = decimal_field(row, "cumQuote")
    notional: Decimal | None
    if product == "um":
        notional = cum_quote if cum_quote else _product_of(executed, avg)
        asset = quote_asset(symbol)
    else:
        notional, asset = None, "USD"
    return AccountForceOrder(
        account=account,
        product=product,
        symbol=symbol,
        order_id=_order_id(row),
        endpoint=scope.spec.path,
        auto_close_type=scope.auto_close_type,
        side=_str(row, "side"),
        position_side=_str(row, "positionSide"),
        status=_str(row, "status"),
        order_type=_str(row, "type"),
        orig_type=_str(row, "origType"),
        time_in_force=_str(row, "timeInForce"),
        client_order_id=_str(row, "clientOrderId"),
        price=decimal_field(row, "price"),
        avg_price=avg,
        orig_qty=decimal_field(row, "origQty"),
        executed_qty=executed,
        cum_quote=cum_quote,
        cum_base=decimal_field(row, "cumBase"),
        pair=_str(row, "pair"),
        is_isolated=None,
        order_time=time_field(row, "time"),
        update_time=time_field(row, "updateTime"),
        notional=notional,
        notional_asset=asset,
        raw=row,
    )


def parse_margin_row(row: Mapping[str, Any], account: str, scope: Scope) -> AccountForceOrder:
    """A row of `/papi/v1/margin/forceOrders` or `/sapi/v1/margin/forceLiquidationRec` (§4.2).

    These rows have `qty` and `updatedTime` and no type, client id, status or order time:
    `updatedTime` stands in for both times until the order lookup supplies `time`.
    """
    if not isinstance(row, Mapping):
        raise MalformedPayload("expected an object per force order")
    symbol = _symbol(row)
    executed = decimal_field(row, "executedQty")
    avg = decimal_field(row, "avgPrice")
    updated = time_field(row, "updatedTime")
    is_isolated = _bool(row, "isIsolated")
    if is_isolated is None and scope.name.startswith("isolated:"):
        is_isolated = True
    return AccountForceOrder(
        account=account,
        product="margin",
        symbol=symbol,
        order_id=_order_id(row),
        endpoint=scope.spec.path,
        auto_close_type=scope.auto_close_type,
        side=_str(row, "side"),
        position_side=None,
        status=None,
        order_type=None,
        orig_type=None,
        time_in_force=_str(row, "timeInForce"),
        client_order_id=None,
        price=decimal_field(row, "price"),
        avg_price=avg,
        orig_qty=decimal_field(row, "qty"),
        executed_qty=executed,
        cum_quote=None,
        cum_base=None,
        pair=None,
        is_isolated=is_isolated,
        order_time=updated,
        update_time=updated,
        notional=_product_of(executed, avg),
        notional_asset=quote_asset(symbol),
        raw=row,
    )


@dataclass(frozen=True, slots=True)
class ParsedPage:
    """One response: the orders, the rows that did not parse (with why), and `total`
    (page-style endpoints; for limit-style ones the number of rows received)."""

    orders: list[AccountForceOrder]
    bad: list[tuple[Any, str]]
    received: int
    total: int


def parse_rows(payload: Any, account: str, scope: Scope) -> ParsedPage:
    """Parse one response of `scope`'s endpoint. A malformed row is set aside in `bad`
    (the rest are kept); a response of the wrong shape raises `MalformedPayload`."""
    if scope.spec.paging is Paging.LIMIT:
        if not isinstance(payload, list):
            raise MalformedPayload("expected a JSON array of force orders")
        raw_rows: list[Any] = payload
        total = len(payload)
        parse = parse_futures_row
    else:
        if not isinstance(payload, Mapping):
            raise MalformedPayload("expected an object with rows and total")
        raw_rows = payload.get("rows") or []
        if not isinstance(raw_rows, list):
            raise MalformedPayload("expected a list", field="rows")
        total = payload.get("total", len(raw_rows))
        if isinstance(total, bool) or not isinstance(total, int):
            raise MalformedPayload("expected an integer", field="total")
        parse = parse_margin_row
    orders: list[AccountForceOrder] = []
    bad: list[tuple[Any, str]] = []
    for raw in raw_rows:
        try:
            orders.append(parse(raw, account, scope))
        except MalformedPayload as exc:
            bad.append((raw, str(exc)))
    return ParsedPage(orders, bad, len(raw_rows), total)


@dataclass(frozen=True, slots=True)
class Enrichment:
    """What the margin order lookup (§4.3) adds to a margin force order."""

    order_time: datetime | None
    order_type: str | None
    client_order_id: str | None
    status: str | None
    time_in_force: str | None
    raw: Mapping[str, Any]


def parse_margin_order(payload: Any) -> Enrichment:
    """The response of `GET /papi|sapi/v1/margin/order`."""
    if not isinstance(payload, Mapping):
        raise MalformedPayload("expected an order object")
    return Enrichment(
        order_time=time_field(payload, "time"),
        order_type=_str(payload, "type"),
        client_order_id=_str(payload, "clientOrderId"),
        status=_str(payload, "status"),
        time_in_force=_str(payload, "timeInForce"),
        raw=payload,
    )
