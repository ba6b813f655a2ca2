"""Parsing every endpoint's documented example into exact rows, plus windows and scopes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from collector.config import AccountConfig, Secret
from collector.exceptions import MalformedPayload
from collector.rest.endpoints import (
    DAPI_FORCE_ORDERS,
    FAPI_FORCE_ORDERS,
    PAPI_CM_FORCE_ORDERS,
    PAPI_MARGIN_FORCE_ORDERS,
    SAPI_FORCE_LIQUIDATION_REC,
    Scope,
    depth_days,
    scopes_for,
)
from collector.rest.parse import (
    AccountForceOrder,
    parse_margin_order,
    parse_rows,
    quote_asset,
)
from collector.rest.windows import next_window, split_window

FAPI_EXAMPLE: list[dict[str, Any]] = [
    {"orderId": 6071832819, "symbol": "BTCUSDT", "status": "FILLED",
     "clientOrderId": "autoclose-1596107620040000020", "price": "10871.09",
     "avgPrice": "10913.21000", "origQty": "0.001", "executedQty": "0.001",
     "cumQuote": "10.91321", "timeInForce": "IOC", "type": "LIMIT", "reduceOnly": False,
     "closePosition": False, "side": "SELL", "positionSide": "BOTH", "stopPrice": "0",
     "workingType": "CONTRACT_PRICE", "origType": "LIMIT", "time": 1596107620044,
     "updateTime": 1596107620087},
]  # fmt: skip
DAPI_ROW: dict[str, Any] = {
    "orderId": 165123080, "symbol": "BTCUSD_200925", "pair": "BTCUSD", "status": "FILLED",
    "clientOrderId": "autoclose-1596542005017000006", "price": "11326.9", "avgPrice": "11326.9",
    "origQty": "1", "executedQty": "1", "cumBase": "0.00882854", "timeInForce": "IOC",
    "type": "LIMIT", "reduceOnly": False, "closePosition": False, "side": "SELL",
    "positionSide": "BOTH", "stopPrice": "0", "workingType": "CONTRACT_PRICE",
    "priceProtect": False, "origType": "LIMIT", "time": 1596542005019,
    "updateTime": 1596542005050,
}  # fmt: skip
SAPI_EXAMPLE: dict[str, Any] = {
    "rows": [{"avgPrice": "0.00388359", "executedQty": "31.39000000", "orderId": 180015097,
              "price": "0.00388110", "qty": "31.39000000", "side": "SELL", "symbol": "BNBBTC",
              "timeInForce": "GTC", "isIsolated": True, "updatedTime": 1558941374745}],
    "total": 1,
}  # fmt: skip
ORDER_EXAMPLE: dict[str, Any] = {
    "clientOrderId": "ZwfQzuDIGpceVhKW5DvCmO", "cummulativeQuoteQty": "0.00000000",
    "executedQty": "0.00000000", "icebergQty": "0.00000000", "isWorking": True,
    "orderId": 213205622, "origQty": "0.30000000", "price": "0.00493630", "side": "SELL",
    "status": "NEW", "stopPrice": "0.00000000", "symbol": "BNBBTC", "time": 1562133008725,
    "timeInForce": "GTC", "type": "LIMIT", "updateTime": 1562133008725,
    "accountId": 152950866, "selfTradePreventionMode": "EXPIRE_TAKER",
    "preventedMatchId": None, "preventedQuantity": None,
}  # fmt: skip


def _ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _account(kind: str, **kw: Any) -> AccountConfig:
    return AccountConfig("a", kind, Secret("k"), Secret("s"), **kw)


def test_fapi_example_parses_exactly() -> None:
    """The /fapi/v1/forceOrders example becomes one exact UM row with cumQuote as notional."""
    scope = Scope(FAPI_FORCE_ORDERS, "LIQUIDATION", (), "LIQUIDATION")
    page = parse_rows(FAPI_EXAMPLE, "acct", scope)
    assert page.bad == []
    assert page.received == 1
    assert page.orders == [
        AccountForceOrder(
            account="acct", product="um", symbol="BTCUSDT", order_id=6071832819,
            endpoint="/fapi/v1/forceOrders", auto_close_type="LIQUIDATION", side="SELL",
            position_side="BOTH", status="FILLED", order_type="LIMIT", orig_type="LIMIT",
            time_in_force="IOC", client_order_id="autoclose-1596107620040000020",
            price=Decimal("10871.09"), avg_price=Decimal("10913.21000"),
            orig_qty=Decimal("0.001"), executed_qty=Decimal("0.001"),
            cum_quote=Decimal("10.91321"), cum_base=None, pair=None, is_isolated=None,
            order_time=_ms(1596107620044), update_time=_ms(1596107620087),
            notional=Decimal("10.91321"), notional_asset="USDT", raw=FAPI_EXAMPLE[0],
        )
    ]  # fmt: skip


@pytest.mark.parametrize("spec", [DAPI_FORCE_ORDERS, PAPI_CM_FORCE_ORDERS])
def test_coinm_rows_keep_pair_and_cumbase_and_leave_notional_to_the_store(spec: Any) -> None:
    """COIN-M rows carry pair and cumBase; notional waits for the contract size."""
    page = parse_rows([DAPI_ROW], "acct", Scope(spec, "ADL", (), "ADL"))
    (row,) = page.orders
    assert (row.product, row.endpoint, row.auto_close_type) == ("cm", spec.path, "ADL")
    assert (row.pair, row.cum_base, row.cum_quote) == ("BTCUSD", Decimal("0.00882854"), None)
    assert (row.notional, row.notional_asset) == (None, "USD")


@pytest.mark.parametrize("spec", [SAPI_FORCE_LIQUIDATION_REC, PAPI_MARGIN_FORCE_ORDERS])
def test_margin_example_parses_exactly(spec: Any) -> None:
    """The margin example maps qty/updatedTime and computes executed x average as notional."""
    page = parse_rows(SAPI_EXAMPLE, "acct", Scope(spec, "cross", (), "LIQUIDATION"))
    assert page.total == 1
    assert page.orders == [
        AccountForceOrder(
            account="acct", product="margin", symbol="BNBBTC", order_id=180015097,
            endpoint=spec.path, auto_close_type="LIQUIDATION", side="SELL",
            position_side=None, status=None, order_type=None, orig_type=None,
            time_in_force="GTC", client_order_id=None, price=Decimal("0.00388110"),
            avg_price=Decimal("0.00388359"), orig_qty=Decimal("31.39000000"),
            executed_qty=Decimal("31.39000000"), cum_quote=None, cum_base=None, pair=None,
            is_isolated=True, order_time=_ms(1558941374745), update_time=_ms(1558941374745),
            notional=Decimal("31.39000000") * Decimal("0.00388359"), notional_asset="BTC",
            raw=SAPI_EXAMPLE["rows"][0],
        )
    ]  # fmt: skip


def test_margin_order_example_parses() -> None:
    """The margin order lookup yields time, type, client id and status."""
    enrichment = parse_margin_order(ORDER_EXAMPLE)
    assert (enrichment.order_time, enrichment.order_type, enrichment.client_order_id,
            enrichment.status) == (_ms(1562133008725), "LIMIT", "ZwfQzuDIGpceVhKW5DvCmO",
                                   "NEW")  # fmt: skip


def test_bad_rows_are_set_aside_and_good_rows_kept() -> None:
    """A row with a float-unsafe price string is reported; its neighbour is kept."""
    bad = dict(FAPI_EXAMPLE[0], orderId=1, price="abc")
    page = parse_rows([bad, FAPI_EXAMPLE[0]], "a", Scope(FAPI_FORCE_ORDERS, "ADL", (), "ADL"))
    assert [o.order_id for o in page.orders] == [6071832819]
    assert page.bad == [(bad, "not a decimal: 'abc' (field 'price')")]
    assert page.received == 2


def test_a_number_postgres_cannot_store_sets_the_row_aside() -> None:
    """A price beyond Postgres numeric's 131072 integer digits is a bad row, not a 0 stored."""
    huge = dict(FAPI_EXAMPLE[0], orderId=2, price="1E+140000")
    page = parse_rows([huge, FAPI_EXAMPLE[0]], "a", Scope(FAPI_FORCE_ORDERS, "ADL", (), "ADL"))
    assert [o.order_id for o in page.orders] == [FAPI_EXAMPLE[0]["orderId"]]
    assert page.bad == [(huge, "decimal out of range: '1E+140000' (field 'price')")]


