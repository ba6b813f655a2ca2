"""Pure parsing of Bybit v5 public WebSocket frames and instruments-info pages: no I/O.

Wire format: docs/bybit.md (the `allLiquidation.{symbol}` push, op replies, instruments-info).
Bad input raises `MalformedPayload` naming the field; a REST error code raises `VenueApiError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import orjson

from collector import wire
from collector.exceptions import MalformedPayload
from collector.venues import (
    LiquidatedSide,
    Venue,
    VenueApiError,
    VenueLiquidation,
    content_key,
)

CATEGORIES: Final = ("linear", "inverse")
"""The categories whose public streams carry `allLiquidation` (docs/bybit.md section 1.1)."""
TOPIC_PREFIX: Final = "allLiquidation."


@dataclass(frozen=True, slots=True)
class BybitReply:
    """A reply to an op (`subscribe`, `unsubscribe`, `ping`), docs/bybit.md section 1.3."""

    op: str
    success: bool
    ret_msg: str
    req_id: str | None
    conn_id: str | None


@dataclass(frozen=True, slots=True)
class BybitInstrument:
    """What instruments-info says about one linear or inverse contract (docs/bybit.md 2.1)."""

    category: str
    symbol: str
    contract_type: str
    """`LinearPerpetual`, `LinearFutures`, `InversePerpetual` or `InverseFutures`."""
    status: str
    base_coin: str
    quote_coin: str
    settle_coin: str


@dataclass(frozen=True, slots=True)
class InstrumentsPage:
    """One page of `GET /v5/market/instruments-info`; `next_cursor` is None on the last page."""

    category: str
    instruments: tuple[BybitInstrument, ...]
    next_cursor: str | None


def topic(symbol: str) -> str:
    """The liquidation topic of `symbol`: "BTCUSDT" → "allLiquidation.BTCUSDT"."""
    return TOPIC_PREFIX + symbol


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedPayload(f"expected a JSON object ({what}), got {type(obj).__name__}")
    return obj


def _text(obj: Mapping[str, Any], key: str, name: str) -> str:
    value = obj.get(key)
    if type(value) is not str or not value:
        raise MalformedPayload(f"expected a non-empty string, got {value!r}", field=name)
    return value


def _opt_text(obj: Mapping[str, Any], key: str, name: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise MalformedPayload(f"expected a string, got {value!r}", field=name)
    return value


def liquidated_side(side: str, name: str = "data.S") -> LiquidatedSide:
    """Bybit's `S` is the side of the liquidated *position*, not of the closing order:
    "When you receive a `Buy` update, this means that a long position has been liquidated"
    (https://bybit-exchange.github.io/docs/v5/websocket/public/all-liquidation). This is the
    reverse of Binance's order side; third-party code often maps it the Binance way. The docs win.
    """
    if side == "Buy":
        return LiquidatedSide.LONG
    if side == "Sell":
        return LiquidatedSide.SHORT
    raise MalformedPayload(f"unknown side {side!r}", field=name)


def parse_frame(
    text: str | bytes,
    *,
    category: str,
    received_at: datetime,
    instruments: Mapping[str, BybitInstrument] | None = None,
) -> BybitReply | list[VenueLiquidation]:
    """Decode one text frame from `/v5/public/{category}`: an op reply, or the liquidations of
    one `allLiquidation` push (in `data` order).

    `instruments` (by symbol) supplies base assets; without an entry `base_asset` is None.
    Raises `MalformedPayload` for invalid JSON, a frame of another topic, or a bad item.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    obj = _object(text, "frame")
    if "op" in obj:
        return _reply(obj)
    raw = text.decode() if isinstance(text, bytes) else text
    name = _text(obj, "topic", "topic")
    if not name.startswith(TOPIC_PREFIX):
        raise MalformedPayload(f"unexpected topic {name!r}", field="topic")
    kind = _text(obj, "type", "type")
    push_ts = obj.get("ts")
    wire.millis(push_ts, "ts")
    data = obj.get("data")
    # ⚠ docs/bybit.md section 1.2: the field table says "Object", the example (and every push)
    # an array.
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise MalformedPayload(f"expected an array, got {data!r}", field="data")
    envelope = (("topic", name), ("type", kind), ("ts", str(push_ts)))
    topic_symbol = name[len(TOPIC_PREFIX) :]
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise MalformedPayload(f"expected an object, got {item!r}", field="data[]")
        liquidation = _liquidation(item, category, envelope, raw, received_at, instruments)
        if liquidation.symbol != topic_symbol:
            raise MalformedPayload(
                f"symbol {liquidation.symbol!r} on topic {name!r}", field="data.s"
            )
        out.append(liquidation)
    return out


def _reply(obj: Mapping[str, Any]) -> BybitReply:
    op = obj["op"]
    if type(op) is not str:
        raise MalformedPayload(f"expected a string, got {op!r}", field="op")
    success = obj.get("success")
    if type(success) is not bool:
        raise MalformedPayload(f"expected a boolean, got {success!r}", field="success")
    return BybitReply(
        op=op,
        success=success,
        ret_msg=_opt_text(obj, "ret_msg", "ret_msg") or "",
        req_id=_opt_text(obj, "req_id", "req_id"),
        conn_id=_opt_text(obj, "conn_id", "conn_id"),
    )


def _liquidation(
    item: Mapping[str, Any],
    category: str,
    envelope: tuple[tuple[str, str], ...],
    raw: str,
    received_at: datetime,
    instruments: Mapping[str, BybitInstrument] | None,
) -> VenueLiquidation:
    trade_ms = item.get("T")
    trade_time = wire.millis(trade_ms, "data.T")
    symbol = _text(item, "s", "data.s")
    side = _text(item, "S", "data.S")
    size_text = _text(item, "v", "data.v")
    price_text = _text(item, "p", "data.p")
    size = wire.decimal(size_text, "data.v")
    price = wire.decimal(price_text, "data.p")
    if size <= 0:
        raise MalformedPayload(f"size must be positive, got {size_text!r}", field="data.v")
    if price <= 0:
        raise MalformedPayload(f"price must be positive, got {price_text!r}", field="data.p")
    qty: Decimal | None
    try:
        if category == "linear":
            # Linear sizes are in the base coin; USDT and USDC quotes count as USD.
            qty, notional = size, size * price
        else:
            # ⚠ docs/bybit.md section 1.2: inverse sizes are USD (one contract is one USD); the base
            # quantity, USD / price, has no exact decimal and stays None.
            qty, notional = None, size
    except ArithmeticError as exc:
        raise MalformedPayload(f"notional not computable: {exc!r}", field="data.v") from None
    instrument = (instruments or {}).get(symbol)
    fields = (
        *envelope,
        ("T", str(trade_ms)),
        ("s", symbol),
        ("S", side),
        ("v", size_text),
        ("p", price_text),
    )
    return VenueLiquidation(
        venue=Venue.BYBIT,
        market=category,
        symbol=symbol,
        base_asset=instrument.base_coin if instrument is not None else None,
        liquidated_side=liquidated_side(side),
        price=price,
        qty=qty,
        notional_usd=notional,
        trade_time=trade_time,
        received_at=received_at,
        content_key=liquidation_key(symbol, trade_ms, side, size, price),
        wire=fields,
        raw=raw,
        source="ws",
    )


def liquidation_key(symbol: str, trade_ms: Any, side: str, size: Decimal, price: Decimal) -> bytes:
    """The content key of a Bybit liquidation (see `collector.venues`): symbol, `T`, `S`, `v`
    and `p`; not the push's `ts`, which a re-sent batch may change."""
    return content_key(Venue.BYBIT, symbol, int(trade_ms), side, size, price)


def parse_instruments_page(body: str | bytes, *, category: str) -> InstrumentsPage:
    """Decode one page of `GET /v5/market/instruments-info?category={category}`.

    Raises `VenueApiError` if `retCode` is not 0, `MalformedPayload` for a bad body, and
    `MalformedPayload` if the page is of another category.
    """
    obj = _object(body, "instruments-info")
    code = obj.get("retCode")
    if code != 0:
        if type(code) is not int:
            raise MalformedPayload(f"expected an integer, got {code!r}", field="retCode")
        raise VenueApiError(Venue.BYBIT, str(code), str(obj.get("retMsg", "")))
    result = obj.get("result")
    if not isinstance(result, dict):
        raise MalformedPayload("missing result object", field="result")
    got = _text(result, "category", "result.category")
    if got != category:
        raise MalformedPayload(f"asked for {category!r}, got {got!r}", field="result.category")
    rows = result.get("list")
    if not isinstance(rows, list):
        raise MalformedPayload(f"expected an array, got {rows!r}", field="result.list")
    cursor = _opt_text(result, "nextPageCursor", "result.nextPageCursor")
    return InstrumentsPage(category, tuple(_instrument(r, category) for r in rows), cursor or None)


def _instrument(row: Any, category: str) -> BybitInstrument:
    if not isinstance(row, dict):
        raise MalformedPayload(f"expected an object, got {row!r}", field="result.list[]")
    return BybitInstrument(
        category=category,
        symbol=_text(row, "symbol", "list.symbol"),
        contract_type=_text(row, "contractType", "list.contractType"),
        status=_text(row, "status", "list.status"),
        base_coin=_text(row, "baseCoin", "list.baseCoin"),
        quote_coin=_text(row, "quoteCoin", "list.quoteCoin"),
        settle_coin=_opt_text(row, "settleCoin", "list.settleCoin") or "",
    )


def plan_subscriptions(symbols: Sequence[str], *, max_args_chars: int = 21_000) -> list[list[str]]:
    """Split the topics of `symbols` into per-connection groups whose `args` array, serialised as
    JSON, stays within `max_args_chars` (docs/bybit.md section 1.4: 21,000 characters per public
    connection). Counting the JSON text (quotes and commas included) is the strictest reading
    of an ambiguous rule, so a group is accepted under any reading. Order is kept.
    """
    groups: list[list[str]] = []
    current: list[str] = []
    used = 2  # the brackets of the array
    for symbol in symbols:
        name = topic(symbol)
        size = len(orjson.dumps(name))
        if 2 + size > max_args_chars:
            raise ValueError(f"topic {name!r} alone exceeds {max_args_chars} characters")
        if current and used + 1 + size > max_args_chars:
            groups.append(current)
            current, used = [], 2
        used += size + (1 if current else 0)  # a comma before all but the first
        current.append(name)
    if current:
        groups.append(current)
    return groups
