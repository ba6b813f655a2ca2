"""Builders for test records and events (plain functions, no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from collector.model import MarketLiquidation, SessionRecord
from collector.sources.binance_parse import Source, parse_force_order

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
