-- A window Binance can only reject (older than it keeps, a span it never accepts) is skipped
-- instead of being retried on every poll: each one is dead-lettered (reason
-- window_unavailable, raw: the window as JSON) and the checkpoint says why the last one was.

ALTER TABLE account_poll_checkpoints ADD COLUMN unavailable_reason text;

COMMENT ON COLUMN account_poll_checkpoints.unavailable_reason IS
    'Why the last window skipped as unavailable was (its range in ms and Binance''s error); NULL if none was.';

-- The account pollers write each such dead letter once (a later poll re-reading the window
-- finds it); this keeps that lookup off a sequential scan of the market's dead letters.
CREATE INDEX dead_letters_account ON dead_letters (source, reason) WHERE source LIKE 'account:%';
