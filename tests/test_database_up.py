"""`collector_database_up` says whether the database answers, not only whether the last write
committed: a liveness ping through the pool sets it with no input at all."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from collector.config import (
    BinanceConfig,
    Config,
    DatabaseConfig,
    HttpConfig,
    Secret,
    VenuesConfig,
    WriterConfig,
)
from collector.metrics import Metrics
from collector.sink.liveness import run_database_ping
from tests.conftest import OwnPostgres
from tests.daemon import eventually, running

# Nothing listens on the discard port: the daemon has no Binance connection and writes nothing.
_NOWHERE = "127.0.0.1:9"


def config_without_binance(dsn: str) -> Config:
    """A daemon config whose Binance hosts are unreachable, pinging the database every 0.1 s."""
    return Config(
        database=DatabaseConfig(
            dsn=Secret(dsn), migrate_on_start=False, ping_interval_s=0.1, ping_timeout_s=2.0
        ),
        binance=BinanceConfig(
            fstream_url=f"ws://{_NOWHERE}",
            dstream_url=f"ws://{_NOWHERE}",
            fapi_url=f"http://{_NOWHERE}",
            dapi_url=f"http://{_NOWHERE}",
            papi_url=f"http://{_NOWHERE}",
            sapi_url=f"http://{_NOWHERE}",
            reconnect_initial_s=1.0,
            reconnect_max_s=5.0,
        ),
        venues=VenuesConfig(enabled=("binance",)),  # no real Bybit or OKX either
        writer=WriterConfig(
            batch_max_age_s=0.01,
            retry_initial_s=0.05,
            retry_max_s=0.2,
            spill_dir=tempfile.mkdtemp(prefix="collector-spill-"),
        ),
        http=HttpConfig(port=0),
        shutdown_grace_s=10.0,
    )


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The daemon's /metrics as {sample name: value}, for samples without labels."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


async def test_database_up_follows_a_stopped_and_restarted_database_with_no_input(
    own_postgres: OwnPostgres,
) -> None:
    """With no Binance connection (nothing ever written), /metrics shows
    collector_database_up 1, then 0 once Postgres is stopped, then 1 after it is started."""
    config = config_without_binance(own_postgres.dsn)
    async with running(config) as daemon, aiohttp.ClientSession() as http:
        port = daemon.runtime.http_port
        up = await eventually(
            lambda: scrape(http, port), lambda m: m["collector_database_up"] == 1, timeout=10
        )
        # The ping set it: the writer has not written a single batch.
        assert up["collector_batch_rows_count"] == 0
        registry = daemon.runtime.metrics.registry
        assert registry.get_sample_value("collector_ws_connects_total", {"host": "fstream"}) is None
        await own_postgres.stop()
        await eventually(
            lambda: scrape(http, port), lambda m: m["collector_database_up"] == 0, timeout=30
        )
        await own_postgres.start()
        back = await eventually(
            lambda: scrape(http, port), lambda m: m["collector_database_up"] == 1, timeout=30
        )
        assert back["collector_batch_rows_count"] == 0
        assert await daemon.shutdown() == 0


def pings(metrics: Metrics, outcome: str) -> float:
    """collector_database_pings_total for `outcome` (0 when never counted)."""
    value = metrics.registry.get_sample_value(
        "collector_database_pings_total", {"outcome": outcome}
    )
    return 0.0 if value is None else value


def up(metrics: Metrics) -> float | None:
    """collector_database_up's value."""
    return metrics.registry.get_sample_value("collector_database_up")


async def test_a_ping_does_not_report_up_while_the_writer_is_failing(pg_dsn: str) -> None:
    """Pings that succeed leave the gauge at 0 while the writer fails to commit, and set it to
    1 once the writer is no longer failing."""
    metrics = Metrics()
    failing = True
    stop = asyncio.Event()
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) as pool:
        task = asyncio.create_task(
            run_database_ping(
                pool, metrics, stop, interval_s=0.02, timeout_s=2.0, write_failing=lambda: failing
            )
        )
        try:
            await eventually(lambda: asyncio.sleep(0, pings(metrics, "ok")), lambda n: n >= 2)
            assert up(metrics) == 0
            failing = False
            await eventually(lambda: asyncio.sleep(0, up(metrics)), lambda v: v == 1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
    assert pings(metrics, "failed") == 0


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A loopback TCP server that accepts connections and never answers; yields its port."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def test_a_database_that_never_answers_is_down_within_the_ping_timeout() -> None:
    """A server that accepts the connection but never answers turns a gauge that was 1 into 0
    after one failed ping, bounded by ping_timeout_s rather than any connect timeout."""
    metrics = Metrics()
    metrics.db_up.set(1)  # as after a commit
    stop = asyncio.Event()
    async with silent_server() as port:
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        pool = asyncpg.create_pool(dsn, min_size=0, max_size=1, timeout=60)
        async with pool:
            started = time.monotonic()
            task = asyncio.create_task(
                run_database_ping(pool, metrics, stop, interval_s=60.0, timeout_s=0.3)
            )
            try:
                await eventually(
                    lambda: asyncio.sleep(0, pings(metrics, "failed")), lambda n: n == 1
                )
                elapsed = time.monotonic() - started
            finally:
                stop.set()
                await asyncio.wait_for(task, 5)
    assert up(metrics) == 0
    assert (pings(metrics, "failed"), pings(metrics, "ok")) == (1, 0)
    assert 0.3 <= elapsed < 5.0
