"""OKX frames and REST bodies to normalised liquidations (docs/okx.md), exactly; REST rows
and stream rows of one liquidation share a content key."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from collector.exceptions import MalformedPayload
from collector.sources.okx_parse import (
    OkxEvent,
    OkxInstrument,
    OkxPong,
    liquidated_side,
    parse_frame,
    parse_instruments,
    parse_liquidation_orders,
)
from collector.venues import LiquidatedSide, Venue, VenueApiError, VenueLiquidation, content_key

RECEIVED = datetime(2023, 8, 17, 10, 0, 35, tzinfo=UTC)
# The response example of https://www.okx.com/docs-v5/en/#public-data-websocket-liquidation-orders-channel
DOC_FRAME = (
    '{"arg":{"channel":"liquidation-orders","instType":"SWAP"},"data":[{"details":[{"bkLoss":"0",'
    '"bkPx":"0.007831","ccy":"","posSide":"short","side":"buy","sz":"13","ts":"1692266434010"}],'
    '"instFamily":"IOST-USDT","instId":"IOST-USDT-SWAP","instType":"SWAP","uly":"IOST-USDT"}]}'
)
IOST = OkxInstrument(
    "SWAP", "IOST-USDT-SWAP", "IOST-USDT", "IOST", "USDT", "USDT", "linear",
    Decimal(1000), Decimal(1), "IOST",
)  # fmt: skip
BTC_USD = OkxInstrument(
    "SWAP", "BTC-USD-SWAP", "BTC-USD", "BTC", "USD", "BTC", "inverse",
    Decimal(100), Decimal(1), "USD",
)  # fmt: skip
MARGIN = OkxInstrument("MARGIN", "BTC-USDT", "", "BTC", "USDT", "", "", None, None, "")


def test_documented_push_is_one_exact_row() -> None:
    """The docs' example push becomes one row: 13 contracts of 1000 IOST at 0.007831."""
    rows = parse_frame(DOC_FRAME, received_at=RECEIVED, instruments={IOST.inst_id: IOST})
    assert rows == [
        VenueLiquidation(
            venue=Venue.OKX,
            market="SWAP",
            symbol="IOST-USDT-SWAP",
            base_asset="IOST",
            liquidated_side=LiquidatedSide.SHORT,
            price=Decimal("0.007831"),
            qty=Decimal(13000),
            notional_usd=Decimal("101.803000"),
            trade_time=datetime(2023, 8, 17, 10, 0, 34, 10000, tzinfo=UTC),
            received_at=RECEIVED,
            content_key=content_key(
                Venue.OKX,
                "IOST-USDT-SWAP",
                1692266434010,
                "buy",
                "short",
                Decimal(13),
                Decimal("0.007831"),
            ),
            wire=(
                ("instId", "IOST-USDT-SWAP"),
                ("instFamily", "IOST-USDT"),
                ("instType", "SWAP"),
                ("uly", "IOST-USDT"),
                ("side", "buy"),
                ("posSide", "short"),
                ("bkPx", "0.007831"),
                ("sz", "13"),
                ("bkLoss", "0"),
                ("ccy", ""),
                ("ts", "1692266434010"),
            ),
            raw=DOC_FRAME,
            source="ws",
        )
    ]


def test_unknown_contract_terms_leave_qty_and_notional_unknown() -> None:
    """Without the instrument's ctVal the contract count cannot become base or USD amounts."""
    [row] = parse_frame(DOC_FRAME, received_at=RECEIVED)
    assert (row.qty, row.notional_usd, row.base_asset) == (None, None, "IOST")


@pytest.mark.parametrize(
    ("side", "pos_side", "expected"),
    [
        ("sell", "long", LiquidatedSide.LONG),
        ("buy", "short", LiquidatedSide.SHORT),
        ("sell", "net", LiquidatedSide.LONG),
        ("buy", "net", LiquidatedSide.SHORT),
        ("", "long", LiquidatedSide.LONG),
        ("", "net", None),
        ("", "", None),
    ],
)
def test_side_mapping(side: str, pos_side: str, expected: LiquidatedSide | None) -> None:
    """posSide names the position in hedge mode; in net mode the order side closes it."""
    assert liquidated_side(side, pos_side) is expected


def test_hedge_side_that_cannot_close_the_position_is_refused() -> None:
    """A buy order cannot liquidate a long position: the row is malformed."""
    with pytest.raises(MalformedPayload) as caught:
        liquidated_side("buy", "long")
    assert caught.value.field == "details.side"


def push(inst_id: str, inst_type: str, **detail: str) -> str:
    row = {"bkLoss": "0", "ccy": "", "ts": "1692266434010"} | detail
    return orjson.dumps(
        {
            "arg": {"channel": "liquidation-orders", "instType": inst_type},
            "data": [{"details": [row], "instId": inst_id, "instType": inst_type}],
        }
    ).decode()


def test_inverse_contracts_are_usd_notional() -> None:
    """BTC-USD-SWAP: 7 contracts of 100 USD are 700 USD, and no exact base quantity."""
    text = push("BTC-USD-SWAP", "SWAP", side="sell", posSide="net", sz="7", bkPx="61000.5")
    [row] = parse_frame(text, received_at=RECEIVED, instruments={BTC_USD.inst_id: BTC_USD})
    assert (row.notional_usd, row.qty, row.liquidated_side) == (
        Decimal(700),
        None,
        LiquidatedSide.LONG,
    )


