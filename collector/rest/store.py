"""Postgres side of the account pollers: upserts into `account_force_orders` and the
checkpoints in `account_poll_checkpoints`, committed together in one transaction per window so
a restart resumes exactly after the last committed window.

A row is inserted once; a later `update_time` updates it; a repeat changes nothing (not even
`last_seen_at`). Enrichment columns are written only by `store_enrichment`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
import structlog

from collector import wire
from collector.rest.parse import AccountForceOrder, Enrichment
from collector.retry import is_data_error

log = structlog.get_logger(__name__)

_UPSERT = """
INSERT INTO account_force_orders AS t (
    account, product, symbol, order_id, endpoint, auto_close_type, side, position_side, status,
    order_type, orig_type, time_in_force, client_order_id, price, avg_price, orig_qty,
    executed_qty, cum_quote, cum_base, pair, is_isolated, order_time, update_time, notional,
    notional_asset, first_seen_at, last_seen_at, raw)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20, $21, $22, $23,
        COALESCE($24::numeric, CASE WHEN $2 = 'cm' THEN $17::numeric * (
            SELECT s.contract_size FROM symbols s WHERE s.market = 'CM' AND s.symbol = $3) END),
        $25, $26, $26, $27::jsonb)
ON CONFLICT (account, product, symbol, order_id) DO UPDATE SET
    endpoint = EXCLUDED.endpoint,
    auto_close_type = EXCLUDED.auto_close_type,
    side = EXCLUDED.side,
    position_side = EXCLUDED.position_side,
    -- Margin rows lack these; the order lookup's values survive a later row.
    status = COALESCE(EXCLUDED.status, t.status),
    order_type = COALESCE(EXCLUDED.order_type, t.order_type),
    orig_type = COALESCE(EXCLUDED.orig_type, t.orig_type),
    time_in_force = EXCLUDED.time_in_force,
    client_order_id = COALESCE(EXCLUDED.client_order_id, t.client_order_id),
    price = EXCLUDED.price,
    avg_price = EXCLUDED.avg_price,
    orig_qty = EXCLUDED.orig_qty,
    executed_qty = EXCLUDED.executed_qty,
    cum_quote = EXCLUDED.cum_quote,
    cum_base = EXCLUDED.cum_base,
    pair = EXCLUDED.pair,
    is_isolated = EXCLUDED.is_isolated,
    order_time = CASE WHEN t.enrichment ? 'time' THEN t.order_time ELSE EXCLUDED.order_time END,
    update_time = EXCLUDED.update_time,
    notional = COALESCE(EXCLUDED.notional, t.notional),
    notional_asset = EXCLUDED.notional_asset,
    last_seen_at = EXCLUDED.last_seen_at,
    raw = EXCLUDED.raw
WHERE EXCLUDED.update_time > t.update_time
RETURNING (xmax = 0) AS inserted
"""

_LOAD_CHECKPOINT = """
SELECT horizon_at, covered_until, backfill_complete, unavailable_reason
  FROM account_poll_checkpoints
 WHERE account = $1 AND endpoint = $2 AND scope = $3