def test_wrong_shape_raises() -> None:
    """A page-style endpoint answering with a list is malformed."""
    with pytest.raises(MalformedPayload):
        parse_rows([], "a", Scope(SAPI_FORCE_LIQUIDATION_REC, "cross", (), "LIQUIDATION"))


def test_quote_asset_guesses() -> None:
    """Quote assets come from the symbol's suffix, delivery suffixes ignored."""
    assert [quote_asset(s) for s in ("BTCUSDT", "ETHUSD_240628", "BNBBTC", "X")] == [
        "USDT", "USD", "BTC", None,
    ]  # fmt: skip


def test_split_window_overlaps_one_millisecond() -> None:
    """Bisection shares the midpoint so both bound readings cover every millisecond."""
    assert split_window((0, 100)) == ((0, 51), (50, 100))
    assert split_window((10, 11)) is None


def test_split_window_never_returns_the_window_itself() -> None:
    """A 2 ms window is unsplittable (its first half would be itself); 3 ms still splits."""
    assert split_window((0, 2)) is None
    assert split_window((0, 3)) == ((0, 2), (1, 3))


def test_next_window_caps_span_and_stops_at_now() -> None:
    """Windows are at most max span wide and stop at now."""
    assert next_window(0, 1000, 300) == (0, 300)
    assert next_window(900, 1000, 300) == (900, 1000)
    assert next_window(1000, 1000, 300) is None