def test_margin_size_is_base_currency() -> None:
    """MARGIN sizes are base currency; with no bkPx (docs: SWAP/FUTURES only) no notional."""
    text = push("BTC-USDT", "MARGIN", side="", posSide="net", sz="0.25", bkPx="", ccy="USDT")
    [row] = parse_frame(text, received_at=RECEIVED, instruments={MARGIN.inst_id: MARGIN})
    assert (row.qty, row.price, row.notional_usd, row.liquidated_side) == (
        Decimal("0.25"),
        None,
        None,
        None,
    )


def test_pong_and_events() -> None:
    """The text pong and the subscribe/error/notice events are recognised."""
    assert parse_frame("pong", received_at=RECEIVED) == OkxPong()
    ack = (
        '{"id":"1512","event":"subscribe","arg":{"channel":"liquidation-orders",'
        '"instType":"SWAP"},"connId":"accb8e21"}'
    )
    assert parse_frame(ack, received_at=RECEIVED) == OkxEvent(
        "subscribe", {"channel": "liquidation-orders", "instType": "SWAP"}, None, None,
        "accb8e21", "1512",
    )  # fmt: skip
    error = '{"event":"error","code":"60012","msg":"Invalid request","connId":"a4d3ae55"}'
    assert parse_frame(error, received_at=RECEIVED) == OkxEvent(
        "error", None, "60012", "Invalid request", "a4d3ae55", None
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("ping?", None),
        ('{"arg":{"channel":"tickers"},"data":[]}', "arg.channel"),
        ('{"data":[]}', "arg"),
        (push("BTC-USDT-SWAP", "SWAP", side="sell", posSide="net", sz="x", bkPx="1"), "details.sz"),
        (push("BTC-USDT-SWAP", "SWAP", side="sell", posSide="net", bkPx="1"), "details.sz"),
        (push("BTC-USDT-SWAP", "SWAP", side="hold", posSide="net", sz="1", bkPx="1"),
         "details.side"),
        (push("BTC-USDT-SWAP", "SWAP", side="sell", posSide="up", sz="1", bkPx="1"),
         "details.posSide"),
        (push("BTC-USDT-SWAP", "SWAP", side="sell", posSide="net", sz="1", bkPx="1", ts="1.5"),
         "details.ts"),
        (push("BTC-USDT-SWAP", "SWAP", side="sell", posSide="net", sz="1", bkPx="-1"),
         "details.bkPx"),
    ],
)  # fmt: skip
def test_malformed_frames_are_rejected_naming_the_field(text: str, field: str | None) -> None:
    """Malformed frames raise MalformedPayload naming the bad field, never another error."""
    with pytest.raises(MalformedPayload) as caught:
        parse_frame(text, received_at=RECEIVED)
    assert caught.value.field == field


def test_rest_row_has_the_stream_rows_key() -> None:
    """A REST liquidation-orders row (spelled "13.0") is the stream's row: same key and side."""
    body = orjson.dumps(
        {
            "code": "0",
            "msg": "",
            "data": [
                {
                    "details": [
                        {"bkLoss": "0", "bkPx": "0.0078310", "ccy": "", "posSide": "short",
                         "side": "buy", "sz": "13.0", "ts": "1692266434010"},
                    ],
                    "instFamily": "IOST-USDT",
                    "instId": "IOST-USDT-SWAP",
                    "instType": "SWAP",
                    "totalLoss": "0",
                    "uly": "IOST-USDT",
                }
            ],
        }
    )  # fmt: skip
    instruments = {IOST.inst_id: IOST}
    [rest] = parse_liquidation_orders(body, received_at=RECEIVED, instruments=instruments)
    [stream] = parse_frame(DOC_FRAME, received_at=RECEIVED, instruments=instruments)
    assert rest.content_key == stream.content_key
    assert (rest.source, rest.notional_usd, rest.raw) == (
        "rest",
        stream.notional_usd,
        body.decode(),
    )


def test_rest_error_code_raises() -> None:
    """A REST body with a non-zero code raises VenueApiError with OKX's code and message."""
    with pytest.raises(VenueApiError) as caught:
        parse_liquidation_orders(
            b'{"code":"50011","msg":"Too Many Requests","data":[]}', received_at=RECEIVED
        )
    assert (caught.value.code, caught.value.msg) == ("50011", "Too Many Requests")


def test_instruments_terms() -> None:
    """Instrument rows give ctVal/ctMult/ctValCcy; MARGIN rows their base and quote."""
    body = orjson.dumps(
        {
            "code": "0",
            "data": [
                {"instType": "SWAP", "instId": "BTC-USD-SWAP", "instFamily": "BTC-USD",
                 "settleCcy": "BTC", "ctVal": "100", "ctMult": "1", "ctValCcy": "USD",
                 "ctType": "inverse", "baseCcy": "", "quoteCcy": ""},
                {"instType": "MARGIN", "instId": "BTC-USDT", "instFamily": "", "baseCcy": "BTC",
                 "quoteCcy": "USDT", "settleCcy": "", "ctVal": "", "ctMult": "",
                 "ctValCcy": "", "ctType": ""},
            ],
        }
    )  # fmt: skip
    assert parse_instruments(body) == [BTC_USD, MARGIN]
