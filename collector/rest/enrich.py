"""Enrichment of margin force orders: the full order of each (docs/binance.md §4.3), looked up
at backfill priority, so every scope's fresh reads go first. Rows stay whatever happens; a final
failure is written to the row, and trouble that may pass (the key, the network) leaves the rest
for the next poll."""

from __future__ import annotations

import asyncio
import functools

import structlog

from collector.exceptions import MalformedPayload
from collector.rest import store
from collector.rest.client import AuthError, RequestRejected, TransientRestError
from collector.rest.context import PollerContext
from collector.rest.endpoints import OrderLookupSpec
from collector.rest.parse import parse_margin_order


def needs_isolated_flag(lookup: OrderLookupSpec) -> bool:
    """Classic margin lookups (sapi) need `isIsolated=TRUE` for isolated pairs."""
    return lookup.family == "sapi"


async def enrich(
    ctx: PollerContext, path: str, stop: asyncio.Event, log: structlog.typing.FilteringBoundLogger
) -> None:
    """Look up the full order of up to `enrich_per_poll` margin force orders of endpoint `path`
    not yet enriched. A rejected or malformed answer is stored as the row's enrichment error;
    an auth failure or transient trouble stops this round (counted, logged)."""
    account = ctx.account.name
    pending = await ctx.database(
        lambda: store.pending_enrichment(ctx.pool, account, path, ctx.rest.enrich_per_poll),
        stop,
        log,
    )
    outcome = ctx.metrics.account_enrichment
    for symbol, order_id, is_isolated in pending:
        params: list[tuple[str, str | int]] = [("symbol", symbol), ("orderId", order_id)]
        if needs_isolated_flag(ctx.lookup) and is_isolated:
            params.append(("isIsolated", "TRUE"))
        try:
            payload = await ctx.client.get_signed(
                ctx.lookup.family, ctx.lookup.path, params, ctx.lookup.weight,
                ctx.credentials, stop, is_backfill=True,  # after every fresh read
            )  # fmt: skip
            enrichment = parse_margin_order(payload)
        except (RequestRejected, MalformedPayload) as exc:
            outcome.labels(account, "failed").inc()
            failed = functools.partial(
                store.store_enrichment_error, ctx.pool, account, symbol, order_id, str(exc)
            )
            await ctx.database(failed, stop, log)
            continue
        except AuthError as exc:
            outcome.labels(account, "auth_error").inc()
            log.warning("account.enrichment_auth_failed", code=exc.code, msg=exc.msg)
            return
        except TransientRestError as exc:
            outcome.labels(account, "retry_later").inc()
            log.warning("account.enrichment_deferred", error=str(exc))
            return
        stored = functools.partial(
            store.store_enrichment, ctx.pool, account, symbol, order_id, enrichment
        )
        await ctx.database(stored, stop, log)
        outcome.labels(account, "ok").inc()
