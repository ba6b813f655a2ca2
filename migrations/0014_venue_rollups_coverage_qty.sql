-- Three parts of issue 14 (more venues), each a section below:
--   1. venue rollups: totals of the other venues' liquidations by venue ("the rollups include
--      the venue"), so the dashboards' "By exchange" panels read totals, not every row;
--   2. Bybit's venue-wide coverage: venues.coverage_streams for bybit is its all-symbols row;
--   3. inverse contracts' base quantities: the liquidations_base_qty view.
--
-- 1. Venue rollups.
--
-- Binance keeps its own rollups (0004, refreshed by refresh_market_rollup_dirty()); this adds the
-- same machinery for venue_liquidations (Bybit, OKX), with a `venue` column, in objects of its
-- own: triggers mark changed minutes in venue_rollup_dirty, venue_rollup_refresh_dirty()
-- (called by collector/db/venue_rollup.py) recomputes them, and the readers recompute
-- still-marked minutes from the base table, so an answer is exact whether or not the refresh
-- has run. liquidation_totals_by_venue() puts both together: Binance's liquidation_totals()
-- (venue 'binance') beside venue_liquidation_totals().
--
-- A row with no usable side (OKX MARGIN) has liquidated_side NULL in its group (UNIQUE NULLS
-- NOT DISTINCT). The rollups keep no quantity: a base quantity is not defined for every row
-- (inverse contracts), and the dashboards sum USD.
--
-- Buckets are UTC-aligned (date_bin from 2000-01-01 00:00 UTC), whatever the session time zone.

CREATE TABLE venue_liquidations_1m (
    bucket           timestamptz NOT NULL,  -- start of the UTC minute of trade_time
    venue            text        NOT NULL,
    market           text        NOT NULL,  -- Bybit category, OKX instType
    symbol           text        NOT NULL,
    liquidated_side  text,                  -- LONG, SHORT; NULL: no usable side
    events           bigint      NOT NULL,
    notional_usd     numeric     NOT NULL,  -- sum over the rows whose notional is known
    notional_unknown bigint      NOT NULL,  -- rows whose notional_usd is NULL
    max_notional_usd numeric,               -- the largest single liquidation; NULL if none known
    UNIQUE NULLS NOT DISTINCT (bucket, venue, market, symbol, liquidated_side)
);
CREATE INDEX venue_liquidations_1m_venue ON venue_liquidations_1m (venue, bucket);

CREATE TABLE venue_liquidations_1h (LIKE venue_liquidations_1m,
    UNIQUE NULLS NOT DISTINCT (bucket, venue, market, symbol, liquidated_side));
CREATE INDEX venue_liquidations_1h_venue ON venue_liquidations_1h (venue, bucket);
CREATE INDEX venue_liquidations_1h_max ON venue_liquidations_1h (max_notional_usd DESC NULLS LAST);

CREATE TABLE venue_liquidations_1d (LIKE venue_liquidations_1m,
    UNIQUE NULLS NOT DISTINCT (bucket, venue, market, symbol, liquidated_side));
CREATE INDEX venue_liquidations_1d_venue ON venue_liquidations_1d (venue, bucket);

