"""Bybit frames and instruments-info pages to normalised liquidations (docs/bybit.md), exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from collector.exceptions import MalformedPayload
from collector.sources.bybit_parse import (
    BybitInstrument,
    BybitReply,
    InstrumentsPage,
    parse_frame,
    parse_instruments_page,
    plan_subscriptions,
)
from collector.venues import LiquidatedSide, Venue, VenueApiError, VenueLiquidation, content_key

RECEIVED = datetime(2025, 2, 14, 3, 5, 3, tzinfo=UTC)
# The response example of https://bybit-exchange.github.io/docs/v5/websocket/public/all-liquidation
DOC_FRAME = (
    '{"topic":"allLiquidation.ROSEUSDT","type":"snapshot","ts":1739502303204,'
    '"data":[{"T":1739502302929,"s":"ROSEUSDT","S":"Sell","v":"20000","p":"0.04499"}]}'
)
ROSE = BybitInstrument("linear", "ROSEUSDT", "LinearPerpetual", "Trading", "ROSE", "USDT", "USDT")


def test_documented_push_is_one_exact_row() -> None:
    """The docs' example push becomes one row with every field exact and the wire kept."""
    rows = parse_frame(
        DOC_FRAME, category="linear", received_at=RECEIVED, instruments={"ROSEUSDT": ROSE}
    )
    assert rows == [
        VenueLiquidation(
            venue=Venue.BYBIT,
            market="linear",
            symbol="ROSEUSDT",
            base_asset="ROSE",
            liquidated_side=LiquidatedSide.SHORT,
            price=Decimal("0.04499"),
            qty=Decimal("20000"),
            notional_usd=Decimal("899.80000"),
            trade_time=datetime(2025, 2, 14, 3, 5, 2, 929000, tzinfo=UTC),
            received_at=RECEIVED,
            content_key=content_key(
                Venue.BYBIT, "ROSEUSDT", 1739502302929, "Sell", Decimal(20000), Decimal("0.04499")
            ),
            wire=(
                ("topic", "allLiquidation.ROSEUSDT"),
                ("type", "snapshot"),
                ("ts", "1739502303204"),
                ("T", "1739502302929"),
                ("s", "ROSEUSDT"),
                ("S", "Sell"),
                ("v", "20000"),
                ("p", "0.04499"),
            ),
            raw=DOC_FRAME,
            source="ws",
        )
    ]


def frame(*items: dict[str, object], symbol: str = "BTCUSD") -> str:
    return orjson.dumps(
        {"topic": f"allLiquidation.{symbol}", "type": "snapshot", "ts": 1, "data": list(items)}
    ).decode()


def test_buy_means_a_long_was_liquidated() -> None:
    """`S`=Buy is a liquidated long, as the docs say (the reverse of Binance's order side)."""
    item = {"T": 1739502302929, "s": "BTCUSDT", "S": "Buy", "v": "0.5", "p": "60000.1"}
    [row] = parse_frame(frame(item, symbol="BTCUSDT"), category="linear", received_at=RECEIVED)
    assert row.liquidated_side is LiquidatedSide.LONG
    assert row.base_asset is None  # no instrument terms given


def test_inverse_size_is_usd_notional_and_no_base_qty() -> None:
    """An inverse size is USD: it is the notional, and the base quantity stays None."""
    item = {"T": 1739502302929, "s": "BTCUSD", "S": "Sell", "v": "12345", "p": "97000.5"}
    [row] = parse_frame(frame(item), category="inverse", received_at=RECEIVED)
    assert (row.notional_usd, row.qty, row.price) == (Decimal(12345), None, Decimal("97000.5"))


def test_batch_keeps_order_and_decimal_exactness() -> None:
    """A batch gives one row per item in order, with exact decimal products."""
    items = [
        {"T": 10, "s": "ETHUSDT", "S": "Buy", "v": "0.10", "p": "3333.33"},
        {"T": 11, "s": "ETHUSDT", "S": "Sell", "v": "0.3", "p": "0.1"},
    ]
    rows = parse_frame(frame(*items, symbol="ETHUSDT"), category="linear", received_at=RECEIVED)
    assert [r.notional_usd for r in rows] == [Decimal("333.3330"), Decimal("0.03")]
    assert [r.wire_field("v") for r in rows] == ["0.10", "0.3"]


