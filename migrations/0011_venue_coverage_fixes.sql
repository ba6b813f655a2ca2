-- Two corrections to the venue ledger of 0008.
--
-- 1. An imported file covers one symbol (a Tardis.dev liquidations CSV is per exchange, symbol and
-- day; `collector import` records it as a repair of that symbol's stream, source `import:...`).
-- Asked for a whole venue (stream_names NULL), 0008's functions counted any repair of any
-- stream: one imported symbol's day showed the venue as repaired for that day, a claim of more
-- than was read. Here a venue-wide question counts live sessions and venue-wide repairs (OKX's
-- REST read-back per instType) but not per-symbol imports; asked for that symbol's stream by
-- name, the import counts as before.

CREATE OR REPLACE FUNCTION venue_covered(venue_name text, stream_names text[],
                                         from_at timestamptz, to_at timestamptz,
                                         coverage_kind text)
RETURNS tstzmultirange
LANGUAGE sql STABLE AS $$
    SELECT tstzmultirange(tstzrange(from_at, to_at))
           * coalesce(range_agg(c.covered), '{}'::tstzmultirange)
      FROM venue_coverage c
     WHERE c.venue = venue_name AND c.kind = coverage_kind
       AND (CASE WHEN stream_names IS NULL THEN coalesce(c.source, '') NOT LIKE 'import:%'
                 ELSE c.streams && stream_names END)
       AND lower(c.covered) < to_at
       AND upper(c.covered) > from_at
$$;

CREATE OR REPLACE FUNCTION coverage_gaps(venue_name text, stream_names text[],
                                         from_at timestamptz, to_at timestamptz)
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
                   AND (CASE WHEN stream_names IS NULL
                                 THEN coalesce(c.source, '') NOT LIKE 'import:%'
                             ELSE c.streams && stream_names END)
                   AND c.covered && x.piece)
           END
      FROM pieces x
     ORDER BY 1
$$;

-- 2. A Bybit or OKX session reads nothing until its subscription is acknowledged (Binance's
-- streams are on the URL: they flow from the open), so such a session covers from
-- `subscribed_at`, and a session never subscribed covers nothing (an empty range at its last
-- sign of life). 0008's view counted every session from `opened_at`.
CREATE OR REPLACE VIEW ws_session_coverage AS
SELECT session_id, connection, host, streams,
       CASE WHEN venue = 'binance' OR subscribed_at IS NOT NULL THEN
           tstzrange(start,
                     greatest(start,
                              CASE WHEN closed_at IS NOT NULL THEN closed_at
                                   WHEN last_alive_at >= now() - ws_liveness_grace()
                                       THEN greatest(now(), last_alive_at)
                                   ELSE last_alive_at
                              END),
                     '[]')
       ELSE 'empty'::tstzrange END AS covered,
       venue
  FROM (SELECT *, CASE WHEN venue = 'binance' THEN opened_at ELSE subscribed_at END AS start
          FROM ws_sessions) s;