"""

_SAVE_CHECKPOINT = """
INSERT INTO account_poll_checkpoints AS t (account, endpoint, scope, horizon_at, covered_until,
                                           backfill_complete, last_poll_at, updated_at,
                                           unavailable_reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
ON CONFLICT (account, endpoint, scope) DO UPDATE SET
    horizon_at = EXCLUDED.horizon_at, covered_until = EXCLUDED.covered_until,
    backfill_complete = EXCLUDED.backfill_complete, last_poll_at = EXCLUDED.last_poll_at,
    updated_at = EXCLUDED.updated_at,
    unavailable_reason = COALESCE(EXCLUDED.unavailable_reason, t.unavailable_reason)
"""

# Once per (source, reason, raw): a window re-read by a later poll (the overlap) does not
# dead-letter the same row or window again.
_DEAD_LETTER = """
INSERT INTO dead_letters (received_at, source, reason, detail, raw)
SELECT $1, $2, $3, $4, $5
 WHERE NOT EXISTS (SELECT 1 FROM dead_letters
                    WHERE source LIKE 'account:%' AND source = $2 AND reason = $3 AND raw = $5)
"""

_PENDING_ENRICHMENT = """
SELECT symbol, order_id, is_isolated FROM account_force_orders
 WHERE account = $1 AND endpoint = $2 AND product = 'margin'
   AND enrichment IS NULL AND enrichment_error IS NULL
 ORDER BY update_time DESC
 LIMIT $3
"""

_STORE_ENRICHMENT = """
UPDATE account_force_orders SET
    enrichment = $5::jsonb,
    enrichment_error = NULL,
    order_time = COALESCE($6, order_time),
    order_type = COALESCE($7, order_type),
    client_order_id = COALESCE($8, client_order_id),
    status = COALESCE($9, status),
    time_in_force = COALESCE(time_in_force, $10)
 WHERE account = $1 AND product = $2 AND symbol = $3 AND order_id = $4
"""

_STORE_ENRICHMENT_ERROR = """
UPDATE account_force_orders SET enrichment_error = $5
 WHERE account = $1 AND product = $2 AND symbol = $3 AND order_id = $4
"""


def dt_to_ms(value: datetime) -> int:
    """A datetime as epoch milliseconds."""
    return round(value.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far one (account, endpoint, scope) has been read, in epoch ms."""

    horizon_ms: int
    covered_until_ms: int
    backfill_complete: bool
    # Why the last window skipped as unavailable was; a save without one keeps the saved one.
    unavailable_reason: str | None = None


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """Outcome of one window's upserts, and the dead letters it added (a repeat adds none)."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0  # rows Postgres refused, dead-lettered as `db_rejected`
    dead_lettered: tuple[BadRow, ...] = ()


@dataclass(frozen=True, slots=True)
class BadRow:
    """Something a person should look at, dead-lettered with the reason: a row that did not
    parse (`malformed`) or that Postgres refused (`db_rejected`), or a window that could not be
    read whole (`raw` is the window as JSON): `window_truncated` (more rows in one millisecond
    than a page holds) or `window_unavailable` (Binance can only reject it: older than it
    keeps, a span it never accepts)."""

    raw: bytes
    reason: str
    kind: str = "malformed"


def latest_per_key(rows: Iterable[AccountForceOrder]) -> list[AccountForceOrder]:
    """One row per key (windows overlap by design), keeping the latest `update_time`."""
    best: dict[tuple[str, str, str, int], AccountForceOrder] = {}
    epoch = datetime.min.replace(tzinfo=UTC)
    for row in rows:
        seen = best.get(row.key)
        if seen is None or (row.update_time or epoch) > (seen.update_time or epoch):
            best[row.key] = row
    return list(best.values())


async def load_checkpoint(
    pool: asyncpg.Pool, account: str, endpoint: str, scope: str
) -> Checkpoint | None:
    """The saved checkpoint, or None before the first committed window."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_LOAD_CHECKPOINT, account, endpoint, scope)
    if row is None:
        return None
    return Checkpoint(
        dt_to_ms(row["horizon_at"]), dt_to_ms(row["covered_until"]), row["backfill_complete"],
        row["unavailable_reason"],
    )  # fmt: skip


async def commit_window(
    pool: asyncpg.Pool,
    account: str,
    endpoint: str,
    scope: str,
    rows: Sequence[AccountForceOrder],
    checkpoint: Checkpoint,
    *,
    bad_rows: Sequence[BadRow] = (),
    now: datetime | None = None,
) -> WriteCounts:
    """Upsert `rows`, dead-letter `bad_rows` and save `checkpoint` in one transaction; return
    the row outcomes. A row Postgres rejects (SQLSTATE class 22/23: a NUL in a string, an
    out-of-range value) is isolated by retrying the rows one by one and dead-lettered, so the
    rest of the window and the checkpoint still commit."""
    now = now or datetime.now(tz=UTC)
    unique = latest_per_key(rows)
    source = f"account:{account}:{endpoint}"
    async with pool.acquire() as conn, conn.transaction():
        try:
            async with conn.transaction():  # a savepoint: a rejected row costs only a retry
                results: list[bool | BadRow | None] = [await _upsert(conn, r, now) for r in unique]
        except Exception as exc:
            if not is_rejected_row(exc):
                raise
            results = [await _upsert_isolated(conn, r, now) for r in unique]
        rejected: list[BadRow] = [r for r in results if isinstance(r, BadRow)]
        dead: list[BadRow] = []
        for bad in [*bad_rows, *rejected]:
            status = await conn.execute(
                _DEAD_LETTER, now, source, bad.kind, _nul_free(bad.reason), bad.raw
            )
            if status.endswith(" 1"):
                dead.append(bad)
        await conn.execute(
            _SAVE_CHECKPOINT,
            account,
            endpoint,
            scope,
            wire.millis(checkpoint.horizon_ms, "horizon_ms"),
            wire.millis(checkpoint.covered_until_ms, "covered_until_ms"),
            checkpoint.backfill_complete,
            now,
            checkpoint.unavailable_reason,
        )
    new = sum(1 for r in results if r is True)
    updated = sum(1 for r in results if r is False)
    unchanged = len(unique) - new - updated - len(rejected)
    return WriteCounts(new, updated, unchanged, len(rejected), tuple(dead))


def is_rejected_row(exc: BaseException) -> bool:
    """Whether `exc` says the row itself cannot be stored: Postgres refused its data (SQLSTATE
    class 22 or 23), or asyncpg could not encode an argument."""
    if isinstance(exc, asyncpg.InterfaceError):
        return isinstance(exc, ValueError)  # asyncpg's own DataError: invalid query input
    return is_data_error(exc)


def _nul_free(text: str) -> str:
    """Postgres text cannot hold NUL; a dead letter's reason may quote input that does."""
    return text.replace("\x00", "\\u0000")


async def _upsert(conn: asyncpg.Connection, r: AccountForceOrder, now: datetime) -> bool | None:
    """Upsert one row: True inserted, False updated, None unchanged."""
    result = await conn.fetchrow(
        _UPSERT,
        r.account, r.product, r.symbol, r.order_id, r.endpoint, r.auto_close_type,
        r.side, r.position_side, r.status, r.order_type, r.orig_type, r.time_in_force,
        r.client_order_id, r.price, r.avg_price, r.orig_qty, r.executed_qty,
        r.cum_quote, r.cum_base, r.pair, r.is_isolated, r.order_time, r.update_time,
        r.notional, r.notional_asset, now, orjson.dumps(dict(r.raw)).decode(),
    )  # fmt: skip
    return None if result is None else bool(result["inserted"])


async def _upsert_isolated(
    conn: asyncpg.Connection, r: AccountForceOrder, now: datetime
) -> bool | BadRow | None:
    """Upsert one row in its own savepoint; a rejected row comes back as its dead letter."""
    try:
        async with conn.transaction():
            return await _upsert(conn, r, now)
    except Exception as exc:
        if not is_rejected_row(exc):
            raise
        log.warning("account.row_rejected", account=r.account, endpoint=r.endpoint,
                    symbol=r.symbol, order_id=r.order_id, sqlstate=getattr(exc, "sqlstate", None),
                    error=str(exc)[:200])  # fmt: skip
        reason = f"{getattr(exc, 'sqlstate', None) or type(exc).__name__}: {exc}"[:1000]
        return BadRow(orjson.dumps(dict(r.raw)), reason, "db_rejected")


async def pending_enrichment(
    pool: asyncpg.Pool, account: str, endpoint: str, limit: int
) -> list[tuple[str, int, bool | None]]:
    """Margin rows of `account` from `endpoint` not yet looked up: (symbol, orderId,
    is_isolated), newest first."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_PENDING_ENRICHMENT, account, endpoint, limit)
    return [(r["symbol"], r["order_id"], r["is_isolated"]) for r in rows]


async def store_enrichment(
    pool: asyncpg.Pool, account: str, symbol: str, order_id: int, enrichment: Enrichment
) -> None:
    """Attach the margin order lookup to its force order (times, type, client id, status)."""
    async with pool.acquire() as conn:
        await conn.execute(
            _STORE_ENRICHMENT, account, "margin", symbol, order_id,
            orjson.dumps(dict(enrichment.raw)).decode(), enrichment.order_time,
            enrichment.order_type, enrichment.client_order_id, enrichment.status,
            enrichment.time_in_force,
        )  # fmt: skip


async def store_enrichment_error(
    pool: asyncpg.Pool, account: str, symbol: str, order_id: int, error: str
) -> None:
    """Record why a margin order lookup failed for good; the row itself stays."""
    async with pool.acquire() as conn:
        await conn.execute(_STORE_ENRICHMENT_ERROR, account, "margin", symbol, order_id, error)