-- Minutes of venue_liquidations changed since the rollups last saw them: append-only, one row
-- per statement and minute, so concurrent writers never wait on each other's marks.
CREATE TABLE venue_rollup_dirty (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX venue_rollup_dirty_bucket ON venue_rollup_dirty (bucket);

COMMENT ON TABLE venue_liquidations_1m IS
    'Per-minute totals of venue_liquidations by venue; read through venue_liquidation_totals() or liquidation_totals_by_venue(), exact even for minutes not yet refreshed.';
COMMENT ON TABLE venue_liquidations_1h IS 'Per-hour totals of venue_liquidations_1m.';
COMMENT ON TABLE venue_liquidations_1d IS 'Per-day (UTC) totals of venue_liquidations_1h.';
COMMENT ON TABLE venue_rollup_dirty IS
    'Minutes of venue_liquidations changed since the venue rollups last saw them (maintained by triggers).';

CREATE FUNCTION venue_rollup_mark() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM venue_liquidations_1m;
        DELETE FROM venue_liquidations_1h;
        DELETE FROM venue_liquidations_1d;
        DELETE FROM venue_rollup_dirty;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO venue_rollup_dirty (bucket)
        SELECT DISTINCT date_bin('1 minute', n.trade_time, '2000-01-01 00:00:00+00') FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO venue_rollup_dirty (bucket)
        SELECT DISTINCT date_bin('1 minute', c.t, '2000-01-01 00:00:00+00')
          FROM (SELECT o.trade_time FROM old_rows o UNION ALL SELECT n.trade_time FROM new_rows n) AS c(t);
    ELSE  -- DELETE
        INSERT INTO venue_rollup_dirty (bucket)
        SELECT DISTINCT date_bin('1 minute', o.trade_time, '2000-01-01 00:00:00+00') FROM old_rows o;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER venue_rollup_insert AFTER INSERT ON venue_liquidations
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION venue_rollup_mark();
CREATE TRIGGER venue_rollup_update AFTER UPDATE ON venue_liquidations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION venue_rollup_mark();
CREATE TRIGGER venue_rollup_delete AFTER DELETE ON venue_liquidations
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION venue_rollup_mark();
CREATE TRIGGER venue_rollup_truncate AFTER TRUNCATE ON venue_liquidations
    FOR EACH STATEMENT EXECUTE FUNCTION venue_rollup_mark();

-- Recomputes the given minutes (any timestamps; each counts for its minute) from the base table,
-- then their hours from the minutes and their days from the hours. Idempotent; groups that no
-- longer have rows are deleted. Runs of consecutive buckets are read as one range each (the
-- shape of 0007's refresh_market_rollup_minutes, for the same reasons: JIT off, fresh plans).
-- Returns the number of distinct minutes recomputed.
CREATE FUNCTION venue_rollup_refresh_minutes(minutes timestamptz[]) RETURNS integer
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    mins  timestamptz[] := ARRAY(SELECT DISTINCT date_bin('1 minute', m, '2000-01-01 00:00:00+00')
                                   FROM unnest(minutes) AS u(m) WHERE m IS NOT NULL ORDER BY 1);
    hours timestamptz[] := ARRAY(SELECT DISTINCT date_bin('1 hour', m, '2000-01-01 00:00:00+00')
                                   FROM unnest(mins) AS u(m) ORDER BY 1);
    days  timestamptz[] := ARRAY(SELECT DISTINCT date_bin('1 day', m, '2000-01-01 00:00:00+00')
                                   FROM unnest(mins) AS u(m) ORDER BY 1);
BEGIN
    WITH runs AS (  -- consecutive minutes share `m - n minutes` (n: the minute's rank)
        SELECT min(m) AS lo, max(m) + interval '1 minute' AS hi
          FROM (SELECT m, m - interval '1 minute' * row_number() OVER (ORDER BY m) AS run
                  FROM unnest(mins) AS u(m)) s
         GROUP BY run
    ), fresh AS (
        SELECT f.*
          FROM runs
         CROSS JOIN LATERAL (
            SELECT date_bin('1 minute', b.trade_time, '2000-01-01 00:00:00+00') AS bucket,
                   b.venue, b.market, b.symbol, b.liquidated_side,
                   count(*) AS events, coalesce(sum(b.notional_usd), 0) AS notional_usd,
                   count(*) - count(b.notional_usd) AS notional_unknown,
                   max(b.notional_usd) AS max_notional_usd
              FROM venue_liquidations b
             WHERE b.trade_time >= runs.lo AND b.trade_time < runs.hi
             GROUP BY 1, 2, 3, 4, 5) f
    ), gone AS (
        DELETE FROM venue_liquidations_1m r
         WHERE r.bucket IN (SELECT u.b FROM unnest(mins) AS u(b))
           AND NOT EXISTS (SELECT 1 FROM fresh f
                            WHERE f.bucket = r.bucket AND f.venue = r.venue AND f.market = r.market
                              AND f.symbol = r.symbol
                              AND f.liquidated_side IS NOT DISTINCT FROM r.liquidated_side)
    )
    INSERT INTO venue_liquidations_1m AS r
    SELECT bucket, venue, market, symbol, liquidated_side, events, notional_usd, notional_unknown,
           max_notional_usd
      FROM fresh
    ON CONFLICT (bucket, venue, market, symbol, liquidated_side) DO UPDATE SET
        events = EXCLUDED.events, notional_usd = EXCLUDED.notional_usd,
        notional_unknown = EXCLUDED.notional_unknown, max_notional_usd = EXCLUDED.max_notional_usd
    WHERE (r.events, r.notional_usd, r.notional_unknown, r.max_notional_usd)
          IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.notional_usd, EXCLUDED.notional_unknown,
                            EXCLUDED.max_notional_usd);

    WITH runs AS (
        SELECT min(h) AS lo, max(h) + interval '1 hour' AS hi
          FROM (SELECT h, h - interval '1 hour' * row_number() OVER (ORDER BY h) AS run
                  FROM unnest(hours) AS u(h)) s
         GROUP BY run
    ), fresh AS (
        SELECT f.*
          FROM runs
         CROSS JOIN LATERAL (
            SELECT date_bin('1 hour', r.bucket, '2000-01-01 00:00:00+00') AS bucket,
                   r.venue, r.market, r.symbol, r.liquidated_side,
                   sum(r.events)::bigint AS events, sum(r.notional_usd) AS notional_usd,
                   sum(r.notional_unknown)::bigint AS notional_unknown,
                   max(r.max_notional_usd) AS max_notional_usd
              FROM venue_liquidations_1m r
             WHERE r.bucket >= runs.lo AND r.bucket < runs.hi
             GROUP BY 1, 2, 3, 4, 5) f
    ), gone AS (
        DELETE FROM venue_liquidations_1h r
         WHERE r.bucket IN (SELECT u.b FROM unnest(hours) AS u(b))
           AND NOT EXISTS (SELECT 1 FROM fresh f
                            WHERE f.bucket = r.bucket AND f.venue = r.venue AND f.market = r.market
                              AND f.symbol = r.symbol
                              AND f.liquidated_side IS NOT DISTINCT FROM r.liquidated_side)
    )
    INSERT INTO venue_liquidations_1h AS r
    SELECT bucket, venue, market, symbol, liquidated_side, events, notional_usd, notional_unknown,
           max_notional_usd
      FROM fresh
    ON CONFLICT (bucket, venue, market, symbol, liquidated_side) DO UPDATE SET
        events = EXCLUDED.events, notional_usd = EXCLUDED.notional_usd,
        notional_unknown = EXCLUDED.notional_unknown, max_notional_usd = EXCLUDED.max_notional_usd
    WHERE (r.events, r.notional_usd, r.notional_unknown, r.max_notional_usd)
          IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.notional_usd, EXCLUDED.notional_unknown,
                            EXCLUDED.max_notional_usd);

    WITH runs AS (
        SELECT min(d) AS lo, max(d) + interval '1 day' AS hi
          FROM (SELECT d, d - interval '1 day' * row_number() OVER (ORDER BY d) AS run
                  FROM unnest(days) AS u(d)) s
         GROUP BY run
    ), fresh AS (
        SELECT f.*
          FROM runs
         CROSS JOIN LATERAL (
            SELECT date_bin('1 day', r.bucket, '2000-01-01 00:00:00+00') AS bucket,
                   r.venue, r.market, r.symbol, r.liquidated_side,
                   sum(r.events)::bigint AS events, sum(r.notional_usd) AS notional_usd,
                   sum(r.notional_unknown)::bigint AS notional_unknown,
                   max(r.max_notional_usd) AS max_notional_usd
              FROM venue_liquidations_1h r
             WHERE r.bucket >= runs.lo AND r.bucket < runs.hi
             GROUP BY 1, 2, 3, 4, 5) f
    ), gone AS (
        DELETE FROM venue_liquidations_1d r
         WHERE r.bucket IN (SELECT u.b FROM unnest(days) AS u(b))
           AND NOT EXISTS (SELECT 1 FROM fresh f
                            WHERE f.bucket = r.bucket AND f.venue = r.venue AND f.market = r.market
                              AND f.symbol = r.symbol
                              AND f.liquidated_side IS NOT DISTINCT FROM r.liquidated_side)
    )
    INSERT INTO venue_liquidations_1d AS r
    SELECT bucket, venue, market, symbol, liquidated_side, events, notional_usd, notional_unknown,
           max_notional_usd
      FROM fresh
    ON CONFLICT (bucket, venue, market, symbol, liquidated_side) DO UPDATE SET
        events = EXCLUDED.events, notional_usd = EXCLUDED.notional_usd,
        notional_unknown = EXCLUDED.notional_unknown, max_notional_usd = EXCLUDED.max_notional_usd
    WHERE (r.events, r.notional_usd, r.notional_unknown, r.max_notional_usd)
          IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.notional_usd, EXCLUDED.notional_unknown,
                            EXCLUDED.max_notional_usd);
    RETURN cardinality(mins);
