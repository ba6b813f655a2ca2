"""Periodic exchangeInfo refresh: the symbol catalog, the `symbols` table, and COIN-M notional
for rows that arrived before their contract size was known."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import asyncpg
import orjson
import structlog

from collector.config import BinanceConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.model import Market
from collector.retry import Attempt, exchange_info_retry, is_transient, sleep_or_stop
from collector.sources.catalog import SymbolCatalog, SymbolInfo, parse_exchange_info

log = structlog.get_logger(__name__)

# exchangeInfo is a large body (every symbol with its filters), not a handshake: it gets this
# multiple of `open_timeout_s`.
FETCH_TIMEOUT_FACTOR = 3.0
# How much of a failed refresh's error the warning quotes.
_LOGGED_ERROR_CHARS = 300

_UPSERT = """
INSERT INTO symbols (market, symbol, pair, base_asset, quote_asset, margin_asset, contract_type,
                     contract_size, status, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (market, symbol) DO UPDATE SET
    pair = EXCLUDED.pair, base_asset = EXCLUDED.base_asset, quote_asset = EXCLUDED.quote_asset,
    margin_asset = EXCLUDED.margin_asset, contract_type = EXCLUDED.contract_type,
    contract_size = EXCLUDED.contract_size, status = EXCLUDED.status,
    updated_at = EXCLUDED.updated_at
"""
# COIN-M rows stored before their contract size was known get their notional now.
_FILL_NOTIONAL = """
UPDATE market_liquidations m
   SET notional_usd = m.filled_qty * s.contract_size
  FROM symbols s
 WHERE m.market = 'CM' AND m.notional_usd IS NULL
   AND s.market = 'CM' AND s.symbol = m.symbol AND s.contract_size IS NOT NULL
"""


async def fetch_exchange_info(
    http: aiohttp.ClientSession, config: BinanceConfig, market: Market
) -> list[SymbolInfo]:
    """GET /fapi/v1/exchangeInfo (UM) or /dapi/v1/exchangeInfo (CM): docs/binance.md §6."""
    url = (
        f"{config.fapi_url.rstrip('/')}/fapi/v1/exchangeInfo"
        if market is Market.UM
        else f"{config.dapi_url.rstrip('/')}/dapi/v1/exchangeInfo"
    )
    timeout = aiohttp.ClientTimeout(total=config.open_timeout_s * FETCH_TIMEOUT_FACTOR)
    async with http.get(url, timeout=timeout) as response:
        body = await response.read()
        if response.status != 200:
            raise MalformedPayload(f"HTTP {response.status} from {url}: {body[:200]!r}")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"invalid JSON from {url}: {exc}") from None
    return parse_exchange_info(payload, market)


async def store_symbols(pool: asyncpg.Pool, symbols: list[SymbolInfo]) -> int:
    """Upsert symbols and fill COIN-M notional that waited for a contract size."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            _UPSERT,
            [
                (
                    s.market.value, s.symbol, s.pair, s.base_asset, s.quote_asset,
                    s.margin_asset, s.contract_type, s.contract_size, s.status, now,
                )
                for s in symbols
            ],
        )  # fmt: skip
        status: str = await conn.execute(_FILL_NOTIONAL)
    return int(status.rsplit(" ", 1)[1])


async def refresh_once(
    http: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    config: BinanceConfig,
    catalog: SymbolCatalog,
    metrics: Metrics,
) -> bool:
    """Refresh both markets; return True when both succeeded."""
    ok = True
    for market in (Market.UM, Market.CM):
        try:
            symbols = await fetch_exchange_info(http, config, market)
            catalog.update(market, symbols)
            filled = await store_symbols(pool, symbols)
        except Exception as exc:
            if not is_transient(exc, Attempt.REFRESH):
                raise
            ok = False
            metrics.exchange_info_refreshes.labels(market.value, "error").inc()
            log.warning(
                "exchange_info.refresh_failed",
                market=market.value,
                error=str(exc)[:_LOGGED_ERROR_CHARS],
            )
            continue
        metrics.exchange_info_refreshes.labels(market.value, "ok").inc()
        log.info("exchange_info.refreshed", market=market.value, symbols=len(symbols),
                 notional_filled=filled)  # fmt: skip
    return ok


async def run_exchange_info(
    config: BinanceConfig,
    pool: asyncpg.Pool,
    catalog: SymbolCatalog,
    metrics: Metrics,
    stop: asyncio.Event,
) -> None:
    """Refresh every `exchange_info_refresh_s` (sooner, with backoff, after a failure)."""
    backoff = exchange_info_retry(
        config.reconnect_initial_s, config.exchange_info_refresh_s
    ).backoff()
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            if await refresh_once(http, pool, config, catalog, metrics):
                backoff.reset()
                delay = config.exchange_info_refresh_s
            else:
                delay = backoff.next_delay()
            await sleep_or_stop(delay, stop)
