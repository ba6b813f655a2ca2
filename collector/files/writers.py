"""The file formats of `collector export` (docs/export.md): gzip'd Tardis-style and venue CSV,
Parquet with exact decimals, each written into a temporary file that `AtomicFile` fsyncs and
renames into place when complete. The export loop that feeds them is `export`."""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import IO, Any, Final, Protocol

import asyncpg

from collector.exceptions import CollectorError
from collector.files import tardis

ROW_GROUP_ROWS: Final = 100_000
"""Rows of one Parquet row group (held as Arrow arrays until written)."""
WRITE_LINES: Final = 10_000
"""CSV lines joined before one write to the gzip stream."""
GZIP_LEVEL: Final = 6
"""zlib's default trade-off: level 9 costs about twice the time for 2-3% smaller files."""
PARQUET_DECIMAL: Final = (38, 18)
"""(precision, scale) of every Parquet decimal column: see `PARQUET_MISSING` and docs."""

CSV_COLUMNS: Final = (
    "venue", "market", "symbol", "base_asset", "liquidated_side", "price", "qty",
    "notional_usd", "trade_time", "received_at",
)  # fmt: skip

PARQUET_MISSING: Final = (
    "collector export: --format parquet needs pyarrow, which is not installed: "
    "pip install 'collector[parquet]'"
)


class ExportError(CollectorError):
    """A row cannot be written exactly in the chosen format (the export stops; no file of
    that day is left behind)."""


class FileWriter(Protocol):
    """One output file being written: rows in, then `close` (flushes; the caller renames)."""

    rows: int

    def write(self, record: asyncpg.Record) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """Release the file after an error (its content no longer matters)."""


class _Lines:
    """Gzip text lines, buffered (`WRITE_LINES`); deterministic bytes (no name, mtime 0)."""

    def __init__(self, raw: IO[bytes], header: str) -> None:
        self._gz = gzip.GzipFile(
            filename="", fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0
        )
        self._pending: list[str] = [header]
        self.rows = 0

    def add(self, line: str) -> None:
        self._pending.append(line)
        self.rows += 1
        if len(self._pending) >= WRITE_LINES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._gz.write(("\n".join(self._pending) + "\n").encode())
            self._pending = []

    def close(self) -> None:
        self._flush()
        self._gz.close()

    def abort(self) -> None:
        self._pending = []
        self._gz.close()


class TardisFile(_Lines):
    """A Tardis liquidations CSV: the header, then the query's ready-made lines."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(raw, tardis.HEADER)

    def write(self, record: asyncpg.Record) -> None:
        self.add(record["line"])


class CsvFile(_Lines):
    """Every column of the `liquidations` view; NULL as an empty field; RFC 4180 quoting."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(raw, ",".join(CSV_COLUMNS))
        self._text = io.StringIO()
        self._csv = csv.writer(self._text, lineterminator="")

    def write(self, record: asyncpg.Record) -> None:
        self._text.seek(0)
        self._text.truncate()
        self._csv.writerow(record[2:])
        self.add(self._text.getvalue())


class ParquetFile:
    """The `liquidations` view's columns as Parquet: DECIMAL(38, 18) numerics (a value that
    would not fit exactly raises `ExportError`), microsecond UTC timestamps."""

    def __init__(self, raw: IO[bytes], label: str) -> None:
        import pyarrow as pa  # noqa: PLC0415  (optional: collector[parquet])
        import pyarrow.parquet as pq  # noqa: PLC0415

        self._pa = pa
        decimal = pa.decimal128(*PARQUET_DECIMAL)
        stamp = pa.timestamp("us", tz="UTC")
        self._schema = pa.schema([
            pa.field("venue", pa.string(), nullable=False),
            pa.field("market", pa.string(), nullable=False),
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("base_asset", pa.string()),
            pa.field("liquidated_side", pa.string()),
            pa.field("price", decimal),
            pa.field("qty", decimal),
            pa.field("notional_usd", decimal),
            pa.field("trade_time", stamp, nullable=False),
            pa.field("received_at", stamp, nullable=False),
        ])  # fmt: skip
        self._writer = pq.ParquetWriter(raw, self._schema, compression="zstd")
        self._columns: list[list[Any]] = [[] for _ in self._schema]
        self._label = label
        self.rows = 0

    def write(self, record: asyncpg.Record) -> None:
        for column, value in zip(self._columns, record[2:], strict=True):
            column.append(value)
        self.rows += 1
        if len(self._columns[0]) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._columns[0]:
            return
        pa = self._pa
        arrays = []
        for field, values in zip(self._schema, self._columns, strict=True):
            try:
                if pa.types.is_timestamp(field.type):
                    arrays.append(pa.array(values, pa.int64()).cast(field.type))
                else:
                    arrays.append(pa.array(values, field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ExportError(
                    f"{self._label}: a {field.name} value does not fit DECIMAL"
                    f"{PARQUET_DECIMAL} exactly ({exc}); export it with --format csv"
                ) from None
        self._writer.write_batch(pa.record_batch(arrays, schema=self._schema))
        self._columns = [[] for _ in self._schema]

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def abort(self) -> None:
        self._columns = [[] for _ in self._schema]
        self._writer.close()


class AtomicFile:
    """A binary file that appears at `path` only complete: written as `.<name>.partial` beside
    it, then `commit` fsyncs it and renames it into place; `discard` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.partial")
        self.raw: IO[bytes] = self._temp.open("wb")

    def commit(self) -> int:
        """Flush, fsync, close and rename; return the file's size in bytes. Blocking (the
        fsync): `export` runs it on a worker thread while the next file is written."""
        try:
            self.raw.flush()
            os.fsync(self.raw.fileno())
            size = os.fstat(self.raw.fileno()).st_size
            self.raw.close()
            self._temp.replace(self.path)
        except BaseException:
            self.discard()
            raise
        return size

    def discard(self) -> None:
        """Close and remove the temporary file (nothing appears at `path`)."""
        self.raw.close()
        self._temp.unlink(missing_ok=True)


def check_parquet() -> str | None:
    """None when pyarrow can be imported, else the message saying how to install it."""
    try:
        import pyarrow.parquet  # noqa: F401, PLC0415
    except ModuleNotFoundError:
        return PARQUET_MISSING
    return None
