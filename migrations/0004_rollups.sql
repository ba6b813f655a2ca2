-- Rollups that keep dashboards fast over years of data: per-minute, per-hour and per-day totals
-- of market_liquidations by market, symbol and liquidated side, exact (NUMERIC sums), plus the
-- read functions the Grafana dashboards call.
--
-- How the rollups stay exact without rescanning history:
--   * statement triggers on market_liquidations mark each minute whose rows changed (a new row,
--     a COIN-M notional filled in later from exchangeInfo, a delete) in market_rollup_dirty, in
--     the same transaction as the change, so a mark is visible exactly when the change is;
--   * the collector's rollup task (collector/rollup.py) calls refresh_market_rollup_dirty(),
--     which recomputes the marked minutes (then their hours and days) from the base table and
--     deletes exactly the marks it read (a mark committed meanwhile stays for the next pass);
--   * readers use liquidation_totals(), which takes clean buckets from the rollups and
--     recomputes still-marked minutes from the base table, so a query is exact even while the
--     rollup task lags or is not running at all.
-- Buckets are UTC-aligned (date_bin from 2000-01-01 00:00 UTC), whatever the session time zone.

CREATE TABLE market_liquidations_1m (
    bucket           timestamptz NOT NULL,  -- start of the UTC minute of trade_time
    market           text        NOT NULL,
    symbol           text        NOT NULL,
    liquidated_side  text        NOT NULL,  -- LONG: a SELL force order closed a long
    events           bigint      NOT NULL,
    filled_qty       numeric     NOT NULL,  -- sum of o.z (UM: base asset; CM: contracts)
    notional_usd     numeric     NOT NULL,  -- sum over the rows whose notional is known
    notional_unknown bigint      NOT NULL,  -- rows whose notional_usd is still NULL
    max_notional_usd numeric,               -- the largest single liquidation; NULL if none known
    PRIMARY KEY (bucket, market, symbol, liquidated_side)
);
CREATE INDEX market_liquidations_1m_symbol ON market_liquidations_1m (symbol, bucket);

CREATE TABLE market_liquidations_1h (
    bucket           timestamptz NOT NULL,  -- start of the UTC hour
    market           text        NOT NULL,
    symbol           text        NOT NULL,
    liquidated_side  text        NOT NULL,
    events           bigint      NOT NULL,
    filled_qty       numeric     NOT NULL,
    notional_usd     numeric     NOT NULL,
    notional_unknown bigint      NOT NULL,
    max_notional_usd numeric,
    PRIMARY KEY (bucket, market, symbol, liquidated_side)
);
CREATE INDEX market_liquidations_1h_symbol ON market_liquidations_1h (symbol, bucket);
CREATE INDEX market_liquidations_1h_max ON market_liquidations_1h (max_notional_usd DESC NULLS LAST);

CREATE TABLE market_liquidations_1d (
    bucket           timestamptz NOT NULL,  -- start of the UTC day
    market           text        NOT NULL,
    symbol           text        NOT NULL,
    liquidated_side  text        NOT NULL,
    events           bigint      NOT NULL,
    filled_qty       numeric     NOT NULL,
    notional_usd     numeric     NOT NULL,
    notional_unknown bigint      NOT NULL,
    max_notional_usd numeric,
    PRIMARY KEY (bucket, market, symbol, liquidated_side)
);
CREATE INDEX market_liquidations_1d_symbol ON market_liquidations_1d (symbol, bucket);

