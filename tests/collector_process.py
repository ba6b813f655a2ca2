"""`collector run` as a child process whose log lines a test reads as they come (test helper)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from collector.emulator import Emulator


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but never listens: every connection to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def emulator_env(emulator: Emulator) -> dict[str, str]:
    """The environment settings that point a collector at `emulator`."""
    return {
        # The emulator is Binance's: Bybit and OKX stay off, so no test reaches a real exchange.
        "COLLECTOR_VENUES_ENABLED": "binance",
        "COLLECTOR_BINANCE_FSTREAM_URL": emulator.fstream_url,
        "COLLECTOR_BINANCE_DSTREAM_URL": emulator.dstream_url,
        "COLLECTOR_BINANCE_FAPI_URL": emulator.fapi_url,
        "COLLECTOR_BINANCE_DAPI_URL": emulator.dapi_url,
        "COLLECTOR_BINANCE_PAPI_URL": emulator.papi_url,
        "COLLECTOR_BINANCE_SAPI_URL": emulator.sapi_url,
    }


@dataclasses.dataclass
class CollectorProcess:
    """A running `collector run`: the stderr lines read so far, and at the end its stdout."""

    proc: asyncio.subprocess.Process
    stderr_lines: list[str] = dataclasses.field(default_factory=list)
    stdout: str = ""

    async def wait_for_log(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Read stderr until a JSON line satisfies `matches`; fail after `timeout` seconds."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching log line within {timeout}s: {self.output()}")
            try:
                raw = await asyncio.wait_for(self.proc.stderr.readline(), remaining)
            except TimeoutError:
                continue
            if not raw:
                raise AssertionError(f"the collector exited first: {self.output()}")
            line = raw.decode()
            self.stderr_lines.append(line)
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and matches(record):
                    return record

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; read stdout and the rest of stderr; return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.stdout = out.decode()
        self.stderr_lines.extend(err.decode().splitlines(keepends=True))
        assert self.proc.returncode is not None
        return self.proc.returncode

    def output(self) -> str:
        """Everything the process wrote (stderr lines read so far, then stdout)."""
        return "".join(self.stderr_lines) + self.stdout


@contextlib.asynccontextmanager
async def collector_process(env: Mapping[str, str]) -> AsyncIterator[CollectorProcess]:
    """Start `python -m collector run` with JSON logs and `env`; kill it if the test did not stop
    it. COLLECTOR_* and PG* variables of the test's own environment are not passed on."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "PG"))}
    base["COLLECTOR_WRITER_SPILL_DIR"] = os.environ["COLLECTOR_WRITER_SPILL_DIR"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector",
        "run",
        env={**base, "COLLECTOR_LOG_FORMAT": "json", "COLLECTOR_HTTP_PORT": "0", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield CollectorProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
