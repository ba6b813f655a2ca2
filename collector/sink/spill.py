"""Spill to disk what the writer could not commit before shutdown, and replay it on start.

When Postgres is unreachable for the whole shutdown grace period, the queued rows would die with
the process. `write` puts them in a JSON-lines file in `spill_dir` (written to a temporary name,
fsynced, then renamed, so a file is complete or absent); the next `collector run` replays every
file through the writer before the sources start, and deletes it once committed. Market rows are
stored as the frame received plus its source, and re-parsed on replay (the parser is
deterministic, so the content key and the database's unique key dedupe a replay).
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from collector.exceptions import MalformedPayload
from collector.model import DeadLetter, MarketLiquidation, SessionRecord, WriteItem
from collector.sink.writer import Writer
from collector.sources.binance_parse import DataFrame, Source, decode_frame, parse_force_order
from collector.sources.catalog import SymbolCatalog

log = structlog.get_logger(__name__)

_SESSION_TIMES = (
    "opened_at",
    "last_alive_at",
    "subscribed_at",
    "first_event_at",
    "last_event_at",
    "closed_at",
)


def _record(item: WriteItem) -> dict[str, Any] | None:
    if isinstance(item, MarketLiquidation):
        return {
            "kind": "liquidation",
            "raw": item.raw,
            "host": item.source_host,
            "route": item.source_route,
            "stream": item.source_stream,
            "received_at": item.received_at.isoformat(),
        }
    if isinstance(item, DeadLetter):
        return {
            "kind": "dead_letter",
            "received_at": item.received_at.isoformat(),
            "source": item.source,
            "reason": item.reason,
            "detail": item.detail,
            "raw": base64.b64encode(item.raw).decode(),
            "kept": item.kept,
        }
    if isinstance(item, SessionRecord):
        fields = asdict(item)
        fields["session_id"] = str(item.session_id)
        fields["streams"] = list(item.streams)
        for name in _SESSION_TIMES:
            value = fields[name]
            fields[name] = value.isoformat() if value is not None else None
        return {"kind": "session", **fields}
    return None  # barriers carry nothing to keep


def write(spill_dir: str, items: list[WriteItem]) -> Path | None:
    """Write `items` to a new spill file; return its path (None when there was nothing)."""
    lines = [orjson.dumps(r) for r in map(_record, items) if r is not None]
    if not lines:
        return None
    directory = Path(spill_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    final = directory / f"spill-{stamp}-{os.getpid()}.jsonl"
    partial = final.with_suffix(".partial")
    with partial.open("wb") as out:
        out.write(b"\n".join(lines) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    partial.rename(final)
    return final


def _item(record: dict[str, Any], catalog: SymbolCatalog) -> WriteItem:
    kind = record["kind"]
    if kind == "liquidation":
        frame = decode_frame(record["raw"])
        if not isinstance(frame, DataFrame):
            raise MalformedPayload("spilled frame is not data")
        return parse_force_order(
            frame.event,
            source=Source(record["host"], record["route"], record["stream"]),
            received_at=datetime.fromisoformat(record["received_at"]),
            raw=record["raw"],
            contract_sizes=catalog.contract_sizes,
        )
    if kind == "dead_letter":
        return DeadLetter(
            received_at=datetime.fromisoformat(record["received_at"]),
            source=record["source"],
            reason=record["reason"],
            detail=record["detail"],
            raw=base64.b64decode(record["raw"]),
            kept=record["kept"],
        )
    if kind == "session":
        fields = {k: v for k, v in record.items() if k != "kind"}
        fields["session_id"] = uuid.UUID(fields["session_id"])
        fields["streams"] = tuple(fields["streams"])
        for name in _SESSION_TIMES:
            if fields[name] is not None:
                fields[name] = datetime.fromisoformat(fields[name])
        return SessionRecord(**fields)
    raise MalformedPayload(f"unknown spilled kind {kind!r}", field="kind")


async def replay(spill_dir: str, writer: Writer, catalog: SymbolCatalog) -> int:
    """Queue every spilled item, wait until committed, delete the files; return the count.

    A line that cannot be read back (it never should) is logged and skipped; its file is kept
    renamed to `.bad` for a person to look at.
    """
    directory = Path(spill_dir)
    files = await asyncio.to_thread(lambda: sorted(directory.glob("spill-*.jsonl")))
    total = 0
    for path in files:
        lines = (await asyncio.to_thread(path.read_bytes)).splitlines()
        bad = 0
        for line in lines:
            try:
                item = _item(orjson.loads(line), catalog)
            except (orjson.JSONDecodeError, MalformedPayload, KeyError, TypeError, ValueError):
                bad += 1
                log.exception("spill.unreadable_line", file=path.name, line=line[:300])
                continue
            await writer.put(item)
            total += 1
        await writer.flush()
        if bad:
            await asyncio.to_thread(path.rename, path.with_suffix(".bad"))
        else:
            await asyncio.to_thread(path.unlink)
        log.info("spill.replayed", file=path.name, items=len(lines) - bad, unreadable=bad)
    return total