END $$;

-- Recomputes every minute in [from_at, to_at), one day per statement: a rebuild or a repair.
-- Example: SELECT venue_rollup_refresh(now() - interval '7 days', now());
CREATE FUNCTION venue_rollup_refresh(from_at timestamptz, to_at timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    lo    timestamptz := date_bin('1 minute', from_at, '2000-01-01 00:00:00+00');
    hi    timestamptz;
    total integer := 0;
BEGIN
    WHILE lo < to_at LOOP
        hi := least(lo + interval '1 day', to_at);
        total := total + venue_rollup_refresh_minutes(
            ARRAY(SELECT generate_series(lo, hi - interval '1 microsecond', interval '1 minute')));
        lo := lo + interval '1 day';
    END LOOP;
    RETURN total;
END $$;

-- One pass of the venue rollup task: recompute up to `max_minutes` marked minutes (oldest
-- first), then delete the marks it read, and only those (a mark committed after they were read
-- stays for the next pass). Returns the minutes recomputed, or NULL when another session is
-- running a pass right now (its own lock: Binance's pass and this one never wait on each other).
CREATE FUNCTION venue_rollup_refresh_dirty(max_minutes integer DEFAULT 10000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    mins timestamptz[];
    ids  bigint[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(x'636f6c76'::integer) THEN  -- "colv"
        RETURN NULL;
    END IF;
    SELECT array_agg(d.id), array_agg(DISTINCT d.bucket)
      INTO ids, mins
      FROM venue_rollup_dirty d
     WHERE d.bucket IN (SELECT DISTINCT x.bucket FROM venue_rollup_dirty x
                         ORDER BY x.bucket LIMIT max_minutes);
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM venue_rollup_refresh_minutes(mins);
    DELETE FROM venue_rollup_dirty d WHERE d.id = ANY (ids);
    RETURN cardinality(mins);
END $$;

-- Per-minute totals in [minute of from_at, to_at): refreshed minutes from the rollup, marked
-- minutes recomputed from the base table. NULL `venue_names`/`markets`/`symbols` mean all.
CREATE FUNCTION venue_liquidation_minutes(from_at timestamptz, to_at timestamptz,
                                          venue_names text[] DEFAULT NULL,
                                          markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, venue text, market text, symbol text, liquidated_side text,
               events bigint, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT r.bucket, r.venue, r.market, r.symbol, r.liquidated_side, r.events, r.notional_usd,
           r.notional_unknown, r.max_notional_usd
      FROM venue_liquidations_1m r
     WHERE r.bucket >= date_bin('1 minute', from_at, '2000-01-01 00:00:00+00') AND r.bucket < to_at
       AND (venue_names IS NULL OR r.venue = ANY (venue_names))
       AND (markets IS NULL OR r.market = ANY (markets))
       AND (symbols IS NULL OR r.symbol = ANY (symbols))
       AND NOT EXISTS (SELECT 1 FROM venue_rollup_dirty d WHERE d.bucket = r.bucket)
    UNION ALL
    SELECT d.bucket, b.venue, b.market, b.symbol, b.liquidated_side, count(*),
           coalesce(sum(b.notional_usd), 0), count(*) - count(b.notional_usd), max(b.notional_usd)
      FROM (SELECT DISTINCT x.bucket FROM venue_rollup_dirty x
             WHERE x.bucket >= date_bin('1 minute', from_at, '2000-01-01 00:00:00+00')
               AND x.bucket < to_at) d
      JOIN venue_liquidations b
        ON b.trade_time >= d.bucket AND b.trade_time < d.bucket + interval '1 minute'
     WHERE (venue_names IS NULL OR b.venue = ANY (venue_names))
       AND (markets IS NULL OR b.market = ANY (markets))
       AND (symbols IS NULL OR b.symbol = ANY (symbols))
     GROUP BY d.bucket, b.venue, b.market, b.symbol, b.liquidated_side
$$;

-- Per-hour totals in [hour of from_at, to_at): clean hours from the hourly rollup; hours holding
-- a marked minute are summed from venue_liquidation_minutes().
CREATE FUNCTION venue_liquidation_hours(from_at timestamptz, to_at timestamptz,
                                        venue_names text[] DEFAULT NULL,
                                        markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, venue text, market text, symbol text, liquidated_side text,
               events bigint, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT h.bucket, h.venue, h.market, h.symbol, h.liquidated_side, h.events, h.notional_usd,
           h.notional_unknown, h.max_notional_usd
      FROM venue_liquidations_1h h
     WHERE h.bucket >= date_bin('1 hour', from_at, '2000-01-01 00:00:00+00') AND h.bucket < to_at
       AND (venue_names IS NULL OR h.venue = ANY (venue_names))
       AND (markets IS NULL OR h.market = ANY (markets))
       AND (symbols IS NULL OR h.symbol = ANY (symbols))
       AND NOT EXISTS (SELECT 1 FROM venue_rollup_dirty d
                        WHERE d.bucket >= h.bucket AND d.bucket < h.bucket + interval '1 hour')
    UNION ALL
    SELECT dh.hour, m.venue, m.market, m.symbol, m.liquidated_side, sum(m.events)::bigint,
           sum(m.notional_usd), sum(m.notional_unknown)::bigint, max(m.max_notional_usd)
      FROM (SELECT DISTINCT date_bin('1 hour', d.bucket, '2000-01-01 00:00:00+00') AS hour
              FROM venue_rollup_dirty d
             WHERE d.bucket >= date_bin('1 hour', from_at, '2000-01-01 00:00:00+00')
               AND d.bucket < to_at) dh
     CROSS JOIN LATERAL venue_liquidation_minutes(dh.hour, dh.hour + interval '1 hour',
                                                  venue_names, markets, symbols) m
     GROUP BY dh.hour, m.venue, m.market, m.symbol, m.liquidated_side
$$;

-- Per-day (UTC) totals in [day of from_at, to_at): clean days from the daily rollup; days
-- holding a marked minute are summed from venue_liquidation_hours().
CREATE FUNCTION venue_liquidation_days(from_at timestamptz, to_at timestamptz,
                                       venue_names text[] DEFAULT NULL,
                                       markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, venue text, market text, symbol text, liquidated_side text,
               events bigint, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT x.bucket, x.venue, x.market, x.symbol, x.liquidated_side, x.events, x.notional_usd,
           x.notional_unknown, x.max_notional_usd
      FROM venue_liquidations_1d x
     WHERE x.bucket >= date_bin('1 day', from_at, '2000-01-01 00:00:00+00') AND x.bucket < to_at
       AND (venue_names IS NULL OR x.venue = ANY (venue_names))
       AND (markets IS NULL OR x.market = ANY (markets))
       AND (symbols IS NULL OR x.symbol = ANY (symbols))
       AND NOT EXISTS (SELECT 1 FROM venue_rollup_dirty d
                        WHERE d.bucket >= x.bucket AND d.bucket < x.bucket + interval '1 day')
    UNION ALL
    SELECT dd.day, h.venue, h.market, h.symbol, h.liquidated_side, sum(h.events)::bigint,
           sum(h.notional_usd), sum(h.notional_unknown)::bigint, max(h.max_notional_usd)
      FROM (SELECT DISTINCT date_bin('1 day', d.bucket, '2000-01-01 00:00:00+00') AS day
              FROM venue_rollup_dirty d
             WHERE d.bucket >= date_bin('1 day', from_at, '2000-01-01 00:00:00+00')
               AND d.bucket < to_at) dd
     CROSS JOIN LATERAL venue_liquidation_hours(dd.day, dd.day + interval '1 day',
                                                venue_names, markets, symbols) h
     GROUP BY dd.day, h.venue, h.market, h.symbol, h.liquidated_side
$$;

-- Totals per `step` bucket, UTC-aligned, of the other venues (the rollup rollup_source(step)
-- picks, as liquidation_totals() does for Binance; the range's edges count in whole buckets).
CREATE FUNCTION venue_liquidation_totals(from_at timestamptz, to_at timestamptz, step interval,
                                         venue_names text[] DEFAULT NULL,
                                         markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, venue text, market text, symbol text, liquidated_side text,
               events bigint, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT date_bin(step, s.bucket, '2000-01-01 00:00:00+00'), s.venue, s.market, s.symbol,
           s.liquidated_side, sum(s.events)::bigint, sum(s.notional_usd),
           sum(s.notional_unknown)::bigint, max(s.max_notional_usd)
      FROM (SELECT * FROM venue_liquidation_days(from_at, to_at, venue_names, markets, symbols)
             WHERE rollup_source(step) = 'day'
            UNION ALL
            SELECT * FROM venue_liquidation_hours(from_at, to_at, venue_names, markets, symbols)
             WHERE rollup_source(step) = 'hour'
            UNION ALL
            SELECT * FROM venue_liquidation_minutes(from_at, to_at, venue_names, markets, symbols)
             WHERE rollup_source(step) = 'minute') s
     GROUP BY 1, 2, 3, 4, 5
$$;

-- Every venue's totals per `step` bucket: Binance's from its rollups (liquidation_totals(),
-- venue 'binance'), the others' from the venue rollups. NULL `venue_names` means all.
-- Example: SELECT * FROM liquidation_totals_by_venue(now() - interval '1 day', now(), '1 hour');
CREATE FUNCTION liquidation_totals_by_venue(from_at timestamptz, to_at timestamptz, step interval,
                                            venue_names text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, venue text, market text, symbol text, liquidated_side text,
               events bigint, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT b.bucket, 'binance'::text, b.market, b.symbol, b.liquidated_side, b.events,
           b.notional_usd, b.notional_unknown, b.max_notional_usd
      FROM liquidation_totals(from_at, to_at, step) b
     WHERE venue_names IS NULL OR 'binance' = ANY (venue_names)
    UNION ALL
    SELECT v.bucket, v.venue, v.market, v.symbol, v.liquidated_side, v.events, v.notional_usd,
           v.notional_unknown, v.max_notional_usd
      FROM venue_liquidation_totals(from_at, to_at, step, venue_names) v
$$;

-- Build the rollups for rows stored before this migration.
SELECT venue_rollup_refresh(min(trade_time), max(trade_time) + interval '1 minute')
  FROM venue_liquidations
HAVING count(*) > 0;

-- The `n` largest venue_liquidations rows (by notional_usd) with trade_time in [from_at, to_at),
-- found through the hourly rollup's per-group maximum as largest_liquidations() (0004) does for
-- Binance: the n whole clean hours with the largest single liquidation hold every top-n row;
-- the partial hours at the edges and any hour with a marked minute are read from the base table.
-- Rows whose notional is unknown are not ranked.
CREATE FUNCTION largest_venue_liquidations(from_at timestamptz, to_at timestamptz, n integer,
                                           venue_names text[] DEFAULT NULL)
RETURNS SETOF venue_liquidations
LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT CASE WHEN date_bin('1 hour', from_at, '2000-01-01 00:00:00+00') < from_at
                    THEN date_bin('1 hour', from_at, '2000-01-01 00:00:00+00') + interval '1 hour'
                    ELSE from_at END AS inner_lo,
               date_bin('1 hour', to_at, '2000-01-01 00:00:00+00') AS inner_hi
    ), top_groups AS (
        SELECT h.bucket, h.venue, h.market, h.symbol, h.liquidated_side
          FROM venue_liquidations_1h h, bounds
         WHERE h.bucket >= bounds.inner_lo AND h.bucket < bounds.inner_hi
           AND h.max_notional_usd IS NOT NULL
           AND (venue_names IS NULL OR h.venue = ANY (venue_names))
         ORDER BY h.max_notional_usd DESC
         LIMIT n
    ), windows AS (
        SELECT from_at AS lo, least(bounds.inner_lo, to_at) AS hi FROM bounds
        UNION ALL
        SELECT greatest(bounds.inner_hi, bounds.inner_lo, from_at), to_at FROM bounds
        UNION ALL
        SELECT DISTINCT date_bin('1 hour', d.bucket, '2000-01-01 00:00:00+00'),
               date_bin('1 hour', d.bucket, '2000-01-01 00:00:00+00') + interval '1 hour'
          FROM venue_rollup_dirty d, bounds
         WHERE d.bucket >= bounds.inner_lo AND d.bucket < bounds.inner_hi
    ), candidates AS (
        SELECT b.*
          FROM top_groups g
          JOIN venue_liquidations b
            ON b.venue = g.venue AND b.symbol = g.symbol AND b.trade_time >= g.bucket
           AND b.trade_time < g.bucket + interval '1 hour'
           AND b.market = g.market AND b.liquidated_side IS NOT DISTINCT FROM g.liquidated_side
        UNION
        SELECT b.*
          FROM windows w
          JOIN venue_liquidations b ON b.trade_time >= w.lo AND b.trade_time < w.hi
         WHERE w.lo < w.hi
           AND (venue_names IS NULL OR b.venue = ANY (venue_names))
    )
    SELECT * FROM candidates
     WHERE trade_time >= from_at AND trade_time < to_at AND notional_usd IS NOT NULL
     ORDER BY notional_usd DESC, trade_time DESC
     LIMIT n
$$;

-- 2. Bybit's venue-wide coverage (issue 14): Bybit has no all-market topic, so a session covers the
-- symbols it holds, not the venue. The collector keeps a ledger row of its own (connection
-- `bybit/all-symbols`, stream `allLiquidation.*`, collector/sources/bybit_coverage.py) open
-- exactly while every listed symbol of every configured category is subscribed; that stream is
-- now what "Bybit is covered" means in the dashboards and /v1/coverage. Sessions recorded before
-- this migration carry no such row: that time shows as no data for Bybit as a whole (a claim
-- nothing recorded), while each symbol's own stream keeps its coverage.
UPDATE venues SET coverage_streams = ARRAY['allLiquidation.*'] WHERE venue = 'bybit';
COMMENT ON COLUMN venues.coverage_streams IS
    'The streams whose coverage means "this venue is covered" (coverage_buckets(venue, coverage_streams, ...)): Binance {!forceOrder@arr}, Bybit {allLiquidation.*} (every listed symbol subscribed), NULL: any session of the venue (OKX).';

-- 3. Base quantities of inverse contracts (issue 14: "qty in base units where defined"). An inverse
-- contract's size is a USD face value, so its base quantity is that USD amount over the price:
--   * Bybit inverse: `v` is in USD, one contract one USD (docs/bybit.md section 1.2);
--     notional_usd = v, so qty = v / p;
--   * OKX inverse SWAP/FUTURES: sz contracts of ctVal x ctMult USD (docs/okx.md section 2.1);
--     notional_usd = sz x ctVal x ctMult, so qty = that / bkPx. (An OKX SWAP/FUTURES row without
--     qty but with notional_usd is inverse: a linear one gets its qty from ctVal in base units);
--   * Binance COIN-M: z contracts of contractSize USD (docs/binance.md); notional_usd =
--     z x contractSize (known once exchangeInfo is), so qty = that / ap.
-- The quotient seldom has a finite decimal: it is computed to 30 places and rounded half away
-- from zero to 18 (a wei of ETH, far below any exchange's lot), trailing zeros trimmed; the
-- view's qty_from_usd says which rows' qty was derived so.
CREATE FUNCTION usd_face_to_base_qty(usd numeric, price numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN usd IS NOT NULL AND price > 0
                THEN trim_scale(round(usd::numeric(1000, 30) / price, 18)) END
$$;

-- The base quantity of one normalised row: the wire's when it has one (`qty`), else the USD face
-- value over the price for the inverse markets above, else NULL.
CREATE FUNCTION liquidation_base_qty(venue text, market text, qty numeric, notional_usd numeric,
                                     price numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN qty IS NOT NULL THEN qty
        WHEN (venue = 'binance' AND market = 'CM') OR (venue = 'bybit' AND market = 'inverse')
             OR (venue = 'okx' AND market IN ('SWAP', 'FUTURES'))
            THEN usd_face_to_base_qty(notional_usd, price)
    END
$$;

-- The normalised relation with those quantities: the columns of `liquidations` (0008), qty
-- defined for inverse contracts too, and whether qty was derived from a USD face value. A new
-- view, so `liquidations` (and what reads it, such as `collector export`) keeps its answers.
CREATE VIEW liquidations_base_qty AS
SELECT 'binance'::text AS venue, m.market, m.symbol, s.base_asset, m.liquidated_side,
       m.avg_price AS price,
       liquidation_base_qty('binance', m.market,
                            CASE WHEN m.market = 'UM' THEN m.filled_qty END,
                            m.notional_usd, m.avg_price) AS qty,
       m.notional_usd, m.trade_time, m.received_at,
       m.market = 'CM' AND usd_face_to_base_qty(m.notional_usd, m.avg_price) IS NOT NULL
           AS qty_from_usd
  FROM market_liquidations m
  LEFT JOIN symbols s ON s.market = m.market AND s.symbol = m.symbol
UNION ALL
SELECT v.venue, v.market, v.symbol, v.base_asset, v.liquidated_side, v.price,
       liquidation_base_qty(v.venue, v.market, v.qty, v.notional_usd, v.price),
       v.notional_usd, v.trade_time, v.received_at,
       v.qty IS NULL
           AND liquidation_base_qty(v.venue, v.market, v.qty, v.notional_usd, v.price) IS NOT NULL
  FROM venue_liquidations v;

COMMENT ON VIEW liquidations_base_qty IS
    'The liquidations view with qty in base units for inverse contracts too (Bybit inverse, OKX inverse SWAP/FUTURES, Binance COIN-M: USD face value / price, rounded to 18 places; qty_from_usd true for those).';
