"""Pure parsing of Binance websocket frames into records: no I/O, no logging, no metrics.

Wire format: docs/binance.md §1.2-§1.5 (combined envelope, forceOrder payload,
control replies). Bad input raises `MalformedPayload`; `judge_event` turns a data frame into
its verdict (the row, or why it is dead-lettered) and `find_anomalies` lists what is odd about
a row kept anyway.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from collector import wire
from collector.exceptions import MalformedPayload
from collector.model import Market, MarketLiquidation
from collector.venues import LiquidatedSide

# Fields of the documented forceOrder event (USD-M and COIN-M), top level and inside "o".
KNOWN_TOP_FIELDS = frozenset({"e", "E", "o", "st", "ps"})
KNOWN_ORDER_FIELDS = frozenset({"s", "ps", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"})
# COIN-M delivery and perpetual symbols: BTCUSD_PERP, BTCUSD_251226. USD-M quarterlies look like
# BTCUSDT_251226, so the quote must be exactly USD before the underscore.
_COIN_M_SYMBOL = re.compile(r"^[A-Z0-9]+USD_(PERP|\d{6})$")


@dataclass(frozen=True, slots=True)
class ControlReply:
    """A reply to SUBSCRIBE/LIST_SUBSCRIPTIONS/...: `{"result":..,"id":n}` or an error."""

    id: int | None
    result: Any
    error: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class DataFrame:
    """A data message: the event object and the stream it came on (None on raw connections)."""

    stream: str | None
    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a frame came from, stamped on every row."""

    host: str
    route: str
    stream: str


def decode_frame(text: str | bytes) -> ControlReply | DataFrame:
    """Decode one websocket text frame.

    A frame is a control reply iff it has "id" and ("result" or "error"/"code") (§1.5); a combined
    stream frame is `{"stream": .., "data": {..}}`; anything else that is an object is a raw event.
    Raises `MalformedPayload` for invalid JSON or a non-object.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedPayload(f"expected a JSON object, got {type(obj).__name__}")
    if "id" in obj and ("result" in obj or "error" in obj or "code" in obj):
        error = obj.get("error")
        if error is None and "code" in obj:
            error = {"code": obj.get("code"), "msg": obj.get("msg")}
        ident = obj["id"]
        return ControlReply(ident if isinstance(ident, int) else None, obj.get("result"), error)
    if "stream" in obj and "data" in obj:
        stream, data = obj["stream"], obj["data"]
        if not isinstance(stream, str):
            raise MalformedPayload("stream name is not a string", field="stream")
        if not isinstance(data, dict):
            raise MalformedPayload("combined frame data is not an object", field="data")
        return DataFrame(stream, data)
    if "error" in obj:
        return ControlReply(None, None, obj["error"] if isinstance(obj["error"], dict) else None)
    return DataFrame(None, obj)


# Decimal strings already parsed, with their canonical spelling (`_canonical`): an order's
# q, l and z are often one string, and prices repeat across events. Bounded: emptied when full
# (about 1 MB at most). Decimals are immutable, so sharing one is safe.
_PARSED: dict[str, tuple[Decimal, str]] = {}
_PARSED_MAX = 4096


def _parsed_decimal(value: Any, name: str) -> tuple[Decimal, str]:
    """`wire.decimal(value)` and its canonical spelling, cached by the wire string."""
    if type(value) is str:
        found = _PARSED.get(value)
        if found is not None:
            return found
    result = wire.decimal(value, name)
    parsed = (result, _canonical(result))
    if type(value) is str:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[value] = parsed
    return parsed


def _opt_decimal(order: Mapping[str, Any], key: str) -> Decimal | None:
    value = order.get(key)
    return None if value is None else _parsed_decimal(value, f"o.{key}")[0]


def _decimal(order: Mapping[str, Any], key: str) -> tuple[Decimal, str]:
    value = order.get(key)
    if value is None:
        raise MalformedPayload("missing required field", field=f"o.{key}")
    return _parsed_decimal(value, f"o.{key}")


def _millis(obj: Mapping[str, Any], key: str, name: str) -> datetime:
    return wire.millis(obj.get(key), name)


def _opt_text(obj: Mapping[str, Any], key: str, name: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str or not value:
        raise MalformedPayload(f"expected a non-empty string, got {value!r}", field=name)
    return value


def _text(obj: Mapping[str, Any], key: str, name: str) -> str:
    value = _opt_text(obj, key, name)
    if value is None:
        raise MalformedPayload("missing required field", field=name)
    return value


def classify_market(symbol: str, symbol_type: int | None) -> Market:
    """UM or CM: by `st` when present (1 UM, 2 CM), else by the symbol's shape."""
    if symbol_type == 1:
        return Market.UM
    if symbol_type == 2:
        return Market.CM
    return Market.CM if _COIN_M_SYMBOL.match(symbol) else Market.UM


