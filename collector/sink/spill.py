"""Spill to disk what the writer could not commit before shutdown, and replay it on start.

When Postgres is unreachable for the whole shutdown grace period, the queued rows would die with
the process. `write` puts them in a JSON-lines file in `spill_dir` (written to a temporary name,
fsynced, then renamed, so a file is complete or absent); the next `collector run` replays every
file through the writer before the sources start, and deletes it once committed. Market rows are
stored as the frame received plus its source, and re-parsed on replay by the `Reparse` function
the caller hands in (the supervisor hands the source's parser: this module knows no source; the
parser is deterministic, so the content key and the database's unique key dedupe a replay).
Other venues' rows (`VenueLiquidation`) and ledger repairs are stored field by field (decimals
as their text, the key in base64) and rebuilt as they were, without any source's parser.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from collector.exceptions import MalformedPayload
from collector.model import (
    DeadLetter,
    MarketLiquidation,
    RepairRecord,
    SessionRecord,
    WriteItem,
)
from collector.sink.writer import Writer
from collector.venues import LiquidatedSide, Venue, VenueLiquidation

log = structlog.get_logger(__name__)


class Reparse(Protocol):
    """Rebuilds a spilled market row from the frame it was parsed from and where that came
    from; raises `MalformedPayload` (or `ValueError`, `KeyError`, `TypeError`) when it cannot."""

    def __call__(
        self, raw: str, *, host: str, route: str, stream: str, received_at: datetime
    ) -> MarketLiquidation: ...


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
    if isinstance(item, VenueLiquidation):
        return _venue_record(item)
    if isinstance(item, RepairRecord):
        return {
            "kind": "repair",
            "venue": str(item.venue),
            "stream": item.stream,
            "repaired_from": item.repaired_from.isoformat(),
            "repaired_to": item.repaired_to.isoformat(),
            "source": item.source,
            "rows": item.rows,
            "recorded_at": item.recorded_at.isoformat(),
        }
    return None  # barriers carry nothing to keep


_VENUE_DECIMALS = ("price", "qty", "notional_usd")


def _venue_record(row: VenueLiquidation) -> dict[str, Any]:
    """Every field of the row, in JSON types: decimals as their exact text, the key base64."""
    record: dict[str, Any] = {
        "kind": "venue_liquidation",
        "venue": row.venue.value,
        "market": row.market,
        "symbol": row.symbol,
        "base_asset": row.base_asset,
        "liquidated_side": None if row.liquidated_side is None else row.liquidated_side.value,
        "trade_time": row.trade_time.isoformat(),
        "received_at": row.received_at.isoformat(),
        "content_key": base64.b64encode(row.content_key).decode(),
        "wire": [list(pair) for pair in row.wire],
        "raw": row.raw,
        "source": row.source,
    }
    for name in _VENUE_DECIMALS:
        value = getattr(row, name)
        record[name] = None if value is None else str(value)
    return record


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


def _field(record: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """`record[name]`, which must be of `kind` (a spill file is input: types are checked so a
    wrong one is a readable error here, never an encoding failure the writer would retry)."""
    value = record[name]
    if type(value) not in (kind if isinstance(kind, tuple) else (kind,)):
        raise MalformedPayload(f"spilled {name} is {type(value).__name__}", field=name)
    return value


def _time(record: dict[str, Any], name: str, *, optional: bool = False) -> datetime | None:
    value = _field(record, name, (str, type(None)) if optional else str)
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise MalformedPayload(f"spilled {name} has no time zone", field=name)
    return parsed


def _required_time(record: dict[str, Any], name: str) -> datetime:
    value = _time(record, name)
    if value is None:  # pragma: no cover  (_time allows None only when optional)
        raise MalformedPayload(f"spilled {name} is missing", field=name)
    return value


def _item(record: Any, reparse: Reparse) -> WriteItem:
    if not isinstance(record, dict):
        raise MalformedPayload("spilled line is not an object")
    kind = record["kind"]
    if kind == "liquidation":
        raw = _field(record, "raw", str)
        received_at = _time(record, "received_at")
        assert received_at is not None
        return reparse(
            raw,
            host=_field(record, "host", str),
            route=_field(record, "route", str),
            stream=_field(record, "stream", str),
            received_at=received_at,
        )
    if kind == "dead_letter":
        received_at = _time(record, "received_at")
        assert received_at is not None
        return DeadLetter(
            received_at=received_at,
            source=_field(record, "source", str),
            reason=_field(record, "reason", str),
            detail=_field(record, "detail", str),
            raw=base64.b64decode(_field(record, "raw", str), validate=True),
            kept=_field(record, "kept", bool),
        )
    if kind == "session":
        streams = _field(record, "streams", list)
        if not all(type(s) is str for s in streams):
            raise MalformedPayload("spilled streams are not all text", field="streams")
        times = {name: _time(record, name, optional=True) for name in _SESSION_TIMES}
        if times["opened_at"] is None or times["last_alive_at"] is None:
            raise MalformedPayload("spilled session has no opened_at/last_alive_at")
        return SessionRecord(
            session_id=uuid.UUID(_field(record, "session_id", str)),
            connection=_field(record, "connection", str),
            host=_field(record, "host", str),
            route=_field(record, "route", str),
            url=_field(record, "url", str),
            streams=tuple(streams),
            close_reason=_field(record, "close_reason", (str, type(None))),
            events_received=_field(record, "events_received", int),
            # (Files spilled before sessions had a venue hold Binance's sessions.)
            venue=Venue(record.get("venue", Venue.BINANCE)).value,
            **times,  # type: ignore[arg-type]
        )
    if kind == "venue_liquidation":
        return _venue_item(record)
    if kind == "repair":
        return RepairRecord(
            venue=Venue(_field(record, "venue", str)).value,
            stream=_field(record, "stream", str),
            repaired_from=_required_time(record, "repaired_from"),
            repaired_to=_required_time(record, "repaired_to"),
            source=_field(record, "source", str),
            rows=_field(record, "rows", int),
            recorded_at=_required_time(record, "recorded_at"),
        )
    raise MalformedPayload(f"unknown spilled kind {kind!r}", field="kind")


def _decimal(record: dict[str, Any], name: str) -> Decimal | None:
    text = _field(record, name, (str, type(None)))
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise MalformedPayload(f"spilled {name} is not a decimal", field=name) from exc
    if not value.is_finite():
        raise MalformedPayload(f"spilled {name} is not finite", field=name)
    return value


def _venue_item(record: dict[str, Any]) -> VenueLiquidation:
    """A spilled venue row rebuilt exactly, every field type-checked."""
    wire = _field(record, "wire", list)
    if not all(
        type(pair) is list and len(pair) == 2 and all(type(x) is str for x in pair) for pair in wire
    ):
        raise MalformedPayload("spilled wire fields are not (name, text) pairs", field="wire")
    side = _field(record, "liquidated_side", (str, type(None)))
    source = _field(record, "source", str)
    if source not in ("ws", "rest"):
        raise MalformedPayload(f"spilled source {source!r} is not ws or rest", field="source")
    return VenueLiquidation(
        venue=Venue(_field(record, "venue", str)),
        market=_field(record, "market", str),
        symbol=_field(record, "symbol", str),
        base_asset=_field(record, "base_asset", (str, type(None))),
        liquidated_side=None if side is None else LiquidatedSide(side),
        price=_decimal(record, "price"),
        qty=_decimal(record, "qty"),
        notional_usd=_decimal(record, "notional_usd"),
        trade_time=_required_time(record, "trade_time"),
        received_at=_required_time(record, "received_at"),
        content_key=base64.b64decode(_field(record, "content_key", str), validate=True),
        wire=tuple((name, text) for name, text in wire),
        raw=_field(record, "raw", str),
        source=source,
    )


def _unreadable(path: Path, line: bytes, exc: Exception) -> DeadLetter:
    """A line that cannot be read back, dead-lettered like a live frame that cannot be parsed."""
    log.error("spill.unreadable_line", file=path.name, error=repr(exc)[:300], line=line[:300])
    return DeadLetter(
        received_at=datetime.now(UTC),
        source=f"spill/{path.name}",
        reason="spill_unreadable",
        detail=repr(exc)[:1000],
        raw=line,
    )


async def replay(spill_dir: str, writer: Writer, reparse: Reparse) -> int:
    """Queue every spilled item, wait until committed, delete the files; return the count.
    Market rows are rebuilt from their frames by `reparse`.

    A file is deleted only once all its items are committed, so a replay cut short (cancelled:
    the supervisor stops it on SIGTERM or when the writer fails) leaves it for the next start.
    A line that cannot be read back (it never should) is dead-lettered (`spill_unreadable`,
    the line verbatim); a row Postgres rejects is dead-lettered by the writer, as live rows are.
    """
    directory = Path(spill_dir)
    files = await asyncio.to_thread(lambda: sorted(directory.glob("spill-*.jsonl")))
    total = 0
    for path in files:
        lines = (await asyncio.to_thread(path.read_bytes)).splitlines()
        bad = 0
        for line in lines:
            item: WriteItem
            try:
                item = _item(orjson.loads(line), reparse)
            except (
                orjson.JSONDecodeError,
                MalformedPayload,
                KeyError,
                TypeError,
                ValueError,
            ) as exc:
                bad += 1
                item = _unreadable(path, line, exc)
            await writer.put(item)
            total += 1
        await writer.flush()
        await asyncio.to_thread(path.unlink)
        log.info("spill.replayed", file=path.name, items=len(lines) - bad, unreadable=bad)
    return total
