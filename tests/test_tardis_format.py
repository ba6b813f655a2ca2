"""The pure Tardis.dev facts of collector.files.tardis: file names, Bybit categories, sides,
exact microseconds."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from collector.files import tardis
from collector.venues import LiquidatedSide


@pytest.mark.parametrize(
    ("exchange", "symbol", "expected"),
    [
        ("binance-futures", "BTCUSDT", "binance-futures_liquidations_2026-11-18_BTCUSDT.csv.gz"),
        ("okex-swap", "BTC-USDT-SWAP", "okex-swap_liquidations_2026-11-18_BTC-USDT-SWAP.csv.gz"),
        ("bybit", "A/B:C", "bybit_liquidations_2026-11-18_A-B-C.csv.gz"),
    ],
)
def test_file_names_are_tardis_download_names(exchange: str, symbol: str, expected: str) -> None:
    """As tardis-node's getFilenameDefault names them, unsafe characters as '-'; and back."""
    assert tardis.file_name(exchange, date(2026, 11, 18), symbol) == expected
    parsed = tardis.parse_file_name(expected)
    assert parsed is not None
    assert parsed[:2] == (exchange, date(2026, 11, 18))


def test_parse_file_name_reads_exchange_day_and_symbol() -> None:
    """A download's name gives its exchange, day and symbol; other names give None."""
    assert tardis.parse_file_name("okex-swap_liquidations_2026-11-18_BTC-USDT-SWAP.csv") == (
        "okex-swap", date(2026, 11, 18), "BTC-USDT-SWAP",
    )  # fmt: skip
    assert tardis.parse_file_name("binance-futures_trades_2026-11-18_BTCUSDT.csv.gz") is None
    assert tardis.parse_file_name("bybit_liquidations_2026-13-40_X.csv.gz") is None


@pytest.mark.parametrize(
    ("symbol", "category"),
    [("BTCUSD", "inverse"), ("BTCUSDH26", "inverse"), ("BTCUSDT", "linear"),
     ("BTCPERP", "linear"), ("BTC-26DEC25", "linear"), ("BTCUSDT-26DEC25", "linear"),
     ("1000PEPEUSDT", "linear"), ("ETHUSDC", "linear")],
)  # fmt: skip
def test_bybit_category_from_the_symbol(symbol: str, category: str) -> None:
    """Bybit's inverse contracts end in USD (or USD and a quarterly code); the rest are linear."""
    assert tardis.bybit_category(symbol) == category


def test_side_and_microseconds() -> None:
    """A short liquidated is `buy`, a long `sell`; microseconds are exact both ways."""
    assert (tardis.side(LiquidatedSide.SHORT), tardis.side(LiquidatedSide.LONG)) == ("buy", "sell")
    moment = datetime(2026, 11, 18, 23, 59, 59, 999999, tzinfo=UTC)
    assert tardis.micros(moment) == 1_795_046_399_999_999
    assert tardis.from_micros(1_795_046_399_999_999) == moment
