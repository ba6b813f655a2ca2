"""Symbols known from exchangeInfo: COIN-M contract sizes and the set of listed symbols.

`parse_exchange_info` is pure; `SymbolCatalog` is the shared, in-memory view the websocket
source reads on its hot path (plain dict lookups, replaced wholesale on refresh).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from collector.exceptions import MalformedPayload
from collector.model import Market


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One symbol of `GET /fapi/v1/exchangeInfo` or `GET /dapi/v1/exchangeInfo`."""

    market: Market
    symbol: str
    pair: str | None
    base_asset: str | None
    quote_asset: str | None
    margin_asset: str | None
    contract_type: str | None
    contract_size: Decimal | None
    status: str | None


def _opt_str(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) else None


def parse_exchange_info(payload: Any, market: Market) -> list[SymbolInfo]:
    """Symbols from an exchangeInfo body. USD-M has `status`, COIN-M `contractStatus` and
    `contractSize` (docs/binance.md §6). Unknown fields are ignored."""
    if not isinstance(payload, dict) or not isinstance(payload.get("symbols"), list):
        raise MalformedPayload("exchangeInfo without a symbols list", field="symbols")
    result: list[SymbolInfo] = []
    for entry in payload["symbols"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
            continue
        size: Decimal | None = None
        raw_size = entry.get("contractSize")
        if isinstance(raw_size, int | str) and not isinstance(raw_size, bool):
            try:
                size = Decimal(raw_size)
            except InvalidOperation:
                size = None
        result.append(
            SymbolInfo(
                market=market,
                symbol=entry["symbol"],
                pair=_opt_str(entry, "pair"),
                base_asset=_opt_str(entry, "baseAsset"),
                quote_asset=_opt_str(entry, "quoteAsset"),
                margin_asset=_opt_str(entry, "marginAsset"),
                contract_type=_opt_str(entry, "contractType"),
                contract_size=size,
                status=_opt_str(entry, "contractStatus") or _opt_str(entry, "status"),
            )
        )
    return result


class SymbolCatalog:
    """What exchangeInfo says, per market; empty until the first load."""

    def __init__(self) -> None:
        self._symbols: dict[Market, dict[str, SymbolInfo]] = {}
        self.contract_sizes: dict[str, Decimal] = {}
        self.version = 0  # bumped on every update, so readers can cache answers

    def update(self, market: Market, symbols: list[SymbolInfo]) -> None:
        """Replace one market's symbols."""
        self._symbols[market] = {s.symbol: s for s in symbols}
        sizes: dict[str, Decimal] = {}
        for by_symbol in self._symbols.values():
            for s in by_symbol.values():
                if s.contract_size is not None and s.market is Market.CM:
                    sizes[s.symbol] = s.contract_size
        self.contract_sizes = sizes
        self.version += 1

    def is_known(self, market: Market, symbol: str) -> bool | None:
        """Whether `symbol` is listed; None when that market is not loaded yet."""
        by_symbol = self._symbols.get(market)
        if by_symbol is None:
            return None
        return symbol in by_symbol
