"""The supervisor's restart policy, with real components (plain coroutines), no mocks."""

from __future__ import annotations

import asyncio

import pytest

from collector.exceptions import ConfigError
from collector.metrics import Metrics
from collector.supervisor import supervise


async def test_a_failing_component_is_restarted_and_counted() -> None:
    """A component that raises is restarted (with backoff) until it runs; restarts are counted."""
    metrics = Metrics()
    stop = asyncio.Event()
    attempts = 0
    running = asyncio.Event()

    async def flaky(stop_: asyncio.Event) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("boom")
        running.set()
        await stop_.wait()

    task = asyncio.create_task(supervise("flaky", flaky, stop, metrics, initial_backoff_s=0.01))
    await asyncio.wait_for(running.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert attempts == 3
    value = metrics.registry.get_sample_value(
        "collector_component_restarts_total", {"component": "flaky"}
    )
    assert value == 2


async def test_a_fatal_config_error_is_not_retried() -> None:
    """A ConfigError escapes the supervisor at once (the process exits non-zero)."""

    async def misconfigured(stop_: asyncio.Event) -> None:
        raise ConfigError(["[x] y: bad"])

    with pytest.raises(ConfigError):
        await supervise("bad", misconfigured, asyncio.Event(), Metrics(), initial_backoff_s=0.01)
