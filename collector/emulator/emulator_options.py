"""How the Binance emulator (`core.Emulator`) behaves: `EmulatorOptions`, defaulting to
Binance's documented values (docs/binance.md §1.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Final

from collector.emulator.events import DEFAULT_CM_SYMBOLS, DEFAULT_UM_SYMBOLS, synthetic_symbols
from collector.emulator.market_rest import REQUEST_WEIGHT_LIMIT

_HEADROOM: Final = 1.25
"""Symbols per (event/s) that `for_rate` provides, so random picks rarely find none ready."""


@dataclass(frozen=True, slots=True)
class EmulatorOptions:
    """How the emulator behaves. Defaults are Binance's documented values (§1.4).

    A generated rate above the number of symbols is capped by the one-event-per-symbol-per-second
    rule (`stats.events_rate_capped` counts the shortfall); `for_rate` sizes the universe.
    """

    seed: int = 0
    rate_per_s: float = 0.0
    """Generated liquidation events per second across all symbols; 0 = none (publish by hand)."""
    um_symbols: tuple[str, ...] = DEFAULT_UM_SYMBOLS
    cm_symbols: tuple[str, ...] = DEFAULT_CM_SYMBOLS
    cm_share: float = 0.1
    """Fraction of generated events that are COIN-M (while CM symbols are ready to emit)."""
    merged: bool = True
    """Post-2026-06-30 merge: both hosts carry both universes and events carry `st`/`ps`."""
    ping_interval_s: float = 180.0
    pong_timeout_s: float = 600.0
    max_lifetime_s: float = 86400.0
    max_streams_um: int = 1024
    max_streams_cm: int = 200
    max_incoming_per_s: int = 10
    weight_limit_1m: int = REQUEST_WEIGHT_LIMIT
    """fapi + dapi request weight per minute before 429 (§3.1)."""

    def __post_init__(self) -> None:
        problems = []
        if self.rate_per_s < 0 or not math.isfinite(self.rate_per_s):
            problems.append("rate_per_s must be a finite number >= 0")
        if not 0.0 <= self.cm_share <= 1.0:
            problems.append("cm_share must be within [0, 1]")
        if not self.um_symbols and not self.cm_symbols:
            problems.append("um_symbols and cm_symbols are both empty")
        if set(self.um_symbols) & set(self.cm_symbols):
            problems.append("a symbol cannot be both USD-M and COIN-M")
        for name in ("ping_interval_s", "pong_timeout_s", "max_lifetime_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        for name in ("max_streams_um", "max_streams_cm", "max_incoming_per_s", "weight_limit_1m"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise ValueError("invalid EmulatorOptions: " + "; ".join(problems))

    @classmethod
    def for_rate(cls, rate_per_s: float, **changes: Any) -> EmulatorOptions:
        """Options generating `rate_per_s` events/s, with synthetic USD-M symbols added when the
        universe is too small for that rate under the 1000 ms snapshot rule."""
        options = cls(rate_per_s=rate_per_s, **changes)
        universe = len(options.um_symbols) + len(options.cm_symbols)
        missing = math.ceil(rate_per_s * _HEADROOM) - universe
        if missing <= 0:
            return options
        # At most len(taken) candidates collide with names already in the universe.
        taken = set(options.um_symbols)
        candidates = synthetic_symbols(missing + len(taken))
        extra = [s for s in candidates if s not in taken][:missing]
        return replace(options, um_symbols=options.um_symbols + tuple(extra))
