"""CPU per frame of one websocket session's frame handling (`Connection._on_text`), for a
first copy (decoded, parsed, queued) against its twin (matched by `sources.twins`, counted in
the ledger, not parsed), in-process, without sockets or a database.

    .venv/bin/python bench/twins_cost.py --frames 20000 --rounds 5

Frames are the emulator's generator's (`collector simulate`'s); the sink is a list. Rounds
alternate the two paths; it prints each round's process CPU per frame and the medians. Figures,
not assertions: the part of a twin's cost that the socket, aiohttp and the event loop add is
not in it (the same for both paths).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from collector.config import BinanceConfig
from collector.emulator.events import make_force_order_event
from collector.metrics import Metrics
from collector.sources.binance_plan import plan_shards
from collector.sources.binance_session import AnomalyExamples, Connection
from collector.sources.catalog import SymbolCatalog
from collector.sources.twins import FrameTwins


class ListSink:
    def __init__(self) -> None:
        self.items: list[Any] = []

    async def put(self, item: Any, *, release: asyncio.Event | None = None) -> None:
        self.items.append(item)


def frames(n: int, offset: int) -> list[str]:
    out = []
    for i in range(n):
        event = make_force_order_event(
            ("BTCUSDT", "ETHUSDT", "SOLUSDT")[i % 3], ("BUY", "SELL")[i % 2],
            f"{1 + i % 997}.{i % 1000:03d}", f"{9000 + i % 5000}.1", f"{9000 + i % 5000}.2",
            1_795_000_000_000 + offset + i, 1_795_000_000_001 + offset + i,
        )  # fmt: skip
        import orjson  # noqa: PLC0415

        out.append(orjson.dumps({"stream": "!forceOrder@arr", "data": event}).decode())
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = BinanceConfig()
    spec = plan_shards(config)[0]
    metrics, catalog, anomalies = Metrics(), SymbolCatalog(), AnomalyExamples()
    first_us: list[float] = []
    twin_us: list[float] = []
    for round_ in range(args.rounds):
        twins = FrameTwins(2, size=args.frames)
        a = Connection(spec, None, ListSink(), metrics, catalog, config, anomalies, 0, twins)  # type: ignore[arg-type]
        b = Connection(spec, None, ListSink(), metrics, catalog, config, anomalies, 1, twins)  # type: ignore[arg-type]
        for conn in (a, b):
            await conn._ledger.open()
        texts = frames(args.frames, round_ * args.frames)
        now = datetime.now(UTC)
        started = time.process_time()
        for text in texts:
            await a._on_text(text, now)
        first_us.append((time.process_time() - started) / len(texts) * 1e6)
        started = time.process_time()
        for text in texts:
            await b._on_text(text, now)
        twin_us.append((time.process_time() - started) / len(texts) * 1e6)
        assert twins.twins == len(texts)
        print(f"round {round_ + 1}: first copy {first_us[-1]:.1f} us/frame, "
              f"twin {twin_us[-1]:.1f} us/frame", flush=True)  # fmt: skip
    print(f"median: first copy {statistics.median(first_us):.1f} us/frame, "
          f"twin {statistics.median(twin_us):.1f} us/frame")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
