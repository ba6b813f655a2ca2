"""The run phase's components, by name: what the configuration enables, and nothing else.

A feature's code is imported only when it is on: a venue's source when `[venues] enabled`
names it, the account pollers when `[[accounts]]` lists one, the alerts and the NATS publisher
when configured (`collector.runtime.Runtime` holds them). What is off is neither loaded nor
resident: the Bybit, OKX, account and alert modules are about 1.8 MB (VmRSS after importing
them, Python 3.11).
"""

from __future__ import annotations

from collections.abc import Callable

# PLC0415 below: imports inside the branch that enables their feature, on purpose (see above).
from collector.db.rollup import run_rollups
from collector.db.venue_rollup import run_venue_rollups
from collector.runtime import Component, Runtime
from collector.sink.liveness import run_database_ping


def components(
    runtime: Runtime, extra: Callable[[Runtime], dict[str, Component]] | None = None
) -> dict[str, Component]:
    """Every component the run phase supervises, by name (`extra`'s last: tests add theirs)."""
    found: dict[str, Component] = {}
    found |= _venues(runtime)
    found |= _database(runtime)
    if runtime.config.accounts:
        from collector.rest.accounts import build_account_components  # noqa: PLC0415

        found |= build_account_components(runtime.config, runtime.pool, runtime.metrics)
    if runtime.feed is not None:  # data out: the committed-order feed and its consumers
        found["feed"] = runtime.feed.run
    if runtime.alerts is not None:
        found["alerts"] = runtime.alerts.run
    if runtime.nats is not None:  # never in readiness: a dead broker does not stop collection
        found["nats"] = runtime.nats.run
    if extra is not None:
        found |= extra(runtime)
    return found


def _venues(runtime: Runtime) -> dict[str, Component]:
    """Each enabled venue's sources (Binance's with its exchangeInfo refresh)."""
    config, writer, metrics = runtime.config, runtime.writer, runtime.metrics
    enabled = config.venues.enabled
    found: dict[str, Component] = {}
    if "binance" in enabled:
        from collector.sources.binance_ws import run_ws_sources  # noqa: PLC0415
        from collector.sources.exchange_info import run_exchange_info  # noqa: PLC0415

        found["ws"] = lambda s: run_ws_sources(
            config.binance, writer, metrics, runtime.catalog, s, runtime.shards
        )
        found["exchange_info"] = lambda s: run_exchange_info(
            config.binance, runtime.pool, runtime.catalog, metrics, s
        )
    if "bybit" in enabled:
        from collector.sources.bybit_ws import run_bybit  # noqa: PLC0415

        found["bybit"] = lambda s: run_bybit(
            config.bybit, writer, metrics, s, categories_out=runtime.bybit
        )
    if "okx" in enabled:
        from collector.sources.okx_ws import run_okx  # noqa: PLC0415

        found["okx"] = lambda s: run_okx(
            config.okx, writer, metrics, s, sources_out=runtime.okx, ledger=runtime.pool
        )
    return found


def _database(runtime: Runtime) -> dict[str, Component]:
    """The rollups' refresh passes and the liveness ping."""
    config, pool = runtime.config.database, runtime.pool
    return {
        "rollup": lambda s: run_rollups(pool, s, interval_s=config.rollup_interval_s),
        "venue_rollup": lambda s: run_venue_rollups(pool, s, interval_s=config.rollup_interval_s),
        "database_ping": lambda s: run_database_ping(
            pool,
            runtime.metrics,
            s,
            interval_s=config.ping_interval_s,
            timeout_s=config.ping_timeout_s,
            write_failing=lambda: runtime.writer.is_failing,
        ),
    }