def test_key_ignores_push_time_and_decimal_spelling() -> None:
    """The same liquidation re-pushed later, spelled "0.50", has the same content key."""
    item = {"T": 7, "s": "BTCUSDT", "S": "Buy", "v": "0.5", "p": "60000"}
    again = {"T": 7, "s": "BTCUSDT", "S": "Buy", "v": "0.50", "p": "60000.0"}
    first = parse_frame(frame(item, symbol="BTCUSDT"), category="linear", received_at=RECEIVED)
    text = frame(again, symbol="BTCUSDT").replace('"ts":1', '"ts":99')
    second = parse_frame(text, category="linear", received_at=RECEIVED)
    assert first[0].content_key == second[0].content_key


def test_op_replies_are_decoded() -> None:
    """Subscribe and ping replies (the linear/inverse shapes) decode to BybitReply."""
    pong = '{"success":true,"ret_msg":"pong","conn_id":"465772b1","req_id":"","op":"ping"}'
    failed = '{"success":false,"ret_msg":"Invalid symbol :[allLiquidation.X]","op":"subscribe"}'
    assert parse_frame(pong, category="linear", received_at=RECEIVED) == BybitReply(
        "ping", True, "pong", "", "465772b1"
    )
    assert parse_frame(failed, category="inverse", received_at=RECEIVED) == BybitReply(
        "subscribe", False, "Invalid symbol :[allLiquidation.X]", None, None
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", None),
        ("[1]", None),
        ('{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1,"data":[]}', "topic"),
        ('{"topic":"allLiquidation.BTCUSD","type":"snapshot","ts":1,"data":"x"}', "data"),
        (frame({"T": 1, "s": "BTCUSD", "S": "Up", "v": "1", "p": "1"}), "data.S"),
        (frame({"T": 1, "s": "BTCUSD", "S": "Buy", "v": 1.5, "p": "1"}), "data.v"),
        (frame({"T": 1, "s": "BTCUSD", "S": "Buy", "v": "0", "p": "1"}), "data.v"),
        (frame({"T": "1", "s": "BTCUSD", "S": "Buy", "v": "1", "p": "1"}), "data.T"),
        (frame({"T": 1, "s": "ETHUSD", "S": "Buy", "v": "1", "p": "1"}), "data.s"),
        (frame({"T": 1, "s": "BTCUSD", "S": "Buy", "v": "1", "p": "NaN"}), "data.p"),
    ],
)
def test_malformed_frames_are_rejected_naming_the_field(text: str, field: str | None) -> None:
    """Malformed frames raise MalformedPayload naming the bad field, never another error."""
    with pytest.raises(MalformedPayload) as caught:
        parse_frame(text, category="inverse", received_at=RECEIVED)
    assert caught.value.field == field


def test_instruments_page_and_error() -> None:
    """An instruments-info page decodes with its cursor; a retCode error raises VenueApiError."""
    body = orjson.dumps(
        {
            "retCode": 0,
            "retMsg": "OK",
            "result": {
                "category": "linear",
                "list": [
                    {
                        "symbol": "BTCUSDT",
                        "contractType": "LinearPerpetual",
                        "status": "Trading",
                        "baseCoin": "BTC",
                        "quoteCoin": "USDT",
                        "settleCoin": "USDT",
                    }
                ],
                "nextPageCursor": "abc",
            },
        }
    )
    assert parse_instruments_page(body, category="linear") == InstrumentsPage(
        "linear",
        (
            BybitInstrument(
                "linear", "BTCUSDT", "LinearPerpetual", "Trading", "BTC", "USDT", "USDT"
            ),
        ),
        "abc",
    )
    with pytest.raises(VenueApiError) as caught:
        parse_instruments_page(b'{"retCode":10001,"retMsg":"params error"}', category="linear")
    assert (caught.value.code, caught.value.msg) == ("10001", "params error")


def test_plan_keeps_each_connection_within_the_args_limit() -> None:
    """Topics are split so each group's JSON args array fits in the character limit."""
    symbols = [f"SYM{i:04d}USDT" for i in range(2000)]
    groups = plan_subscriptions(symbols)
    assert [t for g in groups for t in g] == [f"allLiquidation.{s}" for s in symbols]
    assert all(len(orjson.dumps(g)) <= 21_000 for g in groups)
    assert len(orjson.dumps(groups[0] + [groups[1][0]])) > 21_000
    assert plan_subscriptions(["BTCUSDT"], max_args_chars=100) == [["allLiquidation.BTCUSDT"]]
