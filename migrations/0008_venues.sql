-- More venues (issue 14): Bybit and OKX liquidations beside Binance's, in one store, one ledger
-- and one normalised view.
--
--   * venues: each venue and its sampling policy (what share of its liquidations the public
--     feed shows), for dashboards and exports (values: collector.venues.SAMPLING_POLICIES);
--   * venue_liquidations: Bybit/OKX rows, normalised columns beside the wire fields kept
--     exactly, partitioned by month like market_liquidations, one row per liquidation however
--     many connections (or the stream and OKX's REST repair) saw it;
--   * liquidations: the normalised relation over every venue, Binance's market_liquidations
--     mapped into it (that table, its rollups, views and functions are unchanged);
--   * the coverage ledger per venue: ws_sessions.venue (existing rows and Binance code: binance),
--     coverage_repairs (which part of a gap a REST read-back repaired, from which source), and
--     venue-taking coverage_gaps/coverage_intervals/coverage_buckets that tell "repaired" from
--     "covered live". The stream-only forms keep their signatures and now mean Binance.

CREATE TABLE venues (
    venue            text PRIMARY KEY,
    sampling_policy  text NOT NULL,     -- collector.venues.SamplingPolicy
    sampling_note    text NOT NULL,     -- the policy in words, for dashboards
    -- The streams whose coverage means "this venue is covered" in coverage_buckets(venue, ...);
    -- NULL: any session of the venue (Bybit and OKX sessions each carry their own topics).
    coverage_streams text[]
);

INSERT INTO venues (venue, sampling_policy, sampling_note, coverage_streams) VALUES
    ('binance', 'latest_per_symbol_per_second',
     'At most one liquidation per symbol per second (the latest): a snapshot, not every liquidation',
     ARRAY['!forceOrder@arr']),
    ('bybit', 'all_batched_500ms',
     'All liquidations, pushed in batches every 500 ms', NULL),
    ('okx', 'sample_not_total',
     'A sample: OKX says the channel "doesn''t represent the total"', NULL);

COMMENT ON TABLE venues IS
    'Each venue the collector records and what share of its liquidations its public feed shows.';

-- Bybit allLiquidation and OKX liquidation-orders rows (Binance''s stay in market_liquidations).
-- Neither stream carries an id: content_key is built from the liquidation''s own fields
-- (collector.venues.content_key), and OKX''s REST repair computes the same key as the stream.
CREATE TABLE venue_liquidations (
    trade_time      timestamptz NOT NULL,           -- Bybit T, OKX ts
    venue           text        NOT NULL REFERENCES venues CHECK (venue <> 'binance'),
    content_key     bytea       NOT NULL,           -- deterministic 16-byte identity
    market          text        NOT NULL,           -- Bybit category (linear, inverse); OKX instType
    symbol          text        NOT NULL,           -- Bybit s, OKX instId
    base_asset      text,                           -- NULL while the instrument's terms are unknown
    liquidated_side text        CHECK (liquidated_side IN ('LONG', 'SHORT')),  -- NULL: no usable side (OKX MARGIN)
    price           numeric,                        -- Bybit p, OKX bkPx (bankruptcy price)
    qty             numeric,                        -- base units where a finite decimal, else NULL
    notional_usd    numeric,                        -- exact USD (USDT/USDC as USD); NULL until known
    received_at     timestamptz NOT NULL,
    wire            jsonb       NOT NULL,           -- the venue's fields as received: {"name": "text", ...}
    raw             jsonb       NOT NULL,           -- the frame (or REST body) the row came in
    origin          text        NOT NULL CHECK (origin IN ('ws', 'rest')),  -- the first to store it
    PRIMARY KEY (venue, content_key, trade_time)
) PARTITION BY RANGE (trade_time);

CREATE TABLE venue_liquidations_default PARTITION OF venue_liquidations DEFAULT;
CREATE INDEX venue_liquidations_time ON venue_liquidations (trade_time);
CREATE INDEX venue_liquidations_symbol_time ON venue_liquidations (venue, symbol, trade_time);

SELECT collector_ensure_monthly_partitions('venue_liquidations', now() - interval '1 month', 4);

COMMENT ON TABLE venue_liquidations IS
    'Liquidations from Bybit (all, in 500 ms batches) and OKX (a sample, not the total); read them with Binance''s through the liquidations view.';

-- The normalised relation over every venue. Binance: price is the average fill price (o.ap,
-- what its notional is priced at), qty the filled quantity in base units for USD-M (COIN-M
-- quantities are contracts: no base quantity), base_asset from exchangeInfo (symbols).
CREATE VIEW liquidations AS
SELECT 'binance'::text AS venue, m.market, m.symbol, s.base_asset, m.liquidated_side,
       m.avg_price AS price,
       CASE WHEN m.market = 'UM' THEN m.filled_qty END AS qty,
       m.notional_usd, m.trade_time, m.received_at
  FROM market_liquidations m
  LEFT JOIN symbols s ON s.market = m.market AND s.symbol = m.symbol
UNION ALL
SELECT v.venue, v.market, v.symbol, v.base_asset, v.liquidated_side, v.price, v.qty,
       v.notional_usd, v.trade_time, v.received_at
  FROM venue_liquidations v;

COMMENT ON VIEW liquidations IS
    'Every venue''s liquidations, normalised (venue, market, symbol, base_asset, liquidated_side LONG/SHORT, price, qty in base units where defined, notional_usd, trade_time, received_at). Each venue samples differently: see venues.';

-- The coverage ledger, per venue.
ALTER TABLE ws_sessions ADD COLUMN venue text NOT NULL DEFAULT 'binance' REFERENCES venues;
CREATE INDEX ws_sessions_venue_opened_at ON ws_sessions (venue, opened_at);

-- (The columns of 0006's view, then the venue: CREATE OR REPLACE VIEW may only append.)
CREATE OR REPLACE VIEW ws_session_coverage AS
SELECT session_id, connection, host, streams,
       tstzrange(opened_at,
                 greatest(opened_at,
                          CASE WHEN closed_at IS NOT NULL THEN closed_at
                               WHEN last_alive_at >= now() - ws_liveness_grace()
                                   THEN greatest(now(), last_alive_at)
                               ELSE last_alive_at
                          END),
                 '[]') AS covered,
       venue
  FROM ws_sessions;

-- What a gap repair read back: [repaired_from, repaired_to) of `stream` on `venue` is known
-- from `source` (e.g. rest:okx:liquidation-orders), which returned `rows` liquidations there
-- (stored once with the stream's: same content keys). Written by the collector after the rows.
CREATE TABLE coverage_repairs (
    id            bigserial   PRIMARY KEY,
    venue         text        NOT NULL REFERENCES venues,
    stream        text        NOT NULL,
    repaired_from timestamptz NOT NULL,
    repaired_to   timestamptz NOT NULL CHECK (repaired_to >= repaired_from),
    source        text        NOT NULL,
    rows          integer     NOT NULL CHECK (rows >= 0),
    recorded_at   timestamptz NOT NULL,
    UNIQUE (venue, stream, repaired_from, repaired_to, source)  -- a replayed record is one
);
CREATE INDEX coverage_repairs_venue_time ON coverage_repairs (venue, repaired_from);

-- Every interval the ledger knows a venue's streams for: `live` from a websocket session,
-- `repaired` from a read-back (`source` says which).
CREATE VIEW venue_coverage AS
SELECT venue, streams, covered, 'live'::text AS kind, NULL::text AS source
  FROM ws_session_coverage
UNION ALL
SELECT venue, ARRAY[stream], tstzrange(repaired_from, repaired_to, '[)'), 'repaired', source
  FROM coverage_repairs;

-- The multirange of [from_at, to_at) that `kind` intervals of the venue's streams cover
-- (stream_names NULL: any stream of the venue).
CREATE FUNCTION venue_covered(venue_name text, stream_names text[], from_at timestamptz,
                              to_at timestamptz, coverage_kind text)
RETURNS tstzmultirange
LANGUAGE sql STABLE AS $$
    SELECT tstzmultirange(tstzrange(from_at, to_at))
           * coalesce(range_agg(c.covered), '{}'::tstzmultirange)
      FROM venue_coverage c
     WHERE c.venue = venue_name AND c.kind = coverage_kind
       AND (stream_names IS NULL OR c.streams && stream_names)
       AND lower(c.covered) < to_at
       AND upper(c.covered) > from_at
$$;

-- Intervals within [from_at, to_at) when no session of `venue_name` carried any of
-- `stream_names` (NULL: any of its streams), split where a repair read part of it back:
-- `repaired` pieces name their `repair_sources`; the others are gaps nothing filled.
-- Example: SELECT * FROM coverage_gaps('okx', NULL, now() - interval '1 day', now());
CREATE FUNCTION coverage_gaps(venue_name text, stream_names text[], from_at timestamptz,
                              to_at timestamptz)
RETURNS TABLE (gap_start timestamptz, gap_end timestamptz, repaired boolean,
               repair_sources text[])
LANGUAGE sql STABLE AS $$
    WITH g AS (
        SELECT tstzmultirange(tstzrange(from_at, to_at))
                   - venue_covered(venue_name, stream_names, from_at, to_at, 'live') AS gaps,
               venue_covered(venue_name, stream_names, from_at, to_at, 'repaired') AS fixed
    ), pieces AS (
        SELECT p AS piece, false AS repaired FROM g, unnest(g.gaps - g.fixed) AS p
        UNION ALL
        SELECT p, true FROM g, unnest(g.gaps * g.fixed) AS p
    )
    SELECT lower(x.piece), upper(x.piece), x.repaired,
           CASE WHEN x.repaired THEN
               (SELECT array_agg(DISTINCT c.source ORDER BY c.source)
                  FROM venue_coverage c
                 WHERE c.venue = venue_name AND c.kind = 'repaired'
                   AND (stream_names IS NULL OR c.streams && stream_names)
                   AND c.covered && x.piece)
           END
      FROM pieces x
     ORDER BY 1
$$;

-- The complement: intervals within [from_at, to_at) some session of the venue covered live,
-- then (repaired true) those only a repair covered.
CREATE FUNCTION coverage_intervals(venue_name text, stream_names text[], from_at timestamptz,
                                   to_at timestamptz)
RETURNS TABLE (covered_start timestamptz, covered_end timestamptz, repaired boolean)
LANGUAGE sql STABLE AS $$
    WITH m AS (
        SELECT venue_covered(venue_name, stream_names, from_at, to_at, 'live') AS live,
               venue_covered(venue_name, stream_names, from_at, to_at, 'repaired') AS fixed
    )
    SELECT lower(p), upper(p), false FROM m, unnest(m.live) AS p
    UNION ALL
    SELECT lower(p), upper(p), true FROM m, unnest(m.fixed - m.live) AS p
     ORDER BY 1
$$;

-- Each `step` bucket of [from_at, to_at) with the seconds of it covered live and the seconds
-- only a repair covered. A bucket with covered_s + repaired_s = 0 is *no data*: dashboards
-- show NULL there, never 0.
CREATE FUNCTION coverage_buckets(venue_name text, stream_names text[], from_at timestamptz,
                                 to_at timestamptz, step interval)
RETURNS TABLE (bucket timestamptz, covered_s double precision, repaired_s double precision,
               span_s double precision)
LANGUAGE sql STABLE AS $$
    WITH b AS (
        SELECT g AS bucket, greatest(g, from_at) AS lo, least(g + step, to_at) AS hi
          FROM generate_series(date_bin(step, from_at, '2000-01-01 00:00:00+00'), to_at, step) AS g
         WHERE g < to_at
    )
    SELECT b.bucket,
           coalesce(sum(extract(epoch FROM least(c.covered_end, b.hi) - greatest(c.covered_start, b.lo)))
                        FILTER (WHERE NOT c.repaired), 0)::double precision,
           coalesce(sum(extract(epoch FROM least(c.covered_end, b.hi) - greatest(c.covered_start, b.lo)))
                        FILTER (WHERE c.repaired), 0)::double precision,
           extract(epoch FROM b.hi - b.lo)::double precision
      FROM b
      LEFT JOIN coverage_intervals(venue_name, stream_names, from_at, to_at) c
        ON c.covered_start < b.hi AND c.covered_end > b.lo
     GROUP BY b.bucket, b.lo, b.hi
     ORDER BY b.bucket
$$;

-- The stream-only forms (0002) keep their signatures and answers for Binance: its sessions
-- alone, as before other venues had sessions (coverage_buckets(text[], ...) reads these).
CREATE OR REPLACE FUNCTION coverage_gaps(stream_names text[], from_at timestamptz, to_at timestamptz)
RETURNS TABLE (gap_start timestamptz, gap_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT lower(g), upper(g)
      FROM unnest(
               tstzmultirange(tstzrange(from_at, to_at))
               - venue_covered('binance', stream_names, from_at, to_at, 'live')
           ) AS g
     ORDER BY 1
$$;

CREATE OR REPLACE FUNCTION coverage_intervals(stream_names text[], from_at timestamptz, to_at timestamptz)
RETURNS TABLE (covered_start timestamptz, covered_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT lower(g), upper(g)
      FROM unnest(venue_covered('binance', stream_names, from_at, to_at, 'live')) AS g
     ORDER BY 1
$$;
