"""`judge_event` and `find_anomalies`: one data frame in, its verdict and the anomalies of its
row out, without a socket."""

from __future__ import annotations

from typing import Any

import orjson

from collector.model import Market, MarketLiquidation
from collector.sources.binance_parse import (
    Anomaly,
    DataFrame,
    Source,
    Verdict,
    find_anomalies,
    judge_event,
    parse_force_order,
)
from collector.sources.catalog import SymbolCatalog, SymbolInfo
from tests.factories import NOW, um_event

SRC = Source("fstream", "market", "!forceOrder@arr")


def listing(*symbols: str) -> SymbolCatalog:
    """A catalog whose USD-M market lists `symbols` (COIN-M not loaded)."""
    catalog = SymbolCatalog()
    infos = [SymbolInfo(Market.UM, s, s, None, None, None, None, None, "TRADING") for s in symbols]
    catalog.update(Market.UM, infos)
    return catalog


def frame_of(event: dict[str, Any]) -> tuple[DataFrame, str]:
    """`event` in a combined-stream frame, and that frame's text."""
    return DataFrame(SRC.stream, event), orjson.dumps(
        {"stream": SRC.stream, "data": event}
    ).decode()


def judge(event: dict[str, Any]) -> Verdict:
    """The verdict on `event`, asked as the session asks."""
    frame, raw = frame_of(event)
    return judge_event(frame, source=SRC, received_at=NOW, raw=raw, received_monotonic=12.5)


def anomalies(event: dict[str, Any], catalog: SymbolCatalog) -> tuple[Anomaly, ...]:
    """The anomalies of `event`'s row against `catalog`."""
    frame, _ = frame_of(event)
    row = judge(event).row
    assert isinstance(row, MarketLiquidation)
    return find_anomalies(frame, row, is_known=catalog.is_known)


def test_a_documented_event_is_its_row() -> None:
    """The documented payload comes back as exactly the row `parse_force_order` makes."""
    event = um_event("BTCUSDT")
    _, raw = frame_of(event)
    row = parse_force_order(event, source=SRC, received_at=NOW, raw=raw, received_monotonic=12.5)
    assert judge(event) == Verdict(row, "", "")


def test_an_event_of_another_type_is_dead_lettered_as_unknown_event() -> None:
    """An event whose `e` is not forceOrder gets no row, only its dead-letter reason."""
    assert judge({**um_event(), "e": "aggTrade"}) == Verdict(
        None, "unknown_event", "unknown event type 'aggTrade' (field 'e')"
    )


def test_a_malformed_force_order_is_dead_lettered_as_malformed_event() -> None:
    """A forceOrder with a bad field gets no row: it is a malformed event, the field named."""
    event = um_event()
    assert judge({**event, "o": {**event["o"], "p": "nine"}}) == Verdict(
        None, "malformed_event", "not a decimal: 'nine' (field 'o.p')"
    )


def test_a_documented_event_of_a_listed_symbol_has_no_anomalies() -> None:
    """The documented payload of a symbol exchangeInfo lists is not odd at all."""
    assert anomalies(um_event("BTCUSDT"), listing("BTCUSDT")) == ()


def test_extra_fields_and_an_unlisted_symbol_are_anomalies_in_that_order() -> None:
    """Undocumented fields (sorted, `o.` inside the order) and a symbol exchangeInfo does not
    list are the row's anomalies, fields first."""
    event = um_event("NEWUSDT")
    event = {**event, "x": 2, "o": {**event["o"], "new": 1}}
    assert anomalies(event, listing("BTCUSDT")) == (
        Anomaly("unknown_field", "o.new,x"),
        Anomaly("unknown_symbol", "UM:NEWUSDT"),
    )
    assert anomalies(um_event("NEWUSDT"), listing("BTCUSDT")) == (
        Anomaly("unknown_symbol", "UM:NEWUSDT"),
    )


def test_a_symbol_is_not_unknown_before_its_market_is_loaded() -> None:
    """With no exchangeInfo for the row's market yet, no symbol is unknown."""
    assert anomalies(um_event("NEWUSDT"), SymbolCatalog()) == ()
    coin_m = {**um_event("NEWUSD_PERP"), "st": 2}
    assert anomalies(coin_m, listing("BTCUSDT")) == ()  # only USD-M is loaded
