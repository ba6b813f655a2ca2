-- Market-wide liquidations from the forceOrder websocket streams, the dead-letter table and the
-- monthly partition helper. Every wire field is kept exactly (NUMERIC, text, timestamptz).

-- Creates (idempotently) monthly range partitions of `parent` on its timestamptz partition key for
-- the `months` months starting with the month of `start_at`. Rows that an earlier write put in the
-- parent's DEFAULT partition for such a month are moved into the new partition, so a late-created
-- month never fails and never loses rows.
CREATE FUNCTION collector_ensure_monthly_partitions(parent regclass, start_at timestamptz, months integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz;
    hi timestamptz;
    part text;
    parent_name text := (SELECT relname FROM pg_class WHERE oid = parent);
    key_col text;
    created integer := 0;
BEGIN
    SELECT a.attname INTO key_col
      FROM pg_partitioned_table p
      JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
     WHERE p.partrelid = parent;
    FOR i IN 0 .. months - 1 LOOP
        lo := date_trunc('month', start_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + make_interval(months => i);
        hi := lo + interval '1 month';
        part := format('%s_p%s', parent_name, to_char(lo AT TIME ZONE 'UTC', 'YYYYMM'));
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
        EXECUTE format(
            'WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved',
            parent_name || '_default', key_col, key_col, part) USING lo, hi;
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

CREATE TABLE market_liquidations (
    trade_time      timestamptz NOT NULL,           -- o.T
    content_key     bytea       NOT NULL,           -- deterministic 16-byte identity (the event has no id)
    event_time      timestamptz NOT NULL,           -- E
    symbol          text        NOT NULL,           -- o.s
    pair            text,                           -- ps (top level or o.ps)
    symbol_type     smallint,                       -- st: 1 UM, 2 CM (after the 2026 merge)
    market          text        NOT NULL CHECK (market IN ('UM', 'CM')),
    side            text        NOT NULL,           -- o.S, the force order's side
    liquidated_side text        NOT NULL CHECK (liquidated_side IN ('LONG', 'SHORT')),  -- SELL closes a LONG
    order_type      text,                           -- o.o
    time_in_force   text,                           -- o.f
    status          text        NOT NULL,           -- o.X
    orig_qty        numeric     NOT NULL,           -- o.q (UM: base asset; CM: contracts)
    price           numeric     NOT NULL,           -- o.p
    avg_price       numeric     NOT NULL,           -- o.ap
    last_filled_qty numeric,                        -- o.l
    filled_qty      numeric     NOT NULL,           -- o.z
    notional_usd    numeric,                        -- UM: z * ap; CM: z * contractSize (NULL until known)
    received_at     timestamptz NOT NULL,
    source_host     text        NOT NULL,           -- fstream | dstream
    source_route    text        NOT NULL,           -- market, or '' on hosts without routes
    source_stream   text        NOT NULL,           -- !forceOrder@arr, btcusdt@forceOrder, ...
    raw             jsonb       NOT NULL,           -- the frame as received (combined: with its stream envelope)
    PRIMARY KEY (trade_time, content_key)
) PARTITION BY RANGE (trade_time);

CREATE TABLE market_liquidations_default PARTITION OF market_liquidations DEFAULT;
CREATE INDEX market_liquidations_symbol_time ON market_liquidations (symbol, trade_time);

SELECT collector_ensure_monthly_partitions('market_liquidations', now() - interval '1 month', 4);

COMMENT ON TABLE market_liquidations IS
    'Liquidations from Binance forceOrder streams: a snapshot of at most one event per symbol per second, not every liquidation.';

-- Input that could not be used as-is, kept verbatim (bytea: a frame may hold any bytes).
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    received_at timestamptz NOT NULL,
    source      text        NOT NULL,
    reason      text        NOT NULL,
    detail      text        NOT NULL,
    raw         bytea       NOT NULL,
    kept        boolean     NOT NULL DEFAULT false   -- true: the data was stored too; this row flags an anomaly
);
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);

CREATE VIEW dead_letters_text AS
SELECT id, received_at, source, reason, detail, kept, convert_from(raw, 'UTF8') AS raw_text
  FROM dead_letters;