def _canonical(value: Decimal) -> str:
    """A decimal's canonical spelling: "9910", "9910.0" and "9910.00" are all "9910"."""
    text = str(value)
    if "." in text and "E" not in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def content_key(
    symbol: str,
    trade_time_ms: int,
    side: str,
    qty: Decimal,
    price: Decimal,
    avg_price: Decimal,
    filled: Decimal,
    status: str,
) -> bytes:
    """The deterministic 16-byte identity of a liquidation event (it has no id on the wire).

    Built from the order's own fields (not `E`, which differs per host and connection), with
    decimals in canonical spelling so "9910" and "9910.0" are the same value.
    See docs/binance.md §1.3.
    """
    return _content_key(
        symbol,
        trade_time_ms,
        side,
        _canonical(qty),
        _canonical(price),
        _canonical(avg_price),
        _canonical(filled),
        status,
    )


def _content_key(*parts: object) -> bytes:
    """`content_key` from its parts, decimals already canonical (the parser has them)."""
    text = "\x1f".join(map(str, parts))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def unknown_fields(event: Mapping[str, Any]) -> list[str]:
    """Names of fields the documented payload does not have (kept, but worth a look)."""
    order = event.get("o")
    if event.keys() <= KNOWN_TOP_FIELDS and (
        not isinstance(order, dict) or order.keys() <= KNOWN_ORDER_FIELDS
    ):
        return []
    extra = [k for k in event if k not in KNOWN_TOP_FIELDS]
    if isinstance(order, dict):
        extra += [f"o.{k}" for k in order if k not in KNOWN_ORDER_FIELDS]
    return extra


def parse_force_order(
    event: Mapping[str, Any],
    *,
    source: Source,
    received_at: datetime,
    raw: str | None = None,
    received_monotonic: float = 0.0,
    contract_sizes: Mapping[str, Decimal] | None = None,
) -> MarketLiquidation:
    """Turn one forceOrder event (the inner object, not the envelope) into a record.

    `raw` is the frame as received (stored verbatim); without it the event is serialised.
    `contract_sizes` maps COIN-M symbols to USD per contract; without an entry the CM notional
    stays None (filled in later). Raises `MalformedPayload` naming the first bad field.
    """
    kind = event.get("e")
    if kind != "forceOrder":
        raise MalformedPayload(f"unknown event type {kind!r}", field="e")
    order = event.get("o")
    if not isinstance(order, dict):
        raise MalformedPayload("missing order object", field="o")
    event_time = _millis(event, "E", "E")
    trade_time = _millis(order, "T", "o.T")
    trade_time_ms: int = order["T"]
    symbol = _text(order, "s", "o.s")
    side = _text(order, "S", "o.S")
    status = _text(order, "X", "o.X")
    if side == "SELL":
        liquidated = LiquidatedSide.LONG
    elif side == "BUY":
        liquidated = LiquidatedSide.SHORT
    else:
        raise MalformedPayload(f"unknown side {side!r}", field="o.S")
    st = event.get("st")
    if st is not None and (isinstance(st, bool) or st not in (1, 2)):
        raise MalformedPayload(f"unknown symbol type {st!r}", field="st")
    pair = event.get("ps")
    if pair is None:
        pair = order.get("ps")
    if pair is not None and not isinstance(pair, str):
        raise MalformedPayload(f"expected a string, got {pair!r}", field="ps")
    qty, qty_c = _decimal(order, "q")
    price, price_c = _decimal(order, "p")
    avg_price, avg_price_c = _decimal(order, "ap")
    filled, filled_c = _decimal(order, "z")
    last = _opt_decimal(order, "l")
    market = Market.UM if st == 1 else Market.CM if st == 2 else classify_market(symbol, None)
    notional: Decimal | None
    try:
        if market is Market.UM:
            notional = filled * avg_price
        else:
            size = (contract_sizes or {}).get(symbol)
            notional = filled * size if size is not None else None
    except ArithmeticError as exc:  # decimal.Overflow and its kin: a value, not a bug
        raise MalformedPayload(f"notional not computable: {exc!r}", field="o.z") from None
    return MarketLiquidation(
        content_key=_content_key(
            symbol, trade_time_ms, side, qty_c, price_c, avg_price_c, filled_c, status
        ),
        event_time=event_time,
        trade_time=trade_time,
        symbol=symbol,
        pair=pair,
        symbol_type=st,
        market=market,
        side=side,
        liquidated_side=liquidated,
        order_type=_opt_text(order, "o", "o.o"),
        time_in_force=_opt_text(order, "f", "o.f"),
        status=status,
        orig_qty=qty,
        price=price,
        avg_price=avg_price,
        last_filled_qty=last,
        filled_qty=filled,
        notional_usd=notional,
        received_at=received_at,
        source_host=source.host,
        source_route=source.route,
        source_stream=source.stream,
        raw=orjson.dumps(event).decode() if raw is None else raw,
        received_monotonic=received_monotonic,
    )


