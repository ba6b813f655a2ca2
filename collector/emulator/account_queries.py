"""Which stored force orders an account endpoint returns for given parameters, and in what order.

Pure code (no I/O): `account_rest` authenticates and passes in the decoded parameters, the host's
server time and the current `AccountOptions`. Semantics follow docs/binance.md §4.1
(limit-style), §4.2 (page-style) and §4.3 (margin order lookup); bad parameters raise the
`ApiError`s of §5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from collector.emulator.account_auth import (
    either_missing,
    invalid_parameter,
    mandatory_missing,
    order_does_not_exist,
    parse_long,
    span_too_long,
    start_after_end,
)
from collector.emulator.account_options import DAY_MS, AccountOptions, SortOrder, TimeField
from collector.emulator.account_orders import AutoCloseType, ForceOrder, Product, Shape

LIMIT_PARAMS: Final = frozenset({"symbol", "autoCloseType", "startTime", "endTime", "limit"})
"""Parameters of the limit-style endpoints besides recvWindow and timestamp."""
PAGE_PARAMS: Final = frozenset({"startTime", "endTime", "current", "size"})
"""Parameters of /papi/v1/margin/forceOrders; sapi adds isolatedSymbol."""
ORDER_PARAMS: Final = frozenset({"symbol", "orderId", "origClientOrderId"})
"""Parameters of /papi/v1/margin/order; sapi adds isIsolated."""
_AUTO_CLOSE_TYPES: Final = frozenset(t.value for t in AutoCloseType)
_HOUR_MS: Final = 3_600_000


def _check_window(start: int | None, end: int | None, options: AccountOptions) -> None:
    if start is not None and end is not None:
        if start > end:
            raise start_after_end()
        hours = options.max_span_hours
        if hours is not None and end - start > hours * _HOUR_MS:
            raise span_too_long(hours)


def _retention_floor(
    product: Product, now: int, start: int | None, options: AccountOptions
) -> int | None:
    """The oldest `time` still kept, or None; -1130 on an older explicit startTime if asked."""
    if product is Product.UM:
        days = options.um_retention_days
    elif product is Product.CM:
        days = options.cm_retention_days
    else:
        days = options.margin_retention_days
    if days is None:
        return None
    floor = now - days * DAY_MS
    if options.is_retention_error and start is not None and start < floor:
        raise invalid_parameter("startTime")
    return floor


def _is_in_window(value: int, start: int | None, end: int, options: AccountOptions) -> bool:
    if start is not None and (value < start or (value == start and not options.is_start_inclusive)):
        return False
    return value < end or (value == end and options.is_end_inclusive)


def _is_kept(order: ForceOrder, now: int, floor: int | None) -> bool:
    return order.is_visible(now) and (floor is None or order.time_ms >= floor)


def select_limit_style(
    orders: Sequence[ForceOrder],
    params: Mapping[str, str],
    now: int,
    options: AccountOptions,
    *,
    product: Product,
    shape: Shape,
    is_dapi: bool,
) -> list[dict[str, Any]]:
    """§4.1: up to `limit` (default 50, max 100) rows in [startTime, endTime], no cursor.

    Without endTime the window ends now; without startTime it starts 7 days before endTime
    (dapi: `dapi_default_window_days`). Rows are sorted by (`time`, orderId) in
    `futures_sort` order and the first `limit` returned, so a full answer may be truncated
    at either end depending on that order.
    """
    close_type = params.get("autoCloseType")
    if close_type is not None and close_type not in _AUTO_CLOSE_TYPES:
        raise invalid_parameter("autoCloseType")
    start = parse_long(params, "startTime")
    end = parse_long(params, "endTime")
    limit = parse_long(params, "limit")
    if limit is None:
        limit = 50
    elif not 1 <= limit <= 100:
        raise invalid_parameter("limit")
    _check_window(start, end, options)
    floor = _retention_floor(product, now, start, options)
    end_ms = now if end is None else end
    if start is None:
        start = end_ms - (options.dapi_default_window_days if is_dapi else 7) * DAY_MS
    symbol = params.get("symbol")
    is_update_time = options.filter_field is TimeField.UPDATE_TIME
    rows = [
        order
        for order in orders
        if _is_kept(order, now, floor)
        and symbol in (None, order.symbol)
        and close_type in (None, order.auto_close_type)
        and _is_in_window(
            order.update_time_ms if is_update_time else order.time_ms, start, end_ms, options
        )
    ]
    is_descending = options.futures_sort is SortOrder.DESC
    rows.sort(key=lambda o: (o.time_ms, o.order_id), reverse=is_descending)
    return [order.render(shape, drift=options.has_schema_drift) for order in rows[:limit]]


def _is_margin_account_match(
    order: ForceOrder, isolated: str | None, options: AccountOptions
) -> bool:
    """sapi: with `isolatedSymbol`, that isolated pair's rows; without, cross-margin rows
    (or every row when `is_isolated_symbol_required` is off)."""
    if isolated is not None:
        return order.is_isolated and order.symbol == isolated
    return not (order.is_isolated and options.is_isolated_symbol_required)


def select_page(
    orders: Sequence[ForceOrder],
    params: Mapping[str, str],
    now: int,
    options: AccountOptions,
    *,
    product: Product,
    shape: Shape,
    is_sapi: bool,
) -> dict[str, Any]:
    """§4.2: page `current` (from 1) of `size` (default 10, max 100) rows, and the `total`.

    The window filters on `updatedTime`; without startTime it is open to the past, without
    endTime it ends now. sapi sorts by `sapi_sort` and honours `isolatedSymbol`; papi sorts by
    `papi_margin_sort`.
    """
    start = parse_long(params, "startTime")
    end = parse_long(params, "endTime")
    current = parse_long(params, "current")
    size = parse_long(params, "size")
    current = 1 if current is None else current
    size = 10 if size is None else size
    if current < 1:
        raise invalid_parameter("current")
    if not 1 <= size <= 100:
        raise invalid_parameter("size")
    _check_window(start, end, options)
    floor = _retention_floor(product, now, start, options)
    end_ms = now if end is None else end
    isolated = params.get("isolatedSymbol")
    rows = [
        order
        for order in orders
        if _is_kept(order, now, floor)
        and _is_in_window(order.update_time_ms, start, end_ms, options)
        and (not is_sapi or _is_margin_account_match(order, isolated, options))
    ]
    order_by = options.sapi_sort if is_sapi else options.papi_margin_sort
    rows.sort(key=lambda o: (o.update_time_ms, o.order_id), reverse=order_by is SortOrder.DESC)
    page = rows[(current - 1) * size : current * size]
    return {"rows": [order.render(shape) for order in page], "total": len(rows)}


def find_margin_order(
    orders: Sequence[ForceOrder],
    params: Mapping[str, str],
    now: int,
    *,
    shape: Shape,
    is_sapi: bool,
) -> dict[str, Any]:
    """§4.3: one margin order by `symbol` and `orderId` (else `origClientOrderId`).

    -1102 without symbol or without both ids; -2013 when nothing matches, including orders
    stored with `is_queryable=False` and (sapi) an isolated order looked up without
    `isIsolated=TRUE`.
    """
    symbol = params.get("symbol")
    if symbol is None:
        raise mandatory_missing("symbol")
    order_id = parse_long(params, "orderId")
    client_id = params.get("origClientOrderId")
    if order_id is None and client_id is None:
        raise either_missing("orderId", "origClientOrderId")
    flag = params.get("isIsolated", "FALSE")
    if flag not in ("TRUE", "FALSE"):
        raise invalid_parameter("isIsolated")
    for order in orders:
        if (
            order.symbol == symbol
            and order.is_queryable
            and order.is_visible(now)
            and (order.order_id == order_id if order_id is not None
                 else order.fields["clientOrderId"] == client_id)
            and (not is_sapi or order.is_isolated == (flag == "TRUE"))
        ):  # fmt: skip
            return order.render(shape)
    raise order_does_not_exist()
