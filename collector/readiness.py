"""What `/readyz` checks for this daemon: the database answers and the writer commits, every
stream shard holds a connection, and events keep arriving; it also shows (without checking)
the Bybit and OKX connections. `health` serves the checks; the supervisor registers them once
at start-up (`add_readiness`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

    from collector.health import Health
    from collector.metrics import Metrics
    from collector.sink.writer import Writer
    from collector.sources.binance_ws import Shard
    from collector.sources.bybit_ws import BybitCategory
    from collector.sources.okx_ws import OkxSource

# Waiting for a pool connection: below `health`'s 2 s limit on every check, so a pool with no
# free connection fails this check with its own reason before the limit cuts it off.
DATABASE_CHECK_ACQUIRE_S = 1.5


def stream_state(shards: Sequence[Shard]) -> dict[str, Any]:
    """`/readyz`'s view of the streams: per shard its connections (one per replica, "up" or
    "down") and counts; `state` is `ok` (every shard fully held), `degraded` (every shard has
    a connection up, some fewer than `redundancy`) or `down` (some shard has none)."""
    by_name: dict[str, list[Shard]] = {}
    for shard in shards:
        by_name.setdefault(shard.spec.name, []).append(shard)
    view: dict[str, dict[str, Any]] = {}
    for name, twins in by_name.items():
        connections = ["up" if t.is_up else "down" for t in twins]
        view[name] = {"up": connections.count("up"), "wanted": len(twins),
                      "connections": connections}  # fmt: skip
    if not view or any(not v["up"] for v in view.values()):
        state = "down"
    elif any(v["up"] < v["wanted"] for v in view.values()):
        state = "degraded"
    else:
        state = "ok"
    return {"state": state, "shards": view}


def venue_state(bybit: Sequence[BybitCategory], okx: Sequence[OkxSource]) -> dict[str, Any]:
    """`/readyz`'s view of Bybit (per category) and OKX, for the venues running."""
    view: dict[str, Any] = {}
    if bybit:
        view["bybit"] = {c.category: c.state() for c in bybit}
    if okx:
        view["okx"] = okx[0].state()
    return view


def add_readiness(
    health: Health,
    *,
    pool: asyncpg.Pool,
    writer: Writer,
    shards: Sequence[Shard],
    metrics: Metrics,
    max_event_age_s: float,
    binance: bool = True,
    venues: bool = False,
    bybit: Sequence[BybitCategory] = (),
    okx: Sequence[OkxSource] = (),
) -> None:
    """Register the `database`, `streams` and `event_age` checks, and the `streams` detail, on
    `health`. `shards` is read at every check (`run_ws_sources` refills it in place); an
    `max_event_age_s` of 0 turns the event-age check off. Without `binance` (the venue is not
    enabled) there is no `streams` check. With `venues` (Bybit or OKX enabled), `bybit` and
    `okx` (filled in place by their sources) are shown as the `venues` detail, not checked: a
    venue unreachable from this network must not make the collector unready for the others."""

    async def database() -> None:
        if writer.is_failing and writer.queue.qsize() > 0:
            raise RuntimeError("the writer cannot commit")
        async with pool.acquire(timeout=DATABASE_CHECK_ACQUIRE_S) as conn:
            await conn.fetchval("SELECT 1")

    async def streams() -> None:
        """Ready while at least one connection of every shard is up (degraded is still ready)."""
        if not shards:
            raise RuntimeError("no stream connection started yet")
        down = [name for name, s in stream_state(shards)["shards"].items() if not s["up"]]
        if down:
            raise RuntimeError(f"not connected: {', '.join(down)}")

    async def event_age() -> None:
        age = metrics.event_age_s()
        if max_event_age_s and age > max_event_age_s:
            raise RuntimeError(f"no event for {age:.0f} s (limit {max_event_age_s:.0f} s)")

    health.add("database", database)
    if binance:
        health.add("streams", streams)
        health.describe("streams", lambda: stream_state(shards))
    health.add("event_age", event_age)
    if venues:
        health.describe("venues", lambda: venue_state(bybit, okx))
