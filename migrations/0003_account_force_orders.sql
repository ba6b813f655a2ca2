-- Each configured account's own force orders (liquidations and ADL) from the signed REST
-- endpoints, and the per (account, endpoint, scope) checkpoints that let a restart resume.

CREATE TABLE account_force_orders (
    account          text        NOT NULL,           -- [[accounts]] name
    product          text        NOT NULL CHECK (product IN ('um', 'cm', 'margin')),
    symbol           text        NOT NULL,
    order_id         bigint      NOT NULL,           -- unique per symbol only, hence the key
    endpoint         text        NOT NULL,           -- e.g. /papi/v1/um/forceOrders
    auto_close_type  text        NOT NULL CHECK (auto_close_type IN ('LIQUIDATION', 'ADL')),
    side             text,
    position_side    text,
    status           text,
    order_type       text,                           -- type (margin: from the order lookup)
    orig_type        text,
    time_in_force    text,
    client_order_id  text,                           -- margin: from the order lookup
    price            numeric,
    avg_price        numeric,
    orig_qty         numeric,                        -- origQty (margin: qty)
    executed_qty     numeric,                        -- UM: base asset; CM: contracts
    cum_quote        numeric,
    cum_base         numeric,
    pair             text,
    is_isolated      boolean,                        -- classic margin only
    order_time       timestamptz,                    -- time; margin: updatedTime until enriched
    update_time      timestamptz,                    -- updateTime; margin: updatedTime
    notional         numeric,                        -- UM: cumQuote or executed*avg; CM: executed*contractSize; margin: executed*avg
    notional_asset   text,                           -- the asset `notional` is in (NULL if unknown)
    enrichment       jsonb,                          -- margin: the margin order lookup, NULL until done
    enrichment_error text,                           -- margin: why the lookup failed, if it did
    first_seen_at    timestamptz NOT NULL,           -- when the collector first stored the row
    last_seen_at     timestamptz NOT NULL,           -- when the row last changed (a repeat changes nothing)
    raw              jsonb       NOT NULL,           -- the row as Binance sent it (latest version)
    PRIMARY KEY (account, product, symbol, order_id)
);
CREATE INDEX account_force_orders_order_time ON account_force_orders (order_time);
CREATE INDEX account_force_orders_account_time ON account_force_orders (account, order_time);
CREATE INDEX account_force_orders_unenriched ON account_force_orders (account, endpoint)
    WHERE product = 'margin' AND enrichment IS NULL AND enrichment_error IS NULL;

COMMENT ON TABLE account_force_orders IS
    'Force orders (LIQUIDATION and ADL) of the configured Binance accounts, from signed REST; one row per (account, product, symbol, order id).';

-- How far each (account, endpoint, scope) has been read. scope: the autoCloseType for the
-- futures endpoints, cross / isolated:<SYMBOL> for classic margin, all for PM margin.
CREATE TABLE account_poll_checkpoints (
    account            text        NOT NULL,
    endpoint           text        NOT NULL,
    scope              text        NOT NULL,
    horizon_at         timestamptz NOT NULL,         -- oldest time the backfill started from
    covered_until      timestamptz NOT NULL,         -- everything before this has been read
    backfill_complete  boolean     NOT NULL DEFAULT false,
    last_poll_at       timestamptz,                  -- last time a window was committed
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (account, endpoint, scope)
);
