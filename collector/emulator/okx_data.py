"""The OKX emulator's instruments and wire shapes (docs/okx.md): the instruments it lists, a
`details[]` entry of the `liquidation-orders` channel, an instruments row, and seeded details
for generated traffic. Pure; the server is `okx`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

from collector.emulator.events import fixed_point


@dataclass(frozen=True, slots=True)
class OkxInstrumentSpec:
    """An instrument the emulator lists: enough to build an instruments row and events."""

    inst_type: str
    inst_id: str
    ct_val: str = ""
    ct_val_ccy: str = ""
    ct_type: str = ""
    settle_ccy: str = ""
    price: float = 1.0
    lot: str = "1"
    alias: str = ""  # FUTURES: this_week, next_week, quarter, ...

    @property
    def family(self) -> str:
        """ "BTC-USDT-SWAP" → "BTC-USDT"; MARGIN ids are their own family-like pair."""
        base, quote = self.inst_id.split("-")[:2]
        return f"{base}-{quote}"


DEFAULT_INSTRUMENTS: Final = (
    OkxInstrumentSpec("SWAP", "BTC-USDT-SWAP", "0.01", "BTC", "linear", "USDT", 65000.0),
    OkxInstrumentSpec("SWAP", "ETH-USDT-SWAP", "0.1", "ETH", "linear", "USDT", 3200.0),
    OkxInstrumentSpec("SWAP", "IOST-USDT-SWAP", "1000", "IOST", "linear", "USDT", 0.0078),
    OkxInstrumentSpec("SWAP", "BTC-USD-SWAP", "100", "USD", "inverse", "BTC", 65000.0),
    OkxInstrumentSpec(
        "FUTURES", "BTC-USDT-261225", "0.01", "BTC", "linear", "USDT", 66000.0, alias="quarter"
    ),
    OkxInstrumentSpec(
        "FUTURES", "BTC-USD-261225", "100", "USD", "inverse", "BTC", 66000.0, alias="quarter"
    ),
    OkxInstrumentSpec("MARGIN", "BTC-USDT", price=65000.0, lot="0.00000001"),
)


def make_okx_detail(
    side: str, pos_side: str, sz: str, bk_px: str, ts_ms: int, *, bk_loss: str = "0", ccy: str = ""
) -> dict[str, str]:
    """One `details[]` entry (section 1.2), every value a string as OKX sends them."""
    return {
        "bkLoss": bk_loss,
        "bkPx": bk_px,
        "ccy": ccy,
        "posSide": pos_side,
        "side": side,
        "sz": sz,
        "ts": str(ts_ms),
    }


def instrument_row(spec: OkxInstrumentSpec) -> dict[str, Any]:
    """A `GET /api/v5/public/instruments` row (section 2.1) for `spec`."""
    base, quote = spec.family.split("-")
    is_margin = spec.inst_type == "MARGIN"
    return {
        "instType": spec.inst_type,
        "instId": spec.inst_id,
        "alias": spec.alias,
        "uly": spec.family,
        "instFamily": "" if is_margin else spec.family,
        "baseCcy": base if is_margin else "",
        "quoteCcy": quote if is_margin else "",
        "settleCcy": spec.settle_ccy,
        "ctVal": spec.ct_val,
        "ctMult": "" if is_margin else "1",
        "ctValCcy": spec.ct_val_ccy,
        "ctType": spec.ct_type,
        "listTime": "1606468572000",
        "expTime": "",
        "lever": "10",
        "tickSz": "0.1",
        "lotSz": spec.lot,
        "minSz": spec.lot,
        "state": "live",
        "ruleType": "normal",
    }


def generated_detail(spec: OkxInstrumentSpec, rng: random.Random, now_ms: int) -> dict[str, str]:
    """One seeded liquidation detail for `spec` (net or hedge mode, a whole number of lots)."""
    price = spec.price * (0.99 + 0.02 * rng.random())
    decimals = 6 if price < 1 else 2
    px = fixed_point(max(1, round(price * 10**decimals)), decimals)
    lots = 1 + int(rng.random() * 200)
    lot_decimals = max(0, len(spec.lot.partition(".")[2]))
    sz = fixed_point(lots * max(1, int(spec.lot.replace(".", ""))), lot_decimals)
    is_long = rng.random() < 0.55
    pos_side = rng.choice(("net", "long" if is_long else "short"))
    side = "sell" if is_long else "buy"
    if spec.inst_type == "MARGIN":
        return make_okx_detail(side, "net", sz, px, now_ms - 1, ccy=spec.family.split("-")[1])
    return make_okx_detail(side, pos_side, sz, px, now_ms - 1)
