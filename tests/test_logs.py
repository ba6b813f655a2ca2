"""Every log line is JSON when JSON is configured: the libraries' `logging` records too."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from collector.emulator import Emulator, EmulatorOptions
from tests.collector_process import collector_process, emulator_env
from tests.conftest import OwnPostgres

_TRACEBACK = "Traceback (most recent call last):\n"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stdlib_warning_with_exception_is_one_json_line() -> None:
    """`logging.getLogger("asyncpg").warning(..., exc_info=True)` renders one JSON line whose
    `exception` field holds the traceback."""
    result = _run_python("""
        import logging
        from collector import logs
        logs.configure("info", "json")
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError:
            logging.getLogger("asyncpg.pool").warning(
                "Failed to restore the pool connection %s; retrying", "floor", exc_info=True
            )
        logging.getLogger("aiohttp.client").debug("below the configured level")
    """)
    assert (result.returncode, result.stdout) == (0, "")
    [line] = result.stderr.splitlines()
    record = json.loads(line)
    assert sorted(record) == ["event", "exception", "level", "logger", "timestamp"]
    assert (record["event"], record["level"], record["logger"]) == (
        "Failed to restore the pool connection floor; retrying",
        "warning",
        "asyncpg.pool",
    )
    assert record["exception"].startswith(_TRACEBACK)
    assert record["exception"].endswith("\nConnectionRefusedError: [Errno 111] Connect call failed")


def test_warnings_and_an_uncaught_exception_are_json_lines() -> None:
    """A `warnings.warn` and an exception nothing caught are one JSON line each, like
    structlog's own events."""
    result = _run_python("""
        import warnings
        import structlog
        from collector import logs
        logs.configure("info", "json")
        structlog.get_logger("collector.test").info("native", n=1)
        warnings.warn("an unclosed thing", UserWarning, stacklevel=1)
        raise ValueError("boom")
    """)
    assert (result.returncode, result.stdout) == (1, "")
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(r["event"], r["level"]) for r in records[:1]] == [("native", "info")]
    assert records[0]["n"] == 1
    assert (records[1]["logger"], records[1]["level"]) == ("py.warnings", "warning")
    assert records[1]["event"].endswith("UserWarning: an unclosed thing\n")
    assert (records[2]["event"], records[2]["level"]) == ("collector.crashed", "critical")
    assert records[2]["exception"].startswith(_TRACEBACK)
    assert records[2]["exception"].endswith("\nValueError: boom")
    assert len(records) == 3


async def test_every_line_is_json_during_a_database_outage(own_postgres: OwnPostgres) -> None:
    """While Postgres is down, asyncpg's pool warnings (with tracebacks) and the daemon's own
    lines are all one JSON object per line, on stderr; stdout stays empty."""
    async with (
        Emulator(EmulatorOptions()) as emu,
        collector_process(
            {
                "COLLECTOR_DATABASE_DSN": own_postgres.dsn,
                "COLLECTOR_DATABASE_ROLLUP_INTERVAL_S": "0.2",
                "COLLECTOR_SHUTDOWN_GRACE_S": "2",
                **emulator_env(emu),
            }
        ) as collector,
    ):
        await collector.wait_for_log(lambda r: r.get("event") == "supervisor.started")
        await own_postgres.stop()
        floor = await collector.wait_for_log(lambda r: r.get("logger") == "asyncpg.pool", 60)
        code = await collector.stop()
    assert floor["event"] == "Failed to restore the pool connection floor; retrying"
    assert floor["exception"].startswith(_TRACEBACK)
    assert collector.stdout == ""
    records = [json.loads(line) for line in collector.stderr_lines]
    assert all(isinstance(r, dict) and {"event", "level", "timestamp"} <= r.keys() for r in records)
    assert records[-2]["event"] == "supervisor.spilled"  # the writer's batch, never committed
    assert records[-1]["event"] == "supervisor.shutdown_accounted"
    assert (records[-1]["lost"], records[-1]["spilled"]) == (0, records[-2]["items"])
    pool = [r for r in records if r.get("logger") == "asyncpg.pool"]
    assert all(r["exception"].startswith(_TRACEBACK) for r in pool)
    assert code == 0, collector.output()
