"""Pure parsing of OKX v5 public WebSocket frames and REST bodies: no I/O.

Wire format: docs/okx.md (the `liquidation-orders` push, events, text ping/pong, instruments,
the REST liquidation orders). Stream and REST rows of one liquidation get one content key.
Bad input raises `MalformedPayload` naming the field; a REST error code raises `VenueApiError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import orjson

from collector import wire
from collector.exceptions import MalformedPayload
from collector.venues import (
    USD_QUOTES,
    LiquidatedSide,
    Venue,
    VenueApiError,
    VenueLiquidation,
    content_key,
)

CHANNEL: Final = "liquidation-orders"
INST_TYPES: Final = ("SWAP", "FUTURES", "MARGIN")
"""The instTypes the collector records (OPTION is documented for the channel, but has no
size or price fields; docs/okx.md section 1.2)."""
_ITEM_FIELDS: Final = ("instId", "instFamily", "instType", "uly")
_DETAIL_FIELDS: Final = ("side", "posSide", "bkPx", "sz", "bkLoss", "ccy", "ts")


@dataclass(frozen=True, slots=True)
class OkxPong:
    """The text `pong` answering a text `ping` (docs/okx.md section 1.4)."""


@dataclass(frozen=True, slots=True)
class OkxEvent:
    """An event message: `subscribe`/`unsubscribe` acks, `error`, `notice`,
    `channel-conn-count(-error)` (docs/okx.md section 1.3)."""

    event: str
    arg: Mapping[str, Any] | None
    code: str | None
    msg: str | None
    conn_id: str | None
    id: str | None


@dataclass(frozen=True, slots=True)
class OkxInstrument:
    """Contract terms from `GET /api/v5/public/instruments` (docs/okx.md section 2.1)."""

    inst_type: str
    inst_id: str
    inst_family: str
    base_ccy: str
    """`baseCcy` for MARGIN; for SWAP/FUTURES the first part of the family ("BTC-USDT" → BTC)."""
    quote_ccy: str
    """`quoteCcy` for MARGIN; for SWAP/FUTURES the second part of the family."""
    settle_ccy: str
    ct_type: str
    """`linear` or `inverse` for SWAP/FUTURES, "" for MARGIN."""
    ct_val: Decimal | None
    ct_mult: Decimal | None
    ct_val_ccy: str
    alias: str = ""
    """FUTURES: `this_week`, `next_week`, `quarter`, ... (the liquidation-orders read names
    one); "" for SWAP and MARGIN."""


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedPayload(f"expected a JSON object ({what}), got {type(obj).__name__}")
    return obj


def _text(obj: Mapping[str, Any], key: str, name: str, *, empty: bool = False) -> str:
    value = obj.get(key)
    if type(value) is not str or (not value and not empty):
        raise MalformedPayload(f"expected a non-empty string, got {value!r}", field=name)
    return value


def _opt_text(obj: Mapping[str, Any], key: str, name: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise MalformedPayload(f"expected a string, got {value!r}", field=name)
    return value


def _opt_decimal(text: str | None, name: str) -> Decimal | None:
    return None if not text else wire.decimal(text, name)


def _ms(text: str, name: str) -> tuple[int, datetime]:
    """OKX sends times as decimal strings of epoch milliseconds."""
    if not text.isascii() or not text.isdigit():
        raise MalformedPayload(f"expected millisecond digits, got {text!r}", field=name)
    value = int(text)
    return value, wire.millis(value, name)


def liquidated_side(side: str, pos_side: str, name: str = "details") -> LiquidatedSide | None:
    """The liquidated position (docs/okx.md section 1.2): `posSide` long/short in hedge mode; in net
    mode it follows from the order side, as a liquidation closes the position: a `sell` closes
    a long, a `buy` a short. None where neither says (MARGIN rows may leave `side` empty).
    A hedge-mode row whose order side would not close its position is refused."""
    if pos_side in ("long", "short"):
        expected = "sell" if pos_side == "long" else "buy"
        if side and side != expected:
            raise MalformedPayload(
                f"side {side!r} cannot close a {pos_side} position", field=f"{name}.side"
            )
        return LiquidatedSide.LONG if pos_side == "long" else LiquidatedSide.SHORT
    if pos_side not in ("net", ""):
        raise MalformedPayload(f"unknown posSide {pos_side!r}", field=f"{name}.posSide")
    if side == "sell":
        return LiquidatedSide.LONG
    if side == "buy":
        return LiquidatedSide.SHORT
    if side:
        raise MalformedPayload(f"unknown side {side!r}", field=f"{name}.side")
    return None


def parse_frame(
    text: str | bytes,
    *,
    received_at: datetime,
    instruments: Mapping[str, OkxInstrument] | None = None,
) -> OkxPong | OkxEvent | list[VenueLiquidation]:
    """Decode one text frame from `/ws/v5/public`: the `pong`, an event, or the liquidations of
    one `liquidation-orders` push (in `data`, then `details`, order).

    `instruments` (by instId) supplies contract terms; without an entry base quantity and
    notional are None (a SWAP/FUTURES `sz` is in contracts). Raises `MalformedPayload`.
    """
    if text in ("pong", b"pong"):
        return OkxPong()
    obj = _object(text, "frame")
    if "event" in obj:
        return _event(obj)
    arg = obj.get("arg")
    if not isinstance(arg, dict):
        raise MalformedPayload("missing arg object", field="arg")
    if arg.get("channel") != CHANNEL:
        raise MalformedPayload(f"unexpected channel {arg.get('channel')!r}", field="arg.channel")
    raw = text.decode() if isinstance(text, bytes) else text
    return _liquidations(obj, raw, received_at, instruments, source="ws")


def _event(obj: Mapping[str, Any]) -> OkxEvent:
    event = _text(obj, "event", "event")
    arg = obj.get("arg")
    if arg is not None and not isinstance(arg, dict):
        raise MalformedPayload(f"expected an object, got {arg!r}", field="arg")
    return OkxEvent(
        event=event,
        arg=arg,
        code=_opt_text(obj, "code", "code"),
        msg=_opt_text(obj, "msg", "msg"),
        conn_id=_opt_text(obj, "connId", "connId"),
        id=_opt_text(obj, "id", "id"),
    )


def _liquidations(
    obj: Mapping[str, Any],
    raw: str,
    received_at: datetime,
    instruments: Mapping[str, OkxInstrument] | None,
    *,
    source: str,
) -> list[VenueLiquidation]:
    data = obj.get("data")
    if not isinstance(data, list):
        raise MalformedPayload(f"expected an array, got {data!r}", field="data")
    out = []
    for item in data:
        if not isinstance(item, dict):
            raise MalformedPayload(f"expected an object, got {item!r}", field="data[]")
        inst_id = _text(item, "instId", "data.instId")
        inst_type = _text(item, "instType", "data.instType")
        item_texts = {k: _opt_text(item, k, f"data.{k}") for k in _ITEM_FIELDS}
        item_wire = tuple((k, v) for k, v in item_texts.items() if v is not None)
        details = item.get("details")
        if not isinstance(details, list):
            raise MalformedPayload(f"expected an array, got {details!r}", field="data.details")
        instrument = (instruments or {}).get(inst_id)
        for detail in details:
            if not isinstance(detail, dict):
                raise MalformedPayload(f"expected an object, got {detail!r}", field="details[]")
            out.append(
                _liquidation(
                    detail, inst_id, inst_type, item_wire, instrument, raw, received_at, source
                )
            )
    return out


def _liquidation(
    detail: Mapping[str, Any],
    inst_id: str,
    inst_type: str,
    item_wire: tuple[tuple[str, str], ...],
    instrument: OkxInstrument | None,
    raw: str,
    received_at: datetime,
    source: str,
) -> VenueLiquidation:
    texts = {k: _opt_text(detail, k, f"details.{k}") for k in _DETAIL_FIELDS}
    ts_text = texts["ts"]
    if not ts_text:
        raise MalformedPayload("missing required field", field="details.ts")
    ts_ms, trade_time = _ms(ts_text, "details.ts")
    sz_text = texts["sz"]
    if not sz_text:
        raise MalformedPayload("missing required field", field="details.sz")
    size = wire.decimal(sz_text, "details.sz")
    if size <= 0:
        raise MalformedPayload(f"size must be positive, got {sz_text!r}", field="details.sz")
    price = _opt_decimal(texts["bkPx"], "details.bkPx")
    if price is not None and price <= 0:
        raise MalformedPayload(f"price must be positive, got {price!r}", field="details.bkPx")
    _opt_decimal(texts["bkLoss"], "details.bkLoss")  # validated, kept as text in `wire`
    side = texts["side"] or ""
    pos_side = texts["posSide"] or ""
    try:
        qty, notional = _amounts(inst_type, size, price, instrument)
    except ArithmeticError as exc:
        raise MalformedPayload(f"notional not computable: {exc!r}", field="details.sz") from None
    fields = item_wire + tuple((k, v) for k, v in texts.items() if v is not None)
    return VenueLiquidation(
        venue=Venue.OKX,
        market=inst_type,
        symbol=inst_id,
        base_asset=instrument.base_ccy if instrument is not None else _base_from_id(inst_id),
        liquidated_side=liquidated_side(side, pos_side),
        price=price,
        qty=qty,
        notional_usd=notional,
        trade_time=trade_time,
        received_at=received_at,
        content_key=liquidation_key(inst_id, ts_ms, side, pos_side, size, price),
        wire=fields,
        raw=raw,
        source=source,
    )


def _base_from_id(inst_id: str) -> str | None:
    """OKX instIds start with the base currency: BTC-USDT-SWAP, BTC-USD-250926, BTC-USDT."""
    base, sep, _ = inst_id.partition("-")
    return base if sep and base else None


def _amounts(
    inst_type: str, size: Decimal, price: Decimal | None, instrument: OkxInstrument | None
) -> tuple[Decimal | None, Decimal | None]:
    """(base quantity, USD notional) of one detail, docs/okx.md section 2.1: MARGIN sizes are base
    currency; SWAP/FUTURES sizes are contracts of `ctVal` x `ctMult` units of `ctValCcy`."""
    if inst_type == "MARGIN":
        quote = instrument.quote_ccy if instrument is not None else None
        notional = size * price if price is not None and quote in USD_QUOTES else None
        return size, notional
    if instrument is None or instrument.ct_val is None:
        return None, None
    units = size * instrument.ct_val * (instrument.ct_mult or Decimal(1))
    if instrument.ct_val_ccy in USD_QUOTES:  # inverse: contracts of a fixed USD face value
        return None, units
    if instrument.ct_val_ccy == instrument.base_ccy:  # linear: contracts of base currency
        usd = price is not None and instrument.settle_ccy in USD_QUOTES
        return units, units * price if usd and price is not None else None
    return None, None


def liquidation_key(
    inst_id: str, ts_ms: int, side: str, pos_side: str, size: Decimal, price: Decimal | None
) -> bytes:
    """The content key of an OKX liquidation (see `collector.venues`): instId, `ts`, `side`,
    `posSide`, `sz`, `bkPx`; all present in both the stream's and REST's details. Not `bkLoss`
    (a loss figure, not an identity) and not the family, which the instId implies."""
    return content_key(Venue.OKX, inst_id, ts_ms, side, pos_side, size, price or "")


def parse_instruments(body: str | bytes) -> list[OkxInstrument]:
    """Decode `GET /api/v5/public/instruments`. Raises `VenueApiError` if `code` is not "0"."""
    obj = _ok_body(body, "instruments")
    rows = obj.get("data")
    if not isinstance(rows, list):
        raise MalformedPayload(f"expected an array, got {rows!r}", field="data")
    return [_instrument(row) for row in rows]


def _ok_body(body: str | bytes, what: str) -> dict[str, Any]:
    obj = _object(body, what)
    code = obj.get("code")
    if type(code) is not str:
        raise MalformedPayload(f"expected a string, got {code!r}", field="code")
    if code != "0":
        raise VenueApiError(Venue.OKX, code, str(obj.get("msg", "")))
    return obj


def _instrument(row: Any) -> OkxInstrument:
    if not isinstance(row, dict):
        raise MalformedPayload(f"expected an object, got {row!r}", field="data[]")
    inst_type = _text(row, "instType", "data.instType")
    inst_id = _text(row, "instId", "data.instId")
    family = _opt_text(row, "instFamily", "data.instFamily") or ""
    base = _opt_text(row, "baseCcy", "data.baseCcy") or ""
    quote = _opt_text(row, "quoteCcy", "data.quoteCcy") or ""
    if not base and family:
        base, _, quote = family.partition("-")
    return OkxInstrument(
        inst_type=inst_type,
        inst_id=inst_id,
        inst_family=family,
        base_ccy=base,
        quote_ccy=quote,
        settle_ccy=_opt_text(row, "settleCcy", "data.settleCcy") or "",
        ct_type=_opt_text(row, "ctType", "data.ctType") or "",
        ct_val=_opt_decimal(_opt_text(row, "ctVal", "data.ctVal"), "data.ctVal"),
        ct_mult=_opt_decimal(_opt_text(row, "ctMult", "data.ctMult"), "data.ctMult"),
        ct_val_ccy=_opt_text(row, "ctValCcy", "data.ctValCcy") or "",
        alias=_opt_text(row, "alias", "data.alias") or "",
    )


def parse_liquidation_orders(
    body: str | bytes,
    *,
    received_at: datetime,
    instruments: Mapping[str, OkxInstrument] | None = None,
) -> list[VenueLiquidation]:
    """Decode `GET /api/v5/public/liquidation-orders` into the same liquidations, with the same
    content keys, as the stream gives (`source` is "rest", `raw` the body).

    Raises `VenueApiError` if `code` is not "0", `MalformedPayload` for a bad body.
    """
    obj = _ok_body(body, "liquidation-orders")
    raw = body.decode() if isinstance(body, bytes) else body
    return _liquidations(obj, raw, received_at, instruments, source="rest")
