"""Files out and in: `collector export` (Tardis-compatible CSV, our CSV, Parquet) and
`collector import --format tardis`. Reads and writes the store directly; the daemon is not
involved. Formats and their differences from Tardis.dev: docs/export.md."""
