-- Durable consumers of the committed rows (issue 11: the NATS JetStream publisher, alerts).
--
-- consumer_cursors: one named position in the feed's committed order (0009: committed_xid, seq)
-- per consumer. A consumer reads the final rows after its position, hands them on (publishes
-- them, judges them), and only then moves the position forward, never back (GREATEST), so a
-- restart resumes where the last acknowledged batch ended. Replicas that share a name share the
-- position: whichever is ahead moves it, and a restarted one resumes there.
CREATE TABLE consumer_cursors (
    name          text        PRIMARY KEY,
    committed_xid xid8        NOT NULL,
    seq           bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE consumer_cursors IS
    'Durable consumers of liquidation_feed: the cursor (committed_xid, seq) of the last row each named consumer acknowledged.';

-- alert_claims: an alert is sent by the replica whose INSERT ... ON CONFLICT DO NOTHING claimed
-- it; the other replica, judging the same row, finds the claim and sends nothing. The key is
-- the row's key (venue and content key) for one-row rules, the side and the window for cascades.
-- sent_at stays NULL while the webhook has not accepted it (or never did).
CREATE TABLE alert_claims (
    rule       text        NOT NULL,
    key        text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    PRIMARY KEY (rule, key)
);

CREATE INDEX alert_claims_claimed_at ON alert_claims (claimed_at);

COMMENT ON TABLE alert_claims IS
    'One row per alert a replica claimed before sending it; a second replica''s claim of the same (rule, key) inserts nothing and sends nothing.';
