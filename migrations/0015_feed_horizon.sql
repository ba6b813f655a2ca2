-- The feed's horizon without the cluster's other transactions (issue 11).
--
-- 0009 made the feed read only rows below its snapshot's xmin: every transaction below it has
-- ended, so that set of rows is final. But xmin is the whole cluster's: any writing transaction
-- on the server (another application's, a migration, CREATE INDEX, the collector's own rollup
-- refresh) held the live feed, the NATS publisher and alerts back until it ended, for seconds
-- or minutes, though it would never write a liquidation.
--
-- Now every transaction that writes liquidations holds a shared advisory lock (the feed lock)
-- from before its first write (so from before it has a transaction id) until it ends, and the
-- horizon is the oldest in-progress transaction id among the lock's holders, or, with none, the
-- snapshot's xmax. Why a row below the horizon is final: a writer holding the lock with an id
-- when the locks are read would lower the horizon below its id; one that took the lock later
-- gets its id after the snapshot was taken, so at or above xmax; one that ended before the
-- locks were read released the lock after its commit became visible, so the next statement
-- sees its rows.
--
-- The writer takes the lock first thing in each of its transactions (liquidation_feed_lock()),
-- and an INSERT into either table takes it too (a trigger), which covers one-statement writes.
-- A transaction that wrote something else (it has an id) before taking the lock breaks the
-- rule: the trigger takes the lock anyway and raises a WARNING naming the table.

CREATE FUNCTION liquidation_feed_lock() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('collector.feed_locked', true) IS DISTINCT FROM 'yes' THEN
        -- (classid, objid) = ('coll', 'feed'), objsubid 2 in pg_locks: the two-key form.
        PERFORM pg_advisory_xact_lock_shared(1668246636, 1717920100);
        PERFORM set_config('collector.feed_locked', 'yes', true);
    END IF;
END $$;

CREATE FUNCTION liquidation_feed_lock_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('collector.feed_locked', true) IS DISTINCT FROM 'yes' THEN
        IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
            RAISE WARNING 'collector: % written by a transaction that wrote before it took the feed lock; call liquidation_feed_lock() first, or the live feed may miss these rows', TG_TABLE_NAME;
        END IF;
        PERFORM liquidation_feed_lock();
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER market_liquidations_feed_lock BEFORE INSERT ON market_liquidations
    FOR EACH STATEMENT EXECUTE FUNCTION liquidation_feed_lock_trigger();
CREATE TRIGGER venue_liquidations_feed_lock BEFORE INSERT ON venue_liquidations
    FOR EACH STATEMENT EXECUTE FUNCTION liquidation_feed_lock_trigger();

-- Rows with committed_xid below this are final (see above). pg_locks is read once, after the
-- statement's snapshot was taken; a holder's own transaction id is its granted ExclusiveLock
-- on it (32 bits there, matched against the snapshot's in-progress 64-bit ids). PL/pgSQL, so
-- the query's plan is cached: as a SQL function it was planned at every call, 410 us of
-- backend CPU against 90-145 us (pg_snapshot_xmin alone: 60-110 us), and the feed calls it
-- once per committed batch.
CREATE FUNCTION liquidation_feed_horizon() RETURNS xid8
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        WITH locks AS MATERIALIZED (
            SELECT pid, locktype, database, classid, objid, objsubid, transactionid, mode, granted
              FROM pg_locks
        ), writers AS (
            SELECT own.transactionid::text::bigint AS xid32
              FROM locks feed JOIN locks own ON own.pid = feed.pid
             WHERE feed.locktype = 'advisory' AND feed.granted
               AND feed.classid = 1668246636 AND feed.objid = 1717920100 AND feed.objsubid = 2
               AND feed.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND own.locktype = 'transactionid' AND own.mode = 'ExclusiveLock' AND own.granted
        )
        SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot()))
          FROM pg_snapshot_xip(pg_current_snapshot()) AS x
         WHERE x::text::bigint % 4294967296 IN (SELECT xid32 FROM writers)
    );
END $$;

COMMENT ON FUNCTION liquidation_feed_horizon() IS
    'Rows of liquidation_feed with committed_xid below this are final: every transaction that writes liquidations holds the feed lock (liquidation_feed_lock()) from before its first write.';
