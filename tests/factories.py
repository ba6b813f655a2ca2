"""Builders for test records and events (plain functions, no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from collector.model import MarketLiquidation, SessionRecord
from collector.sources import bybit_parse, okx_parse
from collector.sources.binance_parse import Source, parse_force_order
from collector.sources.bybit_parse import BybitInstrument
from collector.sources.okx_parse import OkxInstrument
from collector.venues import VenueLiquidation

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def um_event(
    symbol: str = "BTCUSDT",
    trade_time_ms: int = 1_795_000_000_000,
    *,
    side: str = "SELL",
    qty: str = "0.014",
    price: str = "9910",
    avg_price: str = "9910",
    st: int | None = 1,
) -> dict[str, Any]:
    """A USD-M forceOrder event in the documented shape (post-merge fields when `st`)."""
    event: dict[str, Any] = {
        "e": "forceOrder",
        "E": trade_time_ms + 3,
        "o": {
            "s": symbol,
            "S": side,
            "o": "LIMIT",
            "f": "IOC",
            "q": qty,
            "p": price,
            "ap": avg_price,
            "X": "FILLED",
            "l": qty,
            "z": qty,
            "T": trade_time_ms,
        },
    }
    if st is not None:
        event["st"] = st
        event["ps"] = symbol
    return event


def liquidation(i: int = 0, **kwargs: Any) -> MarketLiquidation:
    """A parsed UM liquidation; `i` varies the trade time so keys differ."""
    event = um_event(trade_time_ms=1_795_000_000_000 + i, **kwargs)
    return parse_force_order(
        event, source=Source("fstream", "market", "!forceOrder@arr"), received_at=NOW
    )


def session(**kwargs: Any) -> SessionRecord:
    """A ledger record for an open session."""
    defaults: dict[str, Any] = {
        "session_id": uuid.uuid4(),
        "connection": "fstream/market#0",
        "host": "fstream",
        "route": "market",
        "url": "ws://x/market/stream?streams=!forceOrder@arr",
        "streams": ("!forceOrder@arr",),
        "opened_at": NOW,
        "last_alive_at": NOW,
    }
    defaults.update(kwargs)
    return SessionRecord(**defaults)


D = Decimal


# -- other venues -----------------------------------------------------------------------------

BYBIT_RECEIVED = datetime(2026, 11, 21, 12, 0, 1, tzinfo=UTC)
BYBIT_FRAME = (
    '{"topic":"allLiquidation.ROSEUSDT","type":"snapshot","ts":1795003200500,'
    '"data":[{"T":1795003200329,"s":"ROSEUSDT","S":"Buy","v":"20000","p":"0.04499"}]}'
)
ROSE = BybitInstrument("linear", "ROSEUSDT", "LinearPerpetual", "Trading", "ROSE", "USDT", "USDT")
IOST = OkxInstrument(
    "SWAP", "IOST-USDT-SWAP", "IOST-USDT", "IOST", "USDT", "USDT", "linear",
    Decimal(1000), Decimal(1), "IOST",
)  # fmt: skip


def bybit_liquidation() -> VenueLiquidation:
    """The one row of `BYBIT_FRAME` (a long liquidated: Bybit's `S` is the position's side)."""
    rows = bybit_parse.parse_frame(
        BYBIT_FRAME, category="linear", received_at=BYBIT_RECEIVED, instruments={"ROSEUSDT": ROSE}
    )
    assert isinstance(rows, list)
    [row] = rows
    return row


def okx_detail(ts_ms: int = 1_795_003_200_010, sz: str = "13") -> dict[str, str]:
    """One `details[]` entry of an IOST-USDT-SWAP liquidation (a short liquidated)."""
    return {"bkLoss": "0", "bkPx": "0.007831", "ccy": "", "posSide": "short", "side": "buy",
            "sz": sz, "ts": str(ts_ms)}  # fmt: skip


def _okx_item(details: list[dict[str, str]]) -> dict[str, Any]:
    return {"details": details, "instFamily": "IOST-USDT", "instId": "IOST-USDT-SWAP",
            "instType": "SWAP", "uly": "IOST-USDT"}  # fmt: skip


def okx_liquidations(
    *details: dict[str, str], received_at: datetime = NOW
) -> list[VenueLiquidation]:
    """The rows of one `liquidation-orders` push carrying `details` (default: one)."""
    frame = orjson.dumps({
        "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
        "data": [_okx_item(list(details) or [okx_detail()])],
    }).decode()  # fmt: skip
    rows = okx_parse.parse_frame(frame, received_at=received_at, instruments={IOST.inst_id: IOST})
    assert isinstance(rows, list)
    return rows


def okx_rest_liquidations(
    *details: dict[str, str], received_at: datetime = NOW
) -> list[VenueLiquidation]:
    """The rows of one `GET /api/v5/public/liquidation-orders` body carrying `details`."""
    body = orjson.dumps({"code": "0", "msg": "", "data": [_okx_item(list(details))]})
    return okx_parse.parse_liquidation_orders(
        body, received_at=received_at, instruments={IOST.inst_id: IOST}
    )
