"""The `collector export` and `collector import` subcommands: arguments, the database (the
configured one, or the embedded server as `run` uses it), one summary line per file.

Exit codes: 0 done; 1 the database failed, a value could not be exported exactly, or (import)
some lines or files were skipped (each is reported as file:line); 2 bad arguments or
configuration, one message (and pyarrow missing for --format parquet).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from collector import logs
from collector.config import Config, load_from_process
from collector.files.export import ExportRequest, Format
from collector.files.writers import check_parquet
from collector.venues import Venue


def add_parsers(sub: Any, with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `export` and `import` to the `collector` parser's subparsers `sub`."""
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="write stored liquidations to files (Tardis CSV, CSV, Parquet)",
        description="Write the liquidations whose trade time is in [--from, --to) into DIR: "
        "tardis (Tardis.dev's liquidations CSV, one gzip file per exchange, symbol and UTC "
        "day), csv (every column of the liquidations view, one gzip file per venue and UTC "
        "day) or parquet (the same, exact decimals; needs collector[parquet]). Prints one "
        "line per file: path, rows, bytes. Details: docs/export.md.",
    )
    with_config(p)
    p.add_argument(
        "--from",
        dest="from_at",
        required=True,
        metavar="TIME",
        help="first trade time, ISO-8601 (a date means its 00:00 UTC; no zone: UTC)",
    )
    p.add_argument(
        "--to",
        dest="to_at",
        required=True,
        metavar="TIME",
        help="end of the range (excluded), same forms as --from",
    )
    p.add_argument(
        "--venue", choices=[v.value for v in Venue], default=None, help="only this venue"
    )
    p.add_argument(
        "--symbol",
        dest="symbols",
        action="append",
        default=[],
        metavar="SYMBOL",
        help="only this symbol, as the venue spells it (repeatable)",
    )
    p.add_argument("--format", dest="fmt", required=True, choices=[f.value for f in Format])
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output directory (created if missing)",
    )
    p.add_argument("--include-unfilled", action="store_true",
                   help="tardis: also Binance events whose status is not FILLED (Tardis "
                   "drops them; we store every event the stream delivers)")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import",
        help="load Tardis.dev liquidation CSVs into the store",
        description="Load Tardis.dev liquidations CSV files (gzip or not) into the store, "
        "each row once (against what is stored already), and record each file's span in the "
        "coverage ledger as covered by source import:tardis. Malformed lines are reported as "
        "file:line and skipped. Details: docs/export.md.",
    )
    with_config(p)
    p.add_argument("--format", dest="fmt", required=True, choices=["tardis"])
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_import)


def parse_time(text: str, option: str) -> datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime (naive means UTC)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option}: not an ISO-8601 date or time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def export_request(args: argparse.Namespace) -> ExportRequest:
    """The request the arguments describe; `ValueError` (exit 2, its one line printed) when
    they do not make one."""
    from_at = parse_time(args.from_at, "--from")
    to_at = parse_time(args.to_at, "--to")
    if to_at <= from_at:
        raise ValueError(f"--to ({args.to_at}) must be after --from ({args.from_at})")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out: {args.out} exists and is not a directory")
    fmt = Format(args.fmt)
    if args.include_unfilled and fmt is not Format.TARDIS:
        raise ValueError("--include-unfilled applies to --format tardis only")
    return ExportRequest(
        from_at=from_at,
        to_at=to_at,
        format=fmt,
        out_dir=args.out,
        venue=Venue(args.venue) if args.venue else None,
        symbols=tuple(args.symbols),
        include_unfilled=args.include_unfilled,
    )


def _embedded_missing(config: Config, command: str) -> str | None:
    if config.database.dsn is not None:
        return None
    data_dir = Path(config.database.embedded_dir).resolve()
    if (data_dir / "PG_VERSION").is_file():
        return None
    return (f"collector {command}: no embedded database in {data_dir} ([database] "
            "embedded_dir is relative to the working directory): run this where `collector "
            "run` ran, or set COLLECTOR_DATABASE_DSN")  # fmt: skip


def cmd_export(args: argparse.Namespace) -> int:
    """Export the requested range; one summary line per file on stdout."""
    try:
        request = export_request(args)
    except ValueError as exc:
        print(f"collector export: {exc}", file=sys.stderr)
        return 2
    if request.format is Format.PARQUET and (missing := check_parquet()) is not None:
        print(missing, file=sys.stderr)
        return 2
    config = load_from_process(args.config)
    logs.configure("warning", config.log.format)  # stdout is for the summary lines
    if (problem := _embedded_missing(config, "export")) is not None:
        print(problem, file=sys.stderr)
        return 1
    return asyncio.run(_export(config, request))


def _progress(rows: int) -> None:
    if sys.stderr.isatty():
        print(f"\rcollector export: {rows:,} rows", end="", file=sys.stderr, flush=True)


async def _export(config: Config, request: ExportRequest) -> int:
    from collector.db.connection import connect_checked, database_dsn  # noqa: PLC0415
    from collector.files.export import ExportError, export  # noqa: PLC0415

    async with database_dsn(config) as dsn:
        conn = await connect_checked(dsn, config)
        try:
            await export(conn, request, on_file=lambda s: print(s, flush=True),
                         on_progress=_progress)  # fmt: skip
        except ExportError as exc:
            print(f"collector export: {exc}", file=sys.stderr)
            return 1
        finally:
            await conn.close()
            if sys.stderr.isatty():
                print(file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import the files one by one; one summary line per file, bad lines on stderr."""
    config = load_from_process(args.config)
    logs.configure("warning", config.log.format)
    return asyncio.run(_import(config, list(args.files)))


async def _import(config: Config, files: list[Path]) -> int:
    from collector.db.connection import connect_checked, database_dsn  # noqa: PLC0415
    from collector.db.migrate import migrate  # noqa: PLC0415
    from collector.files.importer import import_file  # noqa: PLC0415

    skipped = 0
    async with database_dsn(config) as dsn:
        conn = await connect_checked(dsn, config)
        try:
            if config.database.migrate_on_start:  # as `run` does: the tables must be there
                await migrate(conn)
            for path in files:
                report = await import_file(conn, path)
                for bad in report.bad:
                    print(bad, file=sys.stderr)
                skipped += len(report.bad)
                print(report, flush=True)
        finally:
            await conn.close()
    return 1 if skipped else 0
