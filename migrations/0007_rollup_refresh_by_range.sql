-- refresh_market_rollup_minutes() reads each run of consecutive minutes as one range of the base
-- table, so a rebuild costs the rows it reads, not minutes x rows.
--
-- Before: the minutes were joined to market_liquidations on
-- `trade_time >= m AND trade_time < m + 1 minute` from `unnest(mins)`, which the planner
-- estimates at 10 rows whatever the array holds. It then preferred a nested loop that
-- materialises every partition of the base table and tests every row against every minute:
-- one day of a rebuild (1,440 minutes) over 2,000 rows compared 2.88 M pairs (449 ms), a year
-- over 2,000 rows took 123 s, over 1.05 M rows more than 13 minutes; and each pass of the rollup
-- task read the whole base table, however few minutes were marked. The hour and day levels had
-- the same shape over the minute and hour rollups.
--
-- Now: sorted minutes (hours, days) are collapsed into runs [lo, hi) of consecutive buckets, and
-- each run is aggregated in a LATERAL subquery with its own GROUP BY, which the planner cannot
-- flatten back into that join: one index (or partition) range scan per run. A day of a rebuild
-- is one run; a pass of the rollup task reads the marked minutes' rows only. Same results, same
-- signature, same callers (refresh_market_rollup, refresh_market_rollup_dirty).
--
-- Stale buckets are found with `bucket IN (SELECT unnest(mins))`, whose size the planner sees,
-- rather than `bucket = ANY (mins)`, which it estimates element by element (about 85 ms for a
-- day's 1,440 minutes, on every call) or a range join on the runs (which it cannot see, and
-- answered by scanning the whole minute rollup).
--
-- Its statements run with JIT off and a fresh plan on every call. The planner still cannot see
-- how many runs an array holds: it overestimates them (990,200 rows for one day's 2,400 over
-- 1 M rows), above jit_above_cost, and compiling took 1.23 s of a 1.33 s statement, every day
-- of a rebuild. And a rebuild grows the rollup tables within its one transaction, where no
-- ANALYZE runs: a cached generic plan, made while they were empty, scans them whole for every
-- day (a quarter of 1 M rows: more than 90 s, against 12 s replanning each call), whereas a
-- fresh plan sees their current size. Planning a call costs about 2 ms.

CREATE OR REPLACE FUNCTION refresh_market_rollup_minutes(minutes timestamptz[]) RETURNS integer
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
                   b.market, b.symbol, b.liquidated_side,
                   count(*) AS events, sum(b.filled_qty) AS filled_qty,
                   coalesce(sum(b.notional_usd), 0) AS notional_usd,
                   count(*) - count(b.notional_usd) AS notional_unknown,
                   max(b.notional_usd) AS max_notional_usd
              FROM market_liquidations b
             WHERE b.trade_time >= runs.lo AND b.trade_time < runs.hi
             GROUP BY 1, 2, 3, 4) f
    ), gone AS (
        DELETE FROM market_liquidations_1m r
         WHERE r.bucket IN (SELECT u.b FROM unnest(mins) AS u(b))
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
                   r.market, r.symbol, r.liquidated_side,
                   sum(r.events)::bigint AS events, sum(r.filled_qty) AS filled_qty,
                   sum(r.notional_usd) AS notional_usd,
                   sum(r.notional_unknown)::bigint AS notional_unknown,
                   max(r.max_notional_usd) AS max_notional_usd
              FROM market_liquidations_1m r
             WHERE r.bucket >= runs.lo AND r.bucket < runs.hi
             GROUP BY 1, 2, 3, 4) f
    ), gone AS (
        DELETE FROM market_liquidations_1h r
         WHERE r.bucket IN (SELECT u.b FROM unnest(hours) AS u(b))
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
                   r.market, r.symbol, r.liquidated_side,
                   sum(r.events)::bigint AS events, sum(r.filled_qty) AS filled_qty,
                   sum(r.notional_usd) AS notional_usd,
                   sum(r.notional_unknown)::bigint AS notional_unknown,
                   max(r.max_notional_usd) AS max_notional_usd
              FROM market_liquidations_1h r
             WHERE r.bucket >= runs.lo AND r.bucket < runs.hi
             GROUP BY 1, 2, 3, 4) f
    ), gone AS (
        DELETE FROM market_liquidations_1d r
         WHERE r.bucket IN (SELECT u.b FROM unnest(days) AS u(b))
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
