"""Pure parsing of forceOrder frames: exact values, classification, keys and rejections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from collector.exceptions import MalformedPayload
from collector.model import Market
from collector.sources.binance_parse import (
    ControlReply,
    DataFrame,
    Source,
    classify_market,
    content_key,
    decode_frame,
    parse_force_order,
    unknown_fields,
)
from collector.venues import LiquidatedSide

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SRC = Source("fstream", "market", "!forceOrder@arr")
# The official USD-M example (docs/binance.md §1.3).
UM_EVENT = {
    "e": "forceOrder",
    "E": 1568014460893,
    "o": {
        "s": "BTCUSDT",
        "S": "SELL",
        "o": "LIMIT",
        "f": "IOC",
        "q": "0.014",
        "p": "9910",
        "ap": "9910",
        "X": "FILLED",
        "l": "0.014",
        "z": "0.014",
        "T": 1568014460893,
    },
}
# The official COIN-M example.
CM_EVENT = {
    "e": "forceOrder",
    "E": 1591154240950,
    "o": {
        "s": "BTCUSD_200925",
        "ps": "BTCUSD",
        "S": "SELL",
        "o": "LIMIT",
        "f": "IOC",
        "q": "1",
        "p": "9425.5",
        "ap": "9496.5",
        "X": "FILLED",
        "l": "1",
        "z": "1",
        "T": 1591154240949,
    },
}


def test_um_event_fields_are_exact() -> None:
    """Every field of the documented USD-M example lands exactly, with notional z x ap."""
    row = parse_force_order(UM_EVENT, source=SRC, received_at=NOW)
    assert row.symbol == "BTCUSDT"
    assert row.event_time == datetime(2019, 9, 9, 7, 34, 20, 893000, tzinfo=UTC)
    assert row.trade_time == datetime(2019, 9, 9, 7, 34, 20, 893000, tzinfo=UTC)
    assert (row.side, row.liquidated_side, row.market) == ("SELL", LiquidatedSide.LONG, Market.UM)
    assert (row.order_type, row.time_in_force, row.status) == ("LIMIT", "IOC", "FILLED")
    assert row.orig_qty == Decimal("0.014")
    assert row.price == Decimal("9910")
    assert row.avg_price == Decimal("9910")
    assert row.last_filled_qty == Decimal("0.014")
    assert row.filled_qty == Decimal("0.014")
    assert str(row.notional_usd) == "138.740"
    assert row.pair is None
    assert row.symbol_type is None
    assert orjson.loads(row.raw) == UM_EVENT


def test_cm_event_notional_uses_contract_size() -> None:
    """COIN-M notional is contracts x contract size; unknown size leaves it None."""
    row = parse_force_order(
        CM_EVENT, source=SRC, received_at=NOW, contract_sizes={"BTCUSD_200925": Decimal(100)}
    )
    assert row.market is Market.CM
    assert row.pair == "BTCUSD"
    assert row.notional_usd == Decimal(100)
    assert parse_force_order(CM_EVENT, source=SRC, received_at=NOW).notional_usd is None


def test_st_wins_over_symbol_shape() -> None:
    """`st` classifies the market; the symbol's shape is only the fallback."""
    assert classify_market("BTCUSD_PERP", None) is Market.CM
    assert classify_market("BTCUSD_251226", None) is Market.CM
    assert classify_market("BTCUSDT_251226", None) is Market.UM
    assert classify_market("BTCUSDT", 2) is Market.CM
    event = {**UM_EVENT, "st": 1, "ps": "BTCUSDT"}
    row = parse_force_order(event, source=SRC, received_at=NOW)
    assert (row.symbol_type, row.pair, row.market) == (1, "BTCUSDT", Market.UM)


def test_buy_force_order_liquidates_a_short() -> None:
    """A BUY force order closes a short position."""
    event = {**UM_EVENT, "o": {**UM_EVENT["o"], "S": "BUY"}}
    assert parse_force_order(event, source=SRC, received_at=NOW).liquidated_side is (
        LiquidatedSide.SHORT
    )


