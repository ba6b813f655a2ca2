-- An open session of a live process covers up to now, not only up to its last liveness mark:
-- the mark is refreshed every few seconds (heartbeat_s), so coverage_gaps() used to show a
-- 0-5 s gap ending at now() for every healthy stream. `last_alive_at` still bounds a session
-- whose mark is older than ws_liveness_grace(): its process died (or its reader stopped
-- reading), and nothing after the mark is known to have been received.

-- How long after its last liveness mark an open session still counts as live: several
-- heartbeats (the collector refuses heartbeat_s above 10 s), plus the writer's latency.
CREATE FUNCTION ws_liveness_grace() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT interval '30 seconds' $$;

-- (coverage_gaps, coverage_intervals and coverage_buckets read this view at call time.)
CREATE OR REPLACE VIEW ws_session_coverage AS
SELECT session_id, connection, host, streams,
       tstzrange(opened_at,
                 greatest(opened_at,
                          CASE WHEN closed_at IS NOT NULL THEN closed_at
                               WHEN last_alive_at >= now() - ws_liveness_grace()
                                   THEN greatest(now(), last_alive_at)
                               ELSE last_alive_at
                          END),
                 '[]') AS covered
  FROM ws_sessions;
