"""Signed REST polling of each configured account's own force orders (fapi, dapi, papi, sapi).

Pure parts (`signing`, `endpoints`, `parse`, `budget`, `windows`) do no I/O; `client` is the
signed HTTP shell, `store` the Postgres side, `pollers` the backfill and keep-up loop of a scope
(reading a window is `fetch`, the margin lookups `enrich`, what the pollers of one account share
`context`, the endpoint health they report `state`), and `accounts` turns the configuration into
supervisor components.
"""
