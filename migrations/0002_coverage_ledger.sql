-- The coverage ledger: one row per websocket session, so "no data" and "zero liquidations" differ.

CREATE TABLE ws_sessions (
    session_id      uuid        PRIMARY KEY,
    connection      text        NOT NULL,           -- logical connection, e.g. fstream/market#0
    host            text        NOT NULL,           -- fstream | dstream
    route           text        NOT NULL,
    url             text        NOT NULL,
    streams         text[]      NOT NULL,
    opened_at       timestamptz NOT NULL,           -- websocket upgrade completed
    subscribed_at   timestamptz,                    -- subscription confirmed (LIST_SUBSCRIPTIONS)
    first_event_at  timestamptz,
    last_event_at   timestamptz,
    last_alive_at   timestamptz NOT NULL,           -- refreshed while open; the end of coverage if the process died
    closed_at       timestamptz,
    close_reason    text,
    events_received bigint      NOT NULL DEFAULT 0
);
CREATE INDEX ws_sessions_opened_at ON ws_sessions (opened_at);
CREATE INDEX ws_sessions_streams ON ws_sessions USING gin (streams);

-- The interval a session covered: from the upgrade to the close, or to the last liveness mark.
CREATE VIEW ws_session_coverage AS
SELECT session_id, connection, host, streams,
       tstzrange(opened_at, greatest(opened_at, coalesce(closed_at, last_alive_at)), '[]') AS covered
  FROM ws_sessions;

-- Intervals within [from_at, to_at) when no session carried any of `stream_names`.
-- Example: SELECT * FROM coverage_gaps(ARRAY['!forceOrder@arr'], now() - interval '1 day', now());
CREATE FUNCTION coverage_gaps(stream_names text[], from_at timestamptz, to_at timestamptz)
RETURNS TABLE (gap_start timestamptz, gap_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT lower(g), upper(g)
      FROM unnest(
               tstzmultirange(tstzrange(from_at, to_at))
               - coalesce((SELECT range_agg(c.covered)
                             FROM ws_session_coverage c
                            WHERE c.streams && stream_names
                              AND lower(c.covered) < to_at
                              AND upper(c.covered) > from_at), '{}'::tstzmultirange)
           ) AS g
     ORDER BY 1
$$;

-- The complement: intervals within [from_at, to_at) that some session covered.
CREATE FUNCTION coverage_intervals(stream_names text[], from_at timestamptz, to_at timestamptz)
RETURNS TABLE (covered_start timestamptz, covered_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT lower(g), upper(g)
      FROM unnest(
               tstzmultirange(tstzrange(from_at, to_at))
               * coalesce((SELECT range_agg(c.covered)
                             FROM ws_session_coverage c
                            WHERE c.streams && stream_names
                              AND lower(c.covered) < to_at
                              AND upper(c.covered) > from_at), '{}'::tstzmultirange)
           ) AS g
     ORDER BY 1
$$;

-- COIN-M rows whose contract size was not known yet: the exchangeInfo refresh fills their
-- notional through this (tiny) index instead of scanning years of rows.
CREATE INDEX market_liquidations_cm_notional_pending ON market_liquidations (symbol)
    WHERE market = 'CM' AND notional_usd IS NULL;

-- Symbols seen in exchangeInfo, refreshed by the collector: contract sizes for COIN-M notional
-- and base assets for per-asset charts.
CREATE TABLE symbols (
    market        text        NOT NULL CHECK (market IN ('UM', 'CM')),
    symbol        text        NOT NULL,
    pair          text,
    base_asset    text,
    quote_asset   text,
    margin_asset  text,
    contract_type text,
    contract_size numeric,
    status        text,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (market, symbol)
);