-- Minutes whose base rows changed since their last refresh: an append-only log (one row per
-- statement and minute), so concurrent writers never wait on each other's marks.
CREATE TABLE market_rollup_dirty (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX market_rollup_dirty_bucket ON market_rollup_dirty (bucket);

COMMENT ON TABLE market_liquidations_1m IS
    'Per-minute totals of market_liquidations; read through liquidation_totals(), which is exact even for minutes not yet refreshed.';
COMMENT ON TABLE market_liquidations_1h IS
    'Per-hour totals of market_liquidations_1m; read through liquidation_totals().';
COMMENT ON TABLE market_liquidations_1d IS
    'Per-day (UTC) totals of market_liquidations_1h; read through liquidation_totals().';
COMMENT ON TABLE market_rollup_dirty IS
    'Minutes of market_liquidations changed since the rollups last saw them (maintained by triggers).';

-- The trigger: one insert per statement (the writer inserts a whole batch in one statement).
CREATE FUNCTION market_rollup_mark() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM market_liquidations_1m;
        DELETE FROM market_liquidations_1h;
        DELETE FROM market_liquidations_1d;
        DELETE FROM market_rollup_dirty;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO market_rollup_dirty (bucket)
        SELECT DISTINCT date_bin('1 minute', n.trade_time, '2000-01-01 00:00:00+00') FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO market_rollup_dirty (bucket)
        SELECT DISTINCT date_bin('1 minute', c.t, '2000-01-01 00:00:00+00')
          FROM (SELECT o.trade_time FROM old_rows o UNION ALL SELECT n.trade_time FROM new_rows n) AS c(t);
    ELSE  -- DELETE
        INSERT INTO market_rollup_dirty (bucket)
        SELECT DISTINCT date_bin('1 minute', o.trade_time, '2000-01-01 00:00:00+00') FROM old_rows o;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER market_rollup_insert AFTER INSERT ON market_liquidations
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION market_rollup_mark();
CREATE TRIGGER market_rollup_update AFTER UPDATE ON market_liquidations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION market_rollup_mark();
CREATE TRIGGER market_rollup_delete AFTER DELETE ON market_liquidations
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION market_rollup_mark();
CREATE TRIGGER market_rollup_truncate AFTER TRUNCATE ON market_liquidations
    FOR EACH STATEMENT EXECUTE FUNCTION market_rollup_mark();

-- Recomputes the given minutes (any timestamps; each counts for its minute) from the base table,
-- then their hours from the minutes and their days from the hours. Idempotent; buckets that no
-- longer have rows are deleted.
-- Returns the number of distinct minutes recomputed.
CREATE FUNCTION refresh_market_rollup_minutes(minutes timestamptz[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    mins  timestamptz[] := ARRAY(SELECT DISTINCT date_bin('1 minute', m, '2000-01-01 00:00:00+00')
                                   FROM unnest(minutes) AS u(m) WHERE m IS NOT NULL ORDER BY 1);
    hours timestamptz[] := ARRAY(SELECT DISTINCT date_bin('1 hour', m, '2000-01-01 00:00:00+00')
                                   FROM unnest(mins) AS u(m) ORDER BY 1);
    days  timestamptz[] := ARRAY(SELECT DISTINCT date_bin('1 day', m, '2000-01-01 00:00:00+00')
                                   FROM unnest(mins) AS u(m) ORDER BY 1);
BEGIN
    WITH fresh AS (
        SELECT u.m AS bucket, b.market, b.symbol, b.liquidated_side,
               count(*) AS events, sum(b.filled_qty) AS filled_qty,
               coalesce(sum(b.notional_usd), 0) AS notional_usd,
               count(*) - count(b.notional_usd) AS notional_unknown,
               max(b.notional_usd) AS max_notional_usd
          FROM unnest(mins) AS u(m)
          JOIN market_liquidations b ON b.trade_time >= u.m AND b.trade_time < u.m + interval '1 minute'
         GROUP BY 1, 2, 3, 4
    ), gone AS (
        DELETE FROM market_liquidations_1m r
         WHERE r.bucket = ANY (mins)
           AND NOT EXISTS (SELECT 1 FROM fresh f
                            WHERE f.bucket = r.bucket AND f.market = r.market
                              AND f.symbol = r.symbol AND f.liquidated_side = r.liquidated_side)
    )
    INSERT INTO market_liquidations_1m AS r
    SELECT bucket, market, symbol, liquidated_side, events, filled_qty, notional_usd,
           notional_unknown, max_notional_usd
      FROM fresh
    ON CONFLICT (bucket, market, symbol, liquidated_side) DO UPDATE SET
        events = EXCLUDED.events, filled_qty = EXCLUDED.filled_qty,
        notional_usd = EXCLUDED.notional_usd, notional_unknown = EXCLUDED.notional_unknown,
        max_notional_usd = EXCLUDED.max_notional_usd
    WHERE (r.events, r.filled_qty, r.notional_usd, r.notional_unknown, r.max_notional_usd)
          IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.filled_qty, EXCLUDED.notional_usd,
                            EXCLUDED.notional_unknown, EXCLUDED.max_notional_usd);

    WITH fresh AS (
        SELECT h.h AS bucket, r.market, r.symbol, r.liquidated_side,
               sum(r.events)::bigint AS events, sum(r.filled_qty) AS filled_qty,
               sum(r.notional_usd) AS notional_usd, sum(r.notional_unknown)::bigint AS notional_unknown,
               max(r.max_notional_usd) AS max_notional_usd
          FROM unnest(hours) AS h(h)
          JOIN market_liquidations_1m r ON r.bucket >= h.h AND r.bucket < h.h + interval '1 hour'
         GROUP BY 1, 2, 3, 4
    ), gone AS (
        DELETE FROM market_liquidations_1h r
         WHERE r.bucket = ANY (hours)
           AND NOT EXISTS (SELECT 1 FROM fresh f
                            WHERE f.bucket = r.bucket AND f.market = r.market
                              AND f.symbol = r.symbol AND f.liquidated_side = r.liquidated_side)
    )
    INSERT INTO market_liquidations_1h AS r
    SELECT bucket, market, symbol, liquidated_side, events, filled_qty, notional_usd,
           notional_unknown, max_notional_usd
      FROM fresh
    ON CONFLICT (bucket, market, symbol, liquidated_side) DO UPDATE SET
        events = EXCLUDED.events, filled_qty = EXCLUDED.filled_qty,
        notional_usd = EXCLUDED.notional_usd, notional_unknown = EXCLUDED.notional_unknown,
        max_notional_usd = EXCLUDED.max_notional_usd
    WHERE (r.events, r.filled_qty, r.notional_usd, r.notional_unknown, r.max_notional_usd)
          IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.filled_qty, EXCLUDED.notional_usd,
                            EXCLUDED.notional_unknown, EXCLUDED.max_notional_usd);

    WITH fresh AS (
        SELECT h.h AS bucket, r.market, r.symbol, r.liquidated_side,
               sum(r.events)::bigint AS events, sum(r.filled_qty) AS filled_qty,
               sum(r.notional_usd) AS notional_usd, sum(r.notional_unknown)::bigint AS notional_unknown,
               max(r.max_notional_usd) AS max_notional_usd
          FROM unnest(days) AS h(h)
          JOIN market_liquidations_1h r ON r.bucket >= h.h AND r.bucket < h.h + interval '1 day'
         GROUP BY 1, 2, 3, 4
    ), gone AS (
        DELETE FROM market_liquidations_1d r
         WHERE r.bucket = ANY (days)
           AND NOT EXISTS (SELECT 1 FROM fresh f
                            WHERE f.bucket = r.bucket AND f.market = r.market
                              AND f.symbol = r.symbol AND f.liquidated_side = r.liquidated_side)
    )
    INSERT INTO market_liquidations_1d AS r
    SELECT bucket, market, symbol, liquidated_side, events, filled_qty, notional_usd,
           notional_unknown, max_notional_usd
      FROM fresh
    ON CONFLICT (bucket, market, symbol, liquidated_side) DO UPDATE SET
        events = EXCLUDED.events, filled_qty = EXCLUDED.filled_qty,
        notional_usd = EXCLUDED.notional_usd, notional_unknown = EXCLUDED.notional_unknown,
        max_notional_usd = EXCLUDED.max_notional_usd
    WHERE (r.events, r.filled_qty, r.notional_usd, r.notional_unknown, r.max_notional_usd)
          IS DISTINCT FROM (EXCLUDED.events, EXCLUDED.filled_qty, EXCLUDED.notional_usd,
                            EXCLUDED.notional_unknown, EXCLUDED.max_notional_usd);
    RETURN cardinality(mins);
END $$;

-- Recomputes every minute in [from_at, to_at), one day per statement: a rebuild or a repair.
-- Example: SELECT refresh_market_rollup(now() - interval '7 days', now());
CREATE FUNCTION refresh_market_rollup(from_at timestamptz, to_at timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    lo    timestamptz := date_bin('1 minute', from_at, '2000-01-01 00:00:00+00');
    hi    timestamptz;
    total integer := 0;
BEGIN
    WHILE lo < to_at LOOP
        hi := least(lo + interval '1 day', to_at);
        total := total + refresh_market_rollup_minutes(
            ARRAY(SELECT generate_series(lo, hi - interval '1 microsecond', interval '1 minute')));
        lo := lo + interval '1 day';
    END LOOP;
    RETURN total;
END $$;

-- One pass of the rollup task: recompute up to `max_minutes` marked minutes (oldest first), then
-- delete the marks it read, and only those: a mark committed after they were read belongs to
-- rows this pass may not have seen, so it stays for the next one. Returns the number of minutes
-- recomputed, or NULL when another session is running a pass right now.
CREATE FUNCTION refresh_market_rollup_dirty(max_minutes integer DEFAULT 10000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    mins timestamptz[];
    ids  bigint[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(x'636f6c72'::integer) THEN  -- "colr"
        RETURN NULL;
    END IF;
    -- One statement, one snapshot: the marks read and the minutes to refresh agree.
    SELECT array_agg(d.id), array_agg(DISTINCT d.bucket)
      INTO ids, mins
      FROM market_rollup_dirty d
     WHERE d.bucket IN (SELECT DISTINCT x.bucket FROM market_rollup_dirty x
                         ORDER BY x.bucket LIMIT max_minutes);
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    -- A later statement, a later snapshot: every row behind the marks read is visible.
    PERFORM refresh_market_rollup_minutes(mins);
    DELETE FROM market_rollup_dirty d WHERE d.id = ANY (ids);
    RETURN cardinality(mins);
END $$;

-- Which rollup serves buckets of width `step`: the coarsest whose bucket divides it.
CREATE FUNCTION rollup_source(step interval) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN extract(epoch FROM step)::numeric % 86400 = 0 AND step >= interval '1 day' THEN 'day'
        WHEN extract(epoch FROM step)::numeric % 3600 = 0 AND step >= interval '1 hour' THEN 'hour'
        ELSE 'minute'
    END
$$;

-- Per-minute totals in [minute of from_at, to_at): refreshed minutes from the rollup, marked
-- minutes recomputed from the base table. NULL `markets`/`symbols` mean all.
CREATE FUNCTION liquidation_minutes(from_at timestamptz, to_at timestamptz,
                                    markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, market text, symbol text, liquidated_side text, events bigint,
               filled_qty numeric, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT r.bucket, r.market, r.symbol, r.liquidated_side, r.events, r.filled_qty,
           r.notional_usd, r.notional_unknown, r.max_notional_usd
      FROM market_liquidations_1m r
     WHERE r.bucket >= date_bin('1 minute', from_at, '2000-01-01 00:00:00+00') AND r.bucket < to_at
       AND (markets IS NULL OR r.market = ANY (markets))
       AND (symbols IS NULL OR r.symbol = ANY (symbols))
       AND NOT EXISTS (SELECT 1 FROM market_rollup_dirty d WHERE d.bucket = r.bucket)
    UNION ALL
    SELECT d.bucket, b.market, b.symbol, b.liquidated_side, count(*), sum(b.filled_qty),
           coalesce(sum(b.notional_usd), 0), count(*) - count(b.notional_usd), max(b.notional_usd)
      FROM (SELECT DISTINCT x.bucket FROM market_rollup_dirty x
             WHERE x.bucket >= date_bin('1 minute', from_at, '2000-01-01 00:00:00+00')
               AND x.bucket < to_at) d
      JOIN market_liquidations b
        ON b.trade_time >= d.bucket AND b.trade_time < d.bucket + interval '1 minute'
     WHERE (markets IS NULL OR b.market = ANY (markets))
       AND (symbols IS NULL OR b.symbol = ANY (symbols))
     GROUP BY d.bucket, b.market, b.symbol, b.liquidated_side
$$;

-- Per-hour totals in [hour of from_at, to_at): clean hours from the hourly rollup; hours holding a
-- marked minute are summed from liquidation_minutes().
CREATE FUNCTION liquidation_hours(from_at timestamptz, to_at timestamptz,
                                  markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, market text, symbol text, liquidated_side text, events bigint,
               filled_qty numeric, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT h.bucket, h.market, h.symbol, h.liquidated_side, h.events, h.filled_qty,
           h.notional_usd, h.notional_unknown, h.max_notional_usd
      FROM market_liquidations_1h h
     WHERE h.bucket >= date_bin('1 hour', from_at, '2000-01-01 00:00:00+00') AND h.bucket < to_at
       AND (markets IS NULL OR h.market = ANY (markets))
       AND (symbols IS NULL OR h.symbol = ANY (symbols))
       AND NOT EXISTS (SELECT 1 FROM market_rollup_dirty d
                        WHERE d.bucket >= h.bucket AND d.bucket < h.bucket + interval '1 hour')
    UNION ALL
    SELECT dh.hour, m.market, m.symbol, m.liquidated_side, sum(m.events)::bigint, sum(m.filled_qty),
           sum(m.notional_usd), sum(m.notional_unknown)::bigint, max(m.max_notional_usd)
      FROM (SELECT DISTINCT date_bin('1 hour', d.bucket, '2000-01-01 00:00:00+00') AS hour
              FROM market_rollup_dirty d
             WHERE d.bucket >= date_bin('1 hour', from_at, '2000-01-01 00:00:00+00')
               AND d.bucket < to_at) dh
     CROSS JOIN LATERAL liquidation_minutes(dh.hour, dh.hour + interval '1 hour', markets, symbols) m
     GROUP BY dh.hour, m.market, m.symbol, m.liquidated_side
$$;

-- Per-day (UTC) totals in [day of from_at, to_at): clean days from the daily rollup; days holding
-- a marked minute are summed from liquidation_hours().
CREATE FUNCTION liquidation_days(from_at timestamptz, to_at timestamptz,
                                 markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, market text, symbol text, liquidated_side text, events bigint,
               filled_qty numeric, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT x.bucket, x.market, x.symbol, x.liquidated_side, x.events, x.filled_qty,
           x.notional_usd, x.notional_unknown, x.max_notional_usd
      FROM market_liquidations_1d x
     WHERE x.bucket >= date_bin('1 day', from_at, '2000-01-01 00:00:00+00') AND x.bucket < to_at
       AND (markets IS NULL OR x.market = ANY (markets))
       AND (symbols IS NULL OR x.symbol = ANY (symbols))
       AND NOT EXISTS (SELECT 1 FROM market_rollup_dirty d
                        WHERE d.bucket >= x.bucket AND d.bucket < x.bucket + interval '1 day')
    UNION ALL
    SELECT dd.day, h.market, h.symbol, h.liquidated_side, sum(h.events)::bigint, sum(h.filled_qty),
           sum(h.notional_usd), sum(h.notional_unknown)::bigint, max(h.max_notional_usd)
      FROM (SELECT DISTINCT date_bin('1 day', d.bucket, '2000-01-01 00:00:00+00') AS day
              FROM market_rollup_dirty d
             WHERE d.bucket >= date_bin('1 day', from_at, '2000-01-01 00:00:00+00')
               AND d.bucket < to_at) dd
     CROSS JOIN LATERAL liquidation_hours(dd.day, dd.day + interval '1 day', markets, symbols) h
     GROUP BY dd.day, h.market, h.symbol, h.liquidated_side
$$;

-- Totals per `step` bucket, UTC-aligned. A step that is a whole number of days reads the daily
-- rollup, of hours the hourly one, anything else the minutes. The first bucket starts at or
-- before from_at, and the range's edges count in whole rollup buckets (days, hours, minutes).
-- Example: SELECT * FROM liquidation_totals(now() - interval '1 day', now(), '5 minutes', ARRAY['UM']);
CREATE FUNCTION liquidation_totals(from_at timestamptz, to_at timestamptz, step interval,
                                   markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, market text, symbol text, liquidated_side text, events bigint,
               filled_qty numeric, notional_usd numeric, notional_unknown bigint,
               max_notional_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT date_bin(step, s.bucket, '2000-01-01 00:00:00+00'), s.market, s.symbol, s.liquidated_side,
           sum(s.events)::bigint, sum(s.filled_qty), sum(s.notional_usd),
           sum(s.notional_unknown)::bigint, max(s.max_notional_usd)
      FROM (SELECT * FROM liquidation_days(from_at, to_at, markets, symbols)
             WHERE rollup_source(step) = 'day'
            UNION ALL
            SELECT * FROM liquidation_hours(from_at, to_at, markets, symbols)
             WHERE rollup_source(step) = 'hour'
            UNION ALL
            SELECT * FROM liquidation_minutes(from_at, to_at, markets, symbols)
             WHERE rollup_source(step) = 'minute') s
     GROUP BY 1, 2, 3, 4
$$;

-- The bucket width for a dashboard range: `choice` ('1m', '5m', '1h', '1d', ...) when it gives at
-- most 10,000 buckets, otherwise (and for 'auto') 1 minute up to 6 h, 5 minutes up to 2 days,
-- 1 hour up to 62 days, else 1 day.
CREATE FUNCTION rollup_step(from_at timestamptz, to_at timestamptz, choice text DEFAULT 'auto')
RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN coalesce(choice, '') NOT IN ('', 'auto')
             AND extract(epoch FROM to_at - from_at) <= 10000 * extract(epoch FROM choice::interval)
            THEN choice::interval
        WHEN to_at - from_at <= interval '6 hours' THEN interval '1 minute'
        WHEN to_at - from_at <= interval '2 days' THEN interval '5 minutes'
        WHEN to_at - from_at <= interval '62 days' THEN interval '1 hour'
        ELSE interval '1 day'
    END
$$;

-- Each `step` bucket of [from_at, to_at) with the seconds of it (within the range) that some
-- websocket session carrying one of `stream_names` covered. A bucket with covered_s = 0 is
-- *no data*: dashboards show NULL there, never 0.
CREATE FUNCTION coverage_buckets(stream_names text[], from_at timestamptz, to_at timestamptz,
                                 step interval)
RETURNS TABLE (bucket timestamptz, covered_s double precision, span_s double precision)
LANGUAGE sql STABLE AS $$
    WITH b AS (
        SELECT g AS bucket, greatest(g, from_at) AS lo, least(g + step, to_at) AS hi
          FROM generate_series(date_bin(step, from_at, '2000-01-01 00:00:00+00'), to_at, step) AS g
         WHERE g < to_at
    )
    SELECT b.bucket,
           -- (least/greatest skip NULLs, so a bucket without any interval must be filtered out)
           coalesce(sum(extract(epoch FROM least(c.covered_end, b.hi) - greatest(c.covered_start, b.lo)))
                        FILTER (WHERE c.covered_start IS NOT NULL), 0)::double precision,
           extract(epoch FROM b.hi - b.lo)::double precision
      FROM b
      LEFT JOIN coverage_intervals(stream_names, from_at, to_at) c
        ON c.covered_start < b.hi AND c.covered_end > b.lo
     GROUP BY b.bucket, b.lo, b.hi
     ORDER BY b.bucket
$$;

-- The `n` largest liquidations (by notional_usd) with trade_time in [from_at, to_at), found
-- through the hourly rollup's per-group maximum so a year-long range reads a few hours of rows:
-- the n whole clean hours with the largest single liquidation hold every top-n row, and the
-- partial hours at the edges and any hour with a marked minute are read from the base table.
-- Rows whose notional is unknown (COIN-M before its contract size is known) are not ranked.
CREATE FUNCTION largest_liquidations(from_at timestamptz, to_at timestamptz, n integer,
                                     markets text[] DEFAULT NULL, symbols text[] DEFAULT NULL)
RETURNS SETOF market_liquidations
LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT CASE WHEN date_bin('1 hour', from_at, '2000-01-01 00:00:00+00') < from_at
                    THEN date_bin('1 hour', from_at, '2000-01-01 00:00:00+00') + interval '1 hour'
                    ELSE from_at END AS inner_lo,
               date_bin('1 hour', to_at, '2000-01-01 00:00:00+00') AS inner_hi
    ), top_groups AS (
        SELECT h.bucket, h.market, h.symbol, h.liquidated_side
          FROM market_liquidations_1h h, bounds
         WHERE h.bucket >= bounds.inner_lo AND h.bucket < bounds.inner_hi
           AND h.max_notional_usd IS NOT NULL
           AND (markets IS NULL OR h.market = ANY (markets))
           AND (symbols IS NULL OR h.symbol = ANY (symbols))
         ORDER BY h.max_notional_usd DESC
         LIMIT n
    ), windows AS (
        SELECT from_at AS lo, least(bounds.inner_lo, to_at) AS hi FROM bounds
        UNION ALL
        SELECT greatest(bounds.inner_hi, bounds.inner_lo, from_at), to_at FROM bounds
        UNION ALL
        SELECT DISTINCT date_bin('1 hour', d.bucket, '2000-01-01 00:00:00+00'),
               date_bin('1 hour', d.bucket, '2000-01-01 00:00:00+00') + interval '1 hour'
          FROM market_rollup_dirty d, bounds
         WHERE d.bucket >= bounds.inner_lo AND d.bucket < bounds.inner_hi
    ), candidates AS (
        SELECT b.*
          FROM top_groups g
          JOIN market_liquidations b
            ON b.symbol = g.symbol AND b.trade_time >= g.bucket
           AND b.trade_time < g.bucket + interval '1 hour'
           AND b.market = g.market AND b.liquidated_side = g.liquidated_side
        UNION
        SELECT b.*
          FROM windows w
          JOIN market_liquidations b ON b.trade_time >= w.lo AND b.trade_time < w.hi
         WHERE w.lo < w.hi
           AND (markets IS NULL OR b.market = ANY (markets))
           AND (symbols IS NULL OR b.symbol = ANY (symbols))
    )
    SELECT * FROM candidates
     WHERE trade_time >= from_at AND trade_time < to_at AND notional_usd IS NOT NULL
     ORDER BY notional_usd DESC, trade_time DESC
     LIMIT n
$$;

-- Build the rollups for rows stored before this migration.
SELECT refresh_market_rollup(min(trade_time), max(trade_time) + interval '1 minute')
  FROM market_liquidations
HAVING count(*) > 0;
