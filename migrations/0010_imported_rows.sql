-- Imported history (issue 11, `collector import --format tardis`): a Bybit or OKX row may now
-- come from a file as well as from the stream or a REST read-back. `origin` says which was the
-- first to store the row; `import` rows were read from a Tardis.dev liquidations CSV (their
-- `raw` is that line, with the file's name). Binance rows need no change: market_liquidations
-- records where a row came from in source_host/source_stream (`import`, `import:tardis`).
-- The ledger needs none either: coverage_repairs.source is free text (`import:tardis`).

ALTER TABLE venue_liquidations DROP CONSTRAINT venue_liquidations_origin_check;
ALTER TABLE venue_liquidations ADD CONSTRAINT venue_liquidations_origin_check
    CHECK (origin IN ('ws', 'rest', 'import'));
