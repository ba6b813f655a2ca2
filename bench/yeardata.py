"""A synthetic year of market liquidations, generated inside PostgreSQL (no client round trip per
row), for the dashboard and rollup benchmarks (bench/year.py) and the rollup tests.

The mix imitates Binance's: about 90 % USDⓈ-M, a few symbols taking most events (BTC, ETH, then
a long tail: the symbol index is drawn as n·u³), days of very different volume (log-normal, so
a crash day holds ten quiet days' events), 40 % of each day's events in cascades (up to six
bursts a day of up to two hours, most of their events in the first minutes), notionals from
100 USD to 100,000 USD skewed to the small end. Rows are written day by day in time order, as
the collector writes them, so the table's physical order is the real one. Every row is a
function of its number and `seed`: a dataset is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from collector.emulator.events import DEFAULT_CM_SYMBOLS, DEFAULT_UM_SYMBOLS, synthetic_symbols

UM_SYMBOLS = (*DEFAULT_UM_SYMBOLS, *synthetic_symbols(300, start=1000))
CM_SYMBOLS = DEFAULT_CM_SYMBOLS

# u(i, salt): a uniform number in [0, 1) from the row number (a hash, so chunks need no state).
_UNIFORM = """
CREATE OR REPLACE FUNCTION pg_temp.u(i bigint, salt integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashint8extended(i, salt) & 4503599627370495)::double precision / 4503599627370496.0
$$
"""

# $1..$2: row numbers; $3: the day's start; $4: its length; $5, $6: the symbol lists; $7: seed.
_GENERATE = """
INSERT INTO market_liquidations (trade_time, content_key, event_time, symbol, pair, symbol_type,
    market, side, liquidated_side, order_type, time_in_force, status, orig_qty, price, avg_price,
    last_filled_qty, filled_qty, notional_usd, received_at, source_host, source_route,
    source_stream, raw)
SELECT t, key, t + interval '3 ms', sym, pair, st, mkt, side,
       CASE side WHEN 'SELL' THEN 'LONG' ELSE 'SHORT' END, 'LIMIT', 'IOC', 'FILLED',
       qty, px, px, qty, qty, CASE mkt WHEN 'UM' THEN qty * px ELSE qty * csize END,
       t + interval '40 ms', 'fstream', 'market', '!forceOrder@arr',
       jsonb_build_object('stream', '!forceOrder@arr', 'data', jsonb_build_object(
           'e', 'forceOrder', 'E', (extract(epoch FROM t) * 1000)::bigint + 3, 'st', st,
           'o', jsonb_build_object('s', sym, 'ps', pair, 'S', side, 'o', 'LIMIT', 'f', 'IOC',
                                   'q', qty::text, 'p', px::text, 'ap', px::text, 'X', 'FILLED',
                                   'l', qty::text, 'z', qty::text,
                                   'T', (extract(epoch FROM t) * 1000)::bigint)))
  FROM (
    SELECT i, decode(md5($7::integer::text || ':' || i::text), 'hex') AS key,
           date_trunc('milliseconds',
               CASE WHEN pg_temp.u(i, 0) < 0.6
                    THEN $3::timestamptz + $4::interval * pg_temp.u(i, 1)
                    ELSE least($3::timestamptz + $4::interval * pg_temp.u(
                                       $1::bigint * 8 + floor(pg_temp.u(i, 2) * 6)::bigint, -1)
                               + interval '2 hours' * power(pg_temp.u(i, 3), 4),
                               $3::timestamptz + $4::interval - interval '1 ms')
               END) AS t,
           CASE WHEN pg_temp.u(i, 4) < 0.1 THEN 'CM' ELSE 'UM' END AS mkt,
           floor(power(pg_temp.u(i, 5), 3) * 1000000)::integer AS draw,
           CASE WHEN pg_temp.u(i, 6) < 0.5 THEN 'SELL' ELSE 'BUY' END AS side,
           pg_temp.u(i, 7) AS size, pg_temp.u(i, 8) AS wiggle
      FROM generate_series($1::bigint, $2::bigint) AS i
    OFFSET 0  -- a fence: evaluate each draw once, not once per reference
  ) r
  CROSS JOIN LATERAL (
    SELECT CASE r.mkt WHEN 'UM' THEN $5::text[] ELSE $6::text[] END AS syms
  ) l
  CROSS JOIN LATERAL (
    SELECT l.syms[1 + k.k] AS sym, k.k
      FROM (SELECT (r.draw::bigint * cardinality(l.syms) / 1000000)::integer AS k) k
    OFFSET 0
  ) s
  CROSS JOIN LATERAL (
    SELECT CASE r.mkt WHEN 'UM' THEN 1 ELSE 2 END AS st,
           CASE r.mkt WHEN 'CM' THEN split_part(s.sym, '_', 1) ELSE s.sym END AS pair,
           CASE WHEN s.k = 0 THEN 100 ELSE 10 END AS csize,
           round((CASE s.k WHEN 0 THEN 60000 WHEN 1 THEN 3000
                  ELSE power(10, 3 - (s.k % 6)) END * (0.9 + 0.2 * r.wiggle))::numeric, 4) AS px
    OFFSET 0
  ) p
  CROSS JOIN LATERAL (
    SELECT CASE r.mkt
             WHEN 'UM' THEN greatest(round((10 ^ (2 + 3 * r.size ^ 2) / p.px)::numeric, 3), 0.001)
             ELSE greatest(round((10 ^ (2 + 3 * r.size ^ 2) / p.csize)::numeric), 1)
           END AS qty
  ) q
 ORDER BY t  -- index and heap pages filled in order, not at random
