"""Liquidation events for the emulator: the documented payload shapes and a seeded generator.

Pure code (no I/O, no clock): the caller passes the time in. Shapes follow
docs/binance.md §1.3; the generator honours the snapshot rule "for each symbol, only
the latest one liquidation order within 1000ms will be pushed" by never emitting two events for
one symbol less than 1000 ms apart.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, NamedTuple

UM: Final = 1
"""`st` value of a USDⓈ-M event after the 2026-06-30 merge (§1.3)."""
CM: Final = 2
"""`st` value of a COIN-M event after the 2026-06-30 merge (§1.3)."""

SNAPSHOT_INTERVAL_MS: Final = 1000
"""At most one event per symbol per this many milliseconds (§1.3)."""

DecimalLike = Decimal | str | int
"""What the event builder accepts for prices and quantities; floats are refused on purpose."""

_QUOTES: Final = ("USDT", "USDC", "FDUSD", "BUSD", "USD")

# Rough mid prices for the well-known symbols; synthetic symbols get a stable price from a hash.
_BASE_PRICES: Final[Mapping[str, float]] = {
    "BTC": 65000.0,
    "ETH": 3200.0,
    "SOL": 150.0,
    "BNB": 580.0,
    "XRP": 0.52,
    "DOGE": 0.12,
    "ADA": 0.45,
    "AVAX": 28.0,
    "LINK": 14.0,
    "DOT": 6.5,
    "LTC": 80.0,
    "TRX": 0.12,
    "BCH": 380.0,
    "NEAR": 5.2,
    "APT": 8.5,
    "ARB": 0.8,
    "OP": 1.7,
    "SUI": 1.1,
    "1000PEPE": 0.011,
    "WIF": 2.1,
    "FIL": 4.5,
    "ETC": 22.0,
}


def synthetic_symbols(count: int, *, start: int = 1, quote: str = "USDT") -> tuple[str, ...]:
    """Return `count` made-up USDⓈ-M symbols "SYM0001USDT", "SYM0002USDT", … from `start` on.

    They exist so that high generated rates are possible under the one-event-per-symbol-per-second
    rule: a rate of R events/s needs more than R symbols.
    """
    return tuple(f"SYM{i:04d}{quote}" for i in range(start, start + count))


DEFAULT_UM_SYMBOLS: Final[tuple[str, ...]] = (
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "BNBUSDT",
    "XRPUSDT",
    "DOGEUSDT",
    "ADAUSDT",
    "AVAXUSDT",
    "LINKUSDT",
    "DOTUSDT",
    "LTCUSDT",
    "TRXUSDT",
    "BCHUSDT",
    "NEARUSDT",
    "APTUSDT",
    "ARBUSDT",
    "OPUSDT",
    "SUIUSDT",
    "1000PEPEUSDT",
    "WIFUSDT",
    "BTCUSDC",
    "ETHUSDC",
    *synthetic_symbols(80),
)
DEFAULT_CM_SYMBOLS: Final[tuple[str, ...]] = (
    "BTCUSD_PERP",
    "ETHUSD_PERP",
    "SOLUSD_PERP",
    "BNBUSD_PERP",
    "XRPUSD_PERP",
    "DOGEUSD_PERP",
    "ADAUSD_PERP",
    "LINKUSD_PERP",
    "DOTUSD_PERP",
    "LTCUSD_PERP",
    "FILUSD_PERP",
    "ETCUSD_PERP",
)


def pair_of(symbol: str) -> str:
    """Return the pair of a symbol: "BTCUSD_PERP" → "BTCUSD", "BTCUSDT" → "BTCUSDT"."""
    return symbol.partition("_")[0]


def split_pair(pair: str) -> tuple[str, str]:
    """Split a pair into (base, quote) assets by its known quote suffix."""
    for quote in _QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote):
            return pair[: -len(quote)], quote
    return pair, ""


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """What exchangeInfo says about one symbol and what generated events for it look like."""

    symbol: str
    pair: str
    base_asset: str
    quote_asset: str
    symbol_type: int
    base_price: float
    tick_size: Decimal
    step_size: Decimal
    contract_size: int | None
    """USD per contract for COIN-M (BTC 100, others 10), None for USDⓈ-M."""


def market_spec(symbol: str, symbol_type: int) -> MarketSpec:
    """Describe `symbol` deterministically (independent of any seed), so exchangeInfo and the
    generated events agree on tick and step sizes."""
    pair = pair_of(symbol)
    base, quote = split_pair(pair)
    price = _BASE_PRICES.get(base)
    if price is None:
        # Stable log-uniform price in [0.001, 2000) from the name.
        fraction = zlib.crc32(symbol.encode()) / 2**32
        price = 10 ** (-3 + fraction * math.log10(2_000_000))
    magnitude = math.floor(math.log10(price))
    tick = Decimal(1).scaleb(max(magnitude - 5, -8))
    if symbol_type == CM:
        contract_size = 100 if base == "BTC" else 10
        step = Decimal(1)
    else:
        contract_size = None
        step = Decimal(1).scaleb(min(0, math.floor(math.log10(100 / price))))
    return MarketSpec(symbol, pair, base, quote, symbol_type, price, tick, step, contract_size)


def _text(value: DecimalLike) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | str):
        return str(value)
    raise TypeError(f"expected Decimal, str or int, got {type(value).__name__}")


def make_force_order_event(
    symbol: str,
    side: str,
    qty: DecimalLike,
    price: DecimalLike,
    avg_price: DecimalLike,
    trade_time_ms: int,
    event_time_ms: int,
    *,
    filled: DecimalLike | None = None,
    pair: str | None = None,
    symbol_type: int | None = None,
    status: str = "FILLED",
) -> dict[str, Any]:
    """Build one `forceOrder` event (the inner object, not the combined envelope).

    Shapes (docs/binance.md §1.3):

    * `symbol_type=None`: the pre-merge shape. If `pair` is given the order carries it as `o.ps`
      (the COIN-M shape), otherwise there is no pair at all (the USDⓈ-M shape).
    * `symbol_type=1` (UM, post-merge): top-level `"st":1` and `"ps"` (`pair`, default the symbol
      without any `_` suffix).
    * `symbol_type=2` (CM, post-merge): top-level `"st":2`; the pair stays inside `o` as `ps`.

    Decimal values become strings exactly as given (`Decimal` in fixed-point notation); `l` and
    `z` are `filled`, which defaults to `qty`.
    """
    order: dict[str, Any] = {"s": symbol}
    if symbol_type == CM or (symbol_type is None and pair is not None):
        order["ps"] = pair if pair is not None else pair_of(symbol)
    filled_text = _text(qty if filled is None else filled)
    order.update(
        {
            "S": side,
            "o": "LIMIT",
            "f": "IOC",
            "q": _text(qty),
            "p": _text(price),
            "ap": _text(avg_price),
            "X": status,
            "l": filled_text,
            "z": filled_text,
            "T": trade_time_ms,
        }
    )
    event: dict[str, Any] = {"e": "forceOrder", "E": event_time_ms}
    if symbol_type is not None:
        event["st"] = symbol_type
    if symbol_type == UM:
        event["ps"] = pair if pair is not None else pair_of(symbol)
    event["o"] = order
    return event


class GeneratedEvent(NamedTuple):
    """One generated event with the routing facts the emulator needs."""

    symbol: str
    symbol_type: int
    event: dict[str, Any]


class _Market:
    """Mutable state of one symbol in the generator: its spec and a random-walk mid price."""

    __slots__ = ("mid", "pair", "price_decimals", "qty_decimals", "spec", "ticks_per_unit")

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.mid = spec.base_price
        self.price_decimals = decimals_of(spec.tick_size)
        self.qty_decimals = decimals_of(spec.step_size)
        self.ticks_per_unit = 10.0**self.price_decimals
        self.pair = spec.pair


def decimals_of(size: Decimal) -> int:
    """Decimal places of a power-of-ten tick or step ("0.001" → 3, "1" → 0, "10" → -1)."""
    exponent = size.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent


def fixed_point(units: int, decimals: int) -> str:
    """Exact text of `units` * 10**-`decimals`, trailing zeros dropped as in the documented
    examples: (9910, 0) → "9910", (14, 3) → "0.014", (94965, 1) → "9496.5".

    Integer arithmetic, so the result equals `Decimal` quantization without its cost; the
    generator calls this four times per event at tens of thousands of events per second.
    """
    if decimals <= 0:
        return str(units * 10**-decimals)
    text = str(units).rjust(decimals + 1, "0")
    whole, fraction = text[:-decimals], text[-decimals:].rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


class EventGenerator:
    """Seeded source of realistic liquidation events that honours the 1000 ms snapshot rule.

    `take(count, now_ms)` returns up to `count` events stamped `now_ms`, each for a different
    symbol that has had no event in the last 1000 ms; it returns fewer when the universe is too
    small for the rate. For a given seed, the same sequence of `take` calls gives the same events.
    Prices sit on the symbol's tick and quantities on its step (as exchangeInfo lists them);
    COIN-M quantities are whole contracts.
    """

    def __init__(
        self,
        um_symbols: Iterable[str],
        cm_symbols: Iterable[str],
        *,
        seed: int = 0,
        cm_share: float = 0.1,
        merged: bool = True,
    ) -> None:
        self._rng = random.Random(seed)
        self._cm_share = cm_share
        self._merged = merged
        self._ready: dict[int, list[_Market]] = {
            UM: [_Market(market_spec(s, UM)) for s in um_symbols],
            CM: [_Market(market_spec(s, CM)) for s in cm_symbols],
        }
        # Markets that emitted recently, oldest first: (time they may emit again, market).
        self._cooling: deque[tuple[int, _Market]] = deque()
        self._last_now_ms = 0

    def ready_count(self) -> int:
        """Return how many symbols may emit right now (as of the last `take`)."""
        return len(self._ready[UM]) + len(self._ready[CM])

    def take(self, count: int, now_ms: int) -> list[GeneratedEvent]:
        """Return up to `count` events for distinct symbols that are allowed to emit at `now_ms`."""
        now_ms = max(now_ms, self._last_now_ms)  # the wall clock may step back; time may not
        self._last_now_ms = now_ms
        cooling = self._cooling
        while cooling and cooling[0][0] <= now_ms:
            market = cooling.popleft()[1]
            self._ready[market.spec.symbol_type].append(market)
        random_ = self._rng.random
        um_pool, cm_pool = self._ready[UM], self._ready[CM]
        out: list[GeneratedEvent] = []
        for _ in range(count):
            is_cm = random_() < self._cm_share
            pool = (cm_pool or um_pool) if is_cm else (um_pool or cm_pool)
            if not pool:
                break
            index = int(random_() * len(pool))
            market = pool[index]
            pool[index] = pool[-1]
            pool.pop()
            cooling.append((now_ms + SNAPSHOT_INTERVAL_MS, market))
            out.append(self._event(market, now_ms))
        return out

    def _event(self, market: _Market, now_ms: int) -> GeneratedEvent:
        random_ = self._rng.random
        spec = market.spec
        # A gentle random walk (±0.3 % a step), kept within a factor of two of the base price.
        mid = market.mid * (0.997 + 0.006 * random_())
        market.mid = mid = min(max(mid, spec.base_price / 2), spec.base_price * 2)
        is_sell = random_() < 0.55
        avg_ticks = max(1, round(mid * market.ticks_per_unit))
        # The order price is the bankruptcy price: below the fill for a SELL, above for a BUY.
        gap_ticks = max(1, round(avg_ticks * (0.001 + 0.019 * random_())))
        order_ticks = max(1, avg_ticks - gap_ticks if is_sell else avg_ticks + gap_ticks)
        notional = 20.0 * 12_500.0 ** random_()  # log-uniform in [20, 250 000) USD
        if spec.contract_size is not None:
            qty_units = max(1, round(notional / spec.contract_size))
        else:
            qty_units = max(1, round(notional / mid * 10.0**market.qty_decimals))
        qty = fixed_point(qty_units, market.qty_decimals)
        order: dict[str, Any] = {"s": spec.symbol}
        event: dict[str, Any] = {"e": "forceOrder", "E": now_ms}
        if spec.symbol_type == CM:
            order["ps"] = market.pair
            if self._merged:
                event["st"] = CM
        elif self._merged:
            event["st"] = UM
            event["ps"] = market.pair
        order["S"] = "SELL" if is_sell else "BUY"
        order["o"] = "LIMIT"
        order["f"] = "IOC"
        order["q"] = qty
        order["p"] = fixed_point(order_ticks, market.price_decimals)
        order["ap"] = fixed_point(avg_ticks, market.price_decimals)
        order["X"] = "FILLED"
        order["l"] = qty
        order["z"] = qty
        order["T"] = now_ms - 1 - int(40 * random_())
        event["o"] = order
        return GeneratedEvent(spec.symbol, spec.symbol_type, event)


def specs(symbols: Sequence[str], symbol_type: int) -> list[MarketSpec]:
    """Return the market specs of `symbols`, in order."""
    return [market_spec(s, symbol_type) for s in symbols]