def test_content_key_ignores_event_time_and_decimal_spelling() -> None:
    """The same order seen on two hosts (different E, "9910" vs "9910.0") has one key."""
    other = {**UM_EVENT, "E": UM_EVENT["E"] + 7, "o": {**UM_EVENT["o"], "p": "9910.0"}}
    a = parse_force_order(UM_EVENT, source=SRC, received_at=NOW)
    b = parse_force_order(other, source=SRC, received_at=NOW)
    assert a.content_key == b.content_key
    changed = {**UM_EVENT, "o": {**UM_EVENT["o"], "z": "0.013"}}
    assert parse_force_order(changed, source=SRC, received_at=NOW).content_key != a.content_key
    assert a.content_key == content_key(
        "BTCUSDT",
        1568014460893,
        "SELL",
        Decimal("0.014"),
        Decimal(9910),
        Decimal(9910),
        Decimal("0.014"),
        "FILLED",
    )


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({**UM_EVENT, "e": "aggTrade"}, "e"),
        ({k: v for k, v in UM_EVENT.items() if k != "o"}, "o"),
        ({**UM_EVENT, "o": {**UM_EVENT["o"], "q": 0.014}}, "o.q"),
        ({**UM_EVENT, "o": {**UM_EVENT["o"], "p": "NaN"}}, "o.p"),
        ({**UM_EVENT, "o": {**UM_EVENT["o"], "p": "abc"}}, "o.p"),
        ({**UM_EVENT, "o": {k: v for k, v in UM_EVENT["o"].items() if k != "z"}}, "o.z"),
        ({**UM_EVENT, "o": {**UM_EVENT["o"], "S": "HOLD"}}, "o.S"),
        ({**UM_EVENT, "o": {**UM_EVENT["o"], "T": "1568014460893"}}, "o.T"),
        ({**UM_EVENT, "st": 3}, "st"),
        # Beyond what Postgres numeric holds (and, multiplied, beyond Python's decimal context).
        ({**UM_EVENT, "o": {**UM_EVENT["o"], "ap": "1E600000"}}, "o.ap"),
        ({**UM_EVENT, "o": {**UM_EVENT["o"], "q": "1E-16384"}}, "o.q"),
    ],
)
def test_bad_events_name_the_field(event: dict[str, object], field: str) -> None:
    """A malformed event raises MalformedPayload naming the first bad field."""
    with pytest.raises(MalformedPayload) as info:
        parse_force_order(event, source=SRC, received_at=NOW)
    assert info.value.field == field


def test_optional_fields_may_be_missing_and_extras_are_reported() -> None:
    """Missing optional fields parse as None; unknown fields are listed, not rejected."""
    order = {k: v for k, v in UM_EVENT["o"].items() if k not in ("o", "f", "l")}
    event = {**UM_EVENT, "o": {**order, "new": 1}, "x": 2}
    row = parse_force_order(event, source=SRC, received_at=NOW)
    assert (row.order_type, row.time_in_force, row.last_filled_qty) == (None, None, None)
    assert unknown_fields(event) == ["x", "o.new"]


def test_decode_frame_routes_control_replies_apart_from_data() -> None:
    """Control replies, combined envelopes and raw events decode to their own types."""
    assert decode_frame('{"result":null,"id":1}') == ControlReply(1, None, None)
    assert decode_frame('{"result":["a"],"id":3}') == ControlReply(3, ["a"], None)
    err = decode_frame('{"error":{"code":2,"msg":"x"},"id":4}')
    assert err == ControlReply(4, None, {"code": 2, "msg": "x"})
    frame = decode_frame(orjson.dumps({"stream": "!forceOrder@arr", "data": UM_EVENT}))
    assert frame == DataFrame("!forceOrder@arr", UM_EVENT)
    assert decode_frame(orjson.dumps(UM_EVENT)) == DataFrame(None, UM_EVENT)
    with pytest.raises(MalformedPayload):
        decode_frame("{not json")
    with pytest.raises(MalformedPayload):
        decode_frame("[1,2]")


@pytest.mark.parametrize(
    "ms", [0, 1, 999, 1_795_000_000_123, 3_999_999_999_999, 4_000_000_000_001, 253_402_300_799_999]
)
def test_times_are_exact_to_the_millisecond(ms: int) -> None:
    """Millisecond times convert exactly on both sides of the fast path's range."""
    event = {**UM_EVENT, "E": ms, "o": {**UM_EVENT["o"], "T": ms}}
    row = parse_force_order(event, source=SRC, received_at=NOW)
    assert row.trade_time == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert row.event_time == row.trade_time


def test_parsed_decimals_are_the_same_cached_or_not() -> None:
    """The parser's cache of decimal strings changes no row: the same event parses to the same
    row before and after the cache is emptied, spellings still share a key, bad values raise
    every time, and exponent forms keep the key of their own spelling."""
    first = parse_force_order(UM_EVENT, source=SRC, received_at=NOW)
    for i in range(5000):  # more distinct strings than the cache holds: it empties itself
        spelled = {**UM_EVENT, "o": {**UM_EVENT["o"], "q": f"0.{i:05d}1"}}
        row = parse_force_order(spelled, source=SRC, received_at=NOW)
        assert row.orig_qty == Decimal(f"0.{i:05d}1")
    assert parse_force_order(UM_EVENT, source=SRC, received_at=NOW) == first
    bad = {**UM_EVENT, "o": {**UM_EVENT["o"], "p": "12x"}}
    for _ in range(2):
        with pytest.raises(MalformedPayload, match=r"o\.p"):
            parse_force_order(bad, source=SRC, received_at=NOW)
    expo = {**UM_EVENT, "o": {**UM_EVENT["o"], "p": "9.91E+3"}}
    row = parse_force_order(expo, source=SRC, received_at=NOW)
    assert row.price == Decimal(9910)
    assert row.content_key == content_key(
        "BTCUSDT",
        1568014460893,
        "SELL",
        Decimal("0.014"),
        Decimal("9.91E+3"),
        Decimal(9910),
        Decimal("0.014"),
        "FILLED",
    )
    huge = {**UM_EVENT, "o": {**UM_EVENT["o"], "q": "1" * 131073}}
    with pytest.raises(MalformedPayload, match="out of range"):
        parse_force_order(huge, source=SRC, received_at=NOW)