ON CONFLICT DO NOTHING
"""


def rows_per_day(rows: int, days: int, seed: int) -> list[int]:
    """How many of `rows` fall on each of `days` days: log-normal day weights, summing exactly."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0.0, 0.8) for _ in range(days)]
    total = sum(weights)
    counts = [int(rows * w / total) for w in weights]
    for d in range(rows - sum(counts)):
        counts[d % days] += 1
    return counts


async def generate(
    conn: asyncpg.Connection,
    rows: int,
    start: datetime,
    end: datetime,
    *,
    seed: int = 1,
    with_triggers: bool = False,
    on_day: Callable[[int], None] | None = None,
) -> None:
    """Insert the `rows` rows of dataset `seed` over [start, end), one statement per day.

    With `with_triggers=False` (a bulk load, as a restore would do it) the rollup triggers do
    not fire (session_replication_role = replica, which needs a superuser): the rollups are then
    empty for these rows until `refresh_market_rollup()` rebuilds them. Monthly partitions for
    the whole range are created first, as the collector's writer would have. `on_day` is called
    with the number of rows written so far after each day.
    """
    months = (end.year - start.year) * 12 + end.month - start.month + 1
    await conn.execute(
        "SELECT collector_ensure_monthly_partitions('market_liquidations', $1, $2)", start, months
    )
    await conn.execute(_UNIFORM)
    await conn.execute("SET jit = off")  # this session's: compiling costs more than it saves here
    if not with_triggers:
        await conn.execute("SET session_replication_role = replica")
    days = math.ceil((end - start) / timedelta(days=1))
    try:
        first = 1
        for day, count in enumerate(rows_per_day(rows, days, seed)):
            lo = start + timedelta(days=day)
            span = min(end, lo + timedelta(days=1)) - lo
            if count:
                await conn.execute(
                    _GENERATE, first, first + count - 1, lo, span, list(UM_SYMBOLS),
                    list(CM_SYMBOLS), seed,
                )  # fmt: skip
            first += count
            if on_day is not None:
                on_day(first - 1)
    finally:
        if not with_triggers:
            await conn.execute("RESET session_replication_role")