def test_scopes_per_account_kind() -> None:
    """Classic accounts poll fapi/dapi per type, sapi cross and isolated; PM polls papi."""
    classic = _account("classic", isolated_symbols=("BTCUSDT",))
    assert [(s.spec.path, s.name, s.params) for s in scopes_for(classic)] == [
        ("/fapi/v1/forceOrders", "LIQUIDATION", (("autoCloseType", "LIQUIDATION"),)),
        ("/fapi/v1/forceOrders", "ADL", (("autoCloseType", "ADL"),)),
        ("/dapi/v1/forceOrders", "LIQUIDATION", (("autoCloseType", "LIQUIDATION"),)),
        ("/dapi/v1/forceOrders", "ADL", (("autoCloseType", "ADL"),)),
        ("/sapi/v1/margin/forceLiquidationRec", "cross", ()),
        ("/sapi/v1/margin/forceLiquidationRec", "isolated:BTCUSDT",
         (("isolatedSymbol", "BTCUSDT"),)),
    ]  # fmt: skip
    pm = _account("portfolio_margin", products=("um", "margin"))
    assert [(s.spec.path, s.name) for s in scopes_for(pm)] == [
        ("/papi/v1/um/forceOrders", "LIQUIDATION"),
        ("/papi/v1/um/forceOrders", "ADL"),
        ("/papi/v1/margin/forceOrders", "all"),
    ]


def test_depth_never_exceeds_documented_retention() -> None:
    """COIN-M depth is capped at 90 days; UM follows the configuration."""
    assert depth_days(DAPI_FORCE_ORDERS, 365.0) == 90.0
    assert depth_days(DAPI_FORCE_ORDERS, None) == 90.0
    assert depth_days(FAPI_FORCE_ORDERS, 365.0) == 365.0
    assert depth_days(FAPI_FORCE_ORDERS, 2.0) == 2.0