class Verdict(NamedTuple):
    """What one data frame comes to: a `row` to store, or (`row` None) the dead-letter `reason`
    (`unknown_event`, `malformed_event`) and its `detail`."""

    row: MarketLiquidation | None
    reason: str = ""
    detail: str = ""


class Anomaly(NamedTuple):
    """Something odd about a row that is stored anyway: `kind` is a bounded metric label
    (`unknown_field`, `unknown_symbol`), `what` names the instance (`o.new,x`, `UM:NEWUSDT`)."""

    kind: str
    what: str


def judge_event(
    frame: DataFrame,
    *,
    source: Source,
    received_at: datetime,
    raw: str,
    received_monotonic: float = 0.0,
    contract_sizes: Mapping[str, Decimal] | None = None,
) -> Verdict:
    """Parse `frame`'s event (see `parse_force_order`) into its verdict. Never raises for bad
    input: an event whose `e` is not forceOrder is an `unknown_event`, any other that does not
    parse a `malformed_event`."""
    try:
        row = parse_force_order(
            frame.event,
            source=source,
            received_at=received_at,
            raw=raw,
            received_monotonic=received_monotonic,
            contract_sizes=contract_sizes,
        )
    except MalformedPayload as exc:
        reason = "unknown_event" if exc.field == "e" else "malformed_event"
        return Verdict(None, reason, str(exc))
    return Verdict(row)


def find_anomalies(
    frame: DataFrame,
    row: MarketLiquidation,
    *,
    is_known: Callable[[Market, str], bool | None],
) -> tuple[Anomaly, ...]:
    """What is odd about `row`, parsed from `frame` (empty almost always): fields the documented
    payload lacks, then a symbol that `is_known` (exchangeInfo's answer; None while that market
    is not loaded) says is not listed. Asked after the row is stored, so that no check, nor a
    bug in one, costs a row."""
    anomalies: tuple[Anomaly, ...] = ()
    extra = unknown_fields(frame.event)
    if extra:
        anomalies = (Anomaly("unknown_field", ",".join(sorted(extra))),)
    if is_known(row.market, row.symbol) is False:
        anomalies = (*anomalies, Anomaly("unknown_symbol", f"{row.market.value}:{row.symbol}"))
    return anomalies


def reparse_frame(
    raw: str,
    *,
    host: str,
    route: str,
    stream: str,
    received_at: datetime,
    contract_sizes: Mapping[str, Decimal] | None = None,
) -> MarketLiquidation:
    """The market row of `raw`, a data frame as received from `host`/`route`/`stream` (a row
    spilled at shutdown, replayed: the parser is deterministic, so it is the same row, content
    key included; the COIN-M notional is the one `contract_sizes` knows now).

    Raises `MalformedPayload` when `raw` is not a forceOrder data frame.
    """
    frame = decode_frame(raw)
    if not isinstance(frame, DataFrame):
        raise MalformedPayload("spilled frame is not data")
    return parse_force_order(
        frame.event,
        source=Source(host, route, stream),
        received_at=received_at,
        raw=raw,
        contract_sizes=contract_sizes,
    )
