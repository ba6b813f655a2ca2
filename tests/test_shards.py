"""Stream planning: connections within Binance's per-connection limits, routed URLs."""

from __future__ import annotations

from collector.config import BinanceConfig
from collector.sources.binance_plan import ShardSpec, plan_shards


def test_default_is_one_routed_all_market_connection() -> None:
    """By default one fstream /market connection carries !forceOrder@arr."""
    [spec] = plan_shards(BinanceConfig())
    assert spec == ShardSpec(
        "fstream/market#0", "fstream", "market", "wss://fstream.binance.com", ("!forceOrder@arr",)
    )
    assert spec.url == "wss://fstream.binance.com/market/stream?streams=!forceOrder@arr"


def test_streams_are_sharded_within_the_per_connection_limits() -> None:
    """1,500 USD-M streams need two connections; 250 COIN-M streams need two of 200."""
    config = BinanceConfig(
        usdm_symbols=tuple(f"S{i}USDT" for i in range(1499)),
        coin_m_all_market=True,
        coinm_symbols=tuple(f"C{i}USD_PERP" for i in range(249)),
    )
    specs = plan_shards(config)
    assert [(s.name, len(s.streams)) for s in specs] == [
        ("fstream/market#0", 1024),
        ("fstream/market#1", 476),
        ("dstream/root#2", 200),
        ("dstream/root#3", 50),
    ]
    assert specs[0].streams[:2] == ("!forceOrder@arr", "s0usdt@forceOrder")
    # URLs stay short: the first 50 streams go in the URL, the rest are SUBSCRIBEd.
    assert len(specs[0].url.split("streams=")[1].split("/")) == 50
    assert specs[2].url.startswith("wss://dstream.binance.com/stream?streams=!forceOrder@arr/")


def test_duplicate_symbols_are_subscribed_once() -> None:
    """A symbol listed twice is one stream."""
    [spec] = plan_shards(BinanceConfig(all_market=False, usdm_symbols=("BTCUSDT", "btcusdt")))
    assert spec.streams == ("btcusdt@forceOrder",)
