"""The venues beside Binance: `[venues]` (which are recorded), `[bybit]` and `[okx]`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from collector.config.settings import (
    DAY,
    HTTP_URL,
    UP_TO_10MIN,
    UP_TO_WEEK,
    WS_URL,
    Reconnecting,
    Rule,
    between,
    setting,
    subset,
)

VENUE_NAMES = ("binance", "bybit", "okx")
"""The venues the collector can record (`collector.venues.Venue`)."""


def _venue_names(names: tuple[str, ...], _problems: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip().lower() for n in names))


@dataclass(frozen=True, slots=True)
class VenuesConfig:
    """Which venues' liquidations are recorded; each has its own section."""

    enabled: tuple[str, ...] = setting(
        VENUE_NAMES,
        Rule(
            lambda v: bool(v) and set(v) <= set(VENUE_NAMES),
            f"must name one or more known venues ({', '.join(VENUE_NAMES)}), got {{value!r}}",
        ),
        convert=_venue_names,
    )


@dataclass(frozen=True, slots=True)
class BybitConfig(Reconnecting):
    """Bybit's v5 public `allLiquidation.{symbol}` streams and instruments-info (docs/bybit.md),
    and the `Reconnecting` settings."""

    ws_url: str = setting("wss://stream.bybit.com", WS_URL)
    rest_url: str = setting("https://api.bybit.com", HTTP_URL)
    categories: tuple[str, ...] = setting(("linear", "inverse"), subset("linear", "inverse"))
    # The symbol list (new listings subscribed, delisted ones unsubscribed) is re-read this often.
    instruments_refresh_s: float = setting(3600.0, UP_TO_WEEK)
    # `{"op":"ping"}` this often: "we recommend sending the ping heartbeat packet every 20
    # seconds" (https://bybit-exchange.github.io/docs/v5/ws/connect); a connection whose pong
    # does not come within `pong_timeout_s` is closed and replaced.
    heartbeat_s: float = setting(20.0, between(0, 600, above=True, note=" (Bybit cuts at 10 min)"))
    pong_timeout_s: float = setting(10.0, UP_TO_10MIN)
    # "Do not build over 500 connections in 5 minutes" per domain
    # (https://bybit-exchange.github.io/docs/v5/rate-limit); we keep well under it.
    connection_attempts_per_5min: int = setting(250, between(1, 500))
    # Per connection, the JSON text of the subscribed args array (docs/bybit.md section 1.4).
    max_args_chars: int = setting(21_000, between(100, 21_000))


@dataclass(frozen=True, slots=True)
class OkxConfig(Reconnecting):
    """OKX's v5 public `liquidation-orders` channel, instruments and the REST gap repair
    (docs/okx.md), and the `Reconnecting` settings."""

    ws_url: str = setting("wss://ws.okx.com:8443", WS_URL)
    rest_url: str = setting("https://www.okx.com", HTTP_URL)
    inst_types: tuple[str, ...] = setting(
        ("SWAP", "FUTURES", "MARGIN"), subset("SWAP", "FUTURES", "MARGIN")
    )
    # Contract terms (ctVal, ctMult, ctValCcy: SWAP/FUTURES notional) are re-read this often.
    instruments_refresh_s: float = setting(3600.0, UP_TO_WEEK)
    # A text `ping` after this long without a message, below OKX's 30 s no-data cut
    # (https://www.okx.com/docs-v5/en/#overview-websocket-connect); no `pong` within
    # `pong_timeout_s` closes and replaces the connection.
    heartbeat_s: float = setting(20.0, between(0, 30, above=True, note=" (OKX cuts at 30 s)"))
    pong_timeout_s: float = setting(5.0, between(0, 30, above=True))
    # Gaps in coverage are read back from GET /api/v5/public/liquidation-orders (best effort:
    # a 404 or an error code switches it off until restart).
    repair: bool = True
    # How far back a repair reads (the endpoint keeps "the last day"), also for start-up.
    repair_lookback_s: float = setting(86400.0, between(0, DAY, above=True))
    # Requests per 2 s the repair may make; the endpoint allows 40 per IP.
    repair_requests_per_2s: int = setting(20, between(1, 40))

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from Reconnecting.validate(self)
        if self.pong_timeout_s + self.heartbeat_s >= 30:
            yield (
                "heartbeat_s/pong_timeout_s",
                (
                    "need heartbeat_s + pong_timeout_s < 30 (OKX cuts a silent link at 30 s), "
                    f"got {self.heartbeat_s!r} + {self.pong_timeout_s!r}"
                ),
            )
