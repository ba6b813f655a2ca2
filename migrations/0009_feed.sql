-- The committed-order cursor behind the live feed, the history API and alerts (issue 11).
--
-- A sequence value is taken at insert, not at commit: a transaction that started first may
-- commit after a later one, so "seq > last seen" would skip its rows for good. Each row also
-- records its writing transaction (committed_xid, a 64-bit xid8 that never wraps). A reader
-- only takes rows whose committed_xid is below its snapshot's xmin: every transaction below
-- xmin has ended, so that set of rows can no longer grow, and the cursor (committed_xid, seq)
-- walks it in one total order. Two replicas reading one database read the same sequence.
--
-- Both columns are added without a default first (existing rows keep NULL, nothing is
-- rewritten), then given their defaults: the writer's INSERTs name their columns, so new rows
-- get both. Rows from before this migration (NULL) are in the history API, not in the feed.

CREATE SEQUENCE liquidation_feed_seq AS bigint;  -- one order across both tables

ALTER TABLE market_liquidations ADD COLUMN committed_xid xid8, ADD COLUMN seq bigint;
ALTER TABLE market_liquidations
    ALTER COLUMN committed_xid SET DEFAULT pg_current_xact_id(),
    ALTER COLUMN seq SET DEFAULT nextval('liquidation_feed_seq');
ALTER TABLE venue_liquidations ADD COLUMN committed_xid xid8, ADD COLUMN seq bigint;
ALTER TABLE venue_liquidations
    ALTER COLUMN committed_xid SET DEFAULT pg_current_xact_id(),
    ALTER COLUMN seq SET DEFAULT nextval('liquidation_feed_seq');

CREATE INDEX market_liquidations_feed ON market_liquidations (committed_xid, seq);
CREATE INDEX venue_liquidations_feed ON venue_liquidations (committed_xid, seq);

-- Wakes the feed: one notification per inserting statement (not per row), delivered by
-- Postgres at commit, carrying the writing transaction's id, so a reader whose snapshot xmin
-- is not yet past it knows to look again soon. Readers poll as well: a lost notification
-- (a reconnect of the listening connection) delays rows, never loses them.
CREATE FUNCTION liquidation_feed_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('collector_liquidations', pg_current_xact_id()::text);
    RETURN NULL;
END $$;

CREATE TRIGGER market_liquidations_feed_notify AFTER INSERT ON market_liquidations
    FOR EACH STATEMENT EXECUTE FUNCTION liquidation_feed_notify();
CREATE TRIGGER venue_liquidations_feed_notify AFTER INSERT ON venue_liquidations
    FOR EACH STATEMENT EXECUTE FUNCTION liquidation_feed_notify();

-- The liquidations view (0008) with each row's cursor, for the feed, and its content key, which
-- with (trade_time, venue) orders the history API's pages.
CREATE VIEW liquidation_feed AS
SELECT m.committed_xid, m.seq, m.content_key, 'binance'::text AS venue, m.market, m.symbol, s.base_asset,
       m.liquidated_side, m.avg_price AS price,
       CASE WHEN m.market = 'UM' THEN m.filled_qty END AS qty,
       m.notional_usd, m.trade_time, m.received_at
  FROM market_liquidations m
  LEFT JOIN symbols s ON s.market = m.market AND s.symbol = m.symbol
UNION ALL
SELECT v.committed_xid, v.seq, v.content_key, v.venue, v.market, v.symbol, v.base_asset, v.liquidated_side,
       v.price, v.qty, v.notional_usd, v.trade_time, v.received_at
  FROM venue_liquidations v;

COMMENT ON VIEW liquidation_feed IS
    'The liquidations view with each row''s feed cursor (committed_xid, seq); read only rows with committed_xid < pg_snapshot_xmin(pg_current_snapshot()), whose set is final.';
