"""Every Prometheus metric the collector exports, on an injected registry.

Names follow prometheus.io conventions: `collector_` prefix, base units, `_total` on counters.
Label values come from small bounded sets (hosts, markets, endpoints, configured accounts).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from collector import __version__

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    """The collector's metrics; one instance per process (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Info("collector_build", "Collector version.", registry=r).info({"version": __version__})
        # Websocket market streams.
        self.events_received = Counter(
            "collector_events_received_total",
            "Liquidation events received from websocket streams.",
            ["host", "market", "stream_kind"],
            registry=r,
        )
        self.ws_connections = Gauge(
            "collector_ws_connections", "Open websocket connections.", ["host"], registry=r
        )
        self.ws_connects = Counter(
            "collector_ws_connects_total", "Websocket connections opened.", ["host"], registry=r
        )
        self.ws_reconnects = Counter(
            "collector_ws_reconnects_total",
            "Websocket connections lost and re-established, by the reason they were lost.",
            ["host", "reason"],
            registry=r,
        )
        self.ws_reader_failures = Counter(
            "collector_ws_reader_failures_total",
            "Websocket sessions ended by an unexpected error while reading (not the socket's):"
            " closed in the ledger at their last frame, then reconnected.",
            ["host"],
            registry=r,
        )
        self.ws_shard_connections_up = Gauge(
            "collector_ws_shard_connections_up",
            "Open connections holding a shard ([binance] redundancy replicas each carry all of"
            " its streams).",
            ["shard"],
            registry=r,
        )
        self.ws_shard_connections_wanted = Gauge(
            "collector_ws_shard_connections_wanted",
            "Connections a shard is meant to be held by ([binance] redundancy).",
            ["shard"],
            registry=r,
        )
        self.ws_shard_degraded = Gauge(
            "collector_ws_shard_degraded",
            "1 while a shard is held by fewer connections than [binance] redundancy (a drop of"
            " the rest would lose events), else 0.",
            ["shard"],
            registry=r,
        )
        self.ws_rotations = Counter(
            "collector_ws_rotations_total",
            "Make-before-break rotations ahead of Binance's 24 h cut.",
            ["host"],
            registry=r,
        )
        self.ws_control_replies = Counter(
            "collector_ws_control_replies_total",
            "Control replies (SUBSCRIBE, LIST_SUBSCRIPTIONS) by outcome: ok, error, late (a "
            "reply to a request no longer waited for) or unexpected (matching no request sent).",
            ["host", "outcome"],
            registry=r,
        )
        self.last_event_timestamp = Gauge(
            "collector_last_event_timestamp_seconds",
            "Unix time of the newest liquidation event received, by host.",
            ["host"],
            registry=r,
        )
        self.last_event_age = Gauge(
            "collector_last_event_age_seconds",
            "Seconds since the newest liquidation event was received (any host).",
            registry=r,
        )
        self._last_event_monotonic: float | None = None
        self._started_monotonic = time.monotonic()
        self.last_event_age.set_function(self.event_age_s)
        self.dead_letters = Counter(
            "collector_dead_letters_total",
            "Inputs stored in dead_letters instead of (or besides) their table, by reason.",
            ["reason"],
            registry=r,
        )
        self.payload_anomalies = Counter(
            "collector_payload_anomalies_total",
            "Rows kept despite an anomaly (unknown symbol, unknown field).",
            ["kind"],
            registry=r,
        )
        # Writer.
        self.queue_depth = Gauge(
            "collector_queue_depth", "Items waiting for the writer.", registry=r
        )
        self.queue_capacity = Gauge(
            "collector_queue_capacity", "Capacity of the writer queue.", registry=r
        )
        self.rows_inserted = Counter(
            "collector_rows_inserted_total", "Rows committed, by table.", ["table"], registry=r
        )
        self.duplicates = Counter(
            "collector_duplicates_total",
            "Duplicate events not inserted, by the layer that caught them.",
            ["layer"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "collector_batch_rows", "Items per writer batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.write_seconds = Histogram(
            "collector_write_seconds",
            "Time to write and commit one batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.socket_to_commit_seconds = Histogram(
            "collector_socket_to_commit_seconds",
            "From a frame read off the socket to its row committed.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_errors = Counter(
            "collector_write_errors_total",
            "Failed batch writes: transient (retried with the batch kept) or data (row isolated).",
            ["kind"],
            registry=r,
        )
        self.db_up = Gauge(
            "collector_database_up",
            "1 while the database answers pings and the writer is not failing to commit.",
            registry=r,
        )
        self.database_pings = Counter(
            "collector_database_pings_total",
            "Liveness pings (SELECT 1 through the pool) by outcome: ok or failed.",
            ["outcome"],
            registry=r,
        )
        self.component_restarts = Counter(
            "collector_component_restarts_total",
            "Components restarted by the supervisor after an unexpected failure.",
            ["component"],
            registry=r,
        )
        self.exchange_info_refreshes = Counter(
            "collector_exchange_info_refreshes_total",
            "exchangeInfo refreshes by market and outcome.",
            ["market", "outcome"],
            registry=r,
        )
        # Signed REST pollers (account force orders).
        self.rest_requests = Counter(
            "collector_rest_requests_total",
            "REST requests by endpoint path and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.rest_weight_used = Gauge(
            "collector_rest_weight_used",
            "Request weight Binance counts for this IP in the current minute (every process "
            "behind it), by limit pool.",
            ["pool"],
            registry=r,
        )
        self.rest_weight_limit = Gauge(
            "collector_rest_weight_limit",
            "Request weight this process may use per minute, by limit pool.",
            ["pool"],
            registry=r,
        )
        self.rest_rate_limited = Counter(
            "collector_rest_rate_limited_total",
            "HTTP 429 and 418 responses, by limit pool and status.",
            ["pool", "status"],
            registry=r,
        )
        self.rest_clock_offset = Gauge(
            "collector_rest_clock_offset_seconds",
            "Server time minus local time, by API family.",
            ["family"],
            registry=r,
        )
        self.account_rows = Counter(
            "collector_account_rows_total",
            "Account force-order rows by result (new, updated, unchanged, rejected by Postgres).",
            ["account", "endpoint", "result"],
            registry=r,
        )
        self.account_state = Gauge(
            "collector_account_state",
            "1 for the state an account endpoint is in, 0 for the others: ok (its last poll "
            "succeeded), failing (polls fail: 5xx, 404, timeouts, rejected parameters) or "
            "credentials_rejected (auth or permission error).",
            ["account", "endpoint", "state"],
            registry=r,
        )
        self.account_backfill_complete = Gauge(
            "collector_account_backfill_complete",
            "1 once the initial backfill of an account endpoint reached its horizon.",
            ["account", "endpoint"],
            registry=r,
        )
        self.account_backfill_horizon = Gauge(
            "collector_account_backfill_horizon_timestamp_seconds",
            "Oldest time the backfill of an account endpoint has covered.",
            ["account", "endpoint"],
            registry=r,
        )
        self.account_poll_lag = Gauge(
            "collector_account_poll_lag_seconds",
            "Seconds between now and the end of the last complete poll window.",
            ["account", "endpoint"],
            registry=r,
        )
        self.account_windows_truncated = Counter(
            "collector_account_windows_truncated_total",
            "Windows of one millisecond or two still holding a full page: the page was kept, the "
            "rest of its rows could not be read and the window was dead-lettered.",
            ["account", "endpoint"],
            registry=r,
        )
        self.account_windows_unavailable = Counter(
            "collector_account_windows_unavailable_total",
            "Windows Binance can only reject (older than it keeps, a span it never accepts), "
            "skipped and dead-lettered instead of retried.",
            ["account", "endpoint"],
            registry=r,
        )
        self.account_enrichment = Counter(
            "collector_account_enrichment_total",
            "Margin force orders enriched with the full order, by outcome.",
            ["account", "outcome"],
            registry=r,
        )

        # Venues other than Binance (Bybit, OKX): the same facts, labelled by venue.
        self.venue_events_received = Counter(
            "collector_venue_events_received_total",
            "Liquidations received from a venue's websocket stream, by venue and market.",
            ["venue", "market"],
            registry=r,
        )
        self.venue_last_event_timestamp = Gauge(
            "collector_venue_last_event_timestamp_seconds",
            "Unix time of the newest liquidation received from a venue's stream.",
            ["venue"],
            registry=r,
        )
        self.venue_ws_connections = Gauge(
            "collector_venue_ws_connections",
            "Open websocket sessions, by venue.",
            ["venue"],
            registry=r,
        )
        self.venue_ws_sessions = Counter(
            "collector_venue_ws_sessions_total",
            "Websocket sessions opened (each a row in the coverage ledger), by venue.",
            ["venue"],
            registry=r,
        )
        self.venue_ws_reconnects = Counter(
            "collector_venue_ws_reconnects_total",
            "Websocket sessions lost or refused and tried again, by venue and reason.",
            ["venue", "reason"],
            registry=r,
        )
        self.venue_subscribe_replies = Counter(
            "collector_venue_subscribe_replies_total",
            "Replies to subscribe/unsubscribe requests, by venue and outcome (ok, error, "
            "unexpected).",
            ["venue", "outcome"],
            registry=r,
        )
        self.venue_subscribed_topics = Gauge(
            "collector_venue_subscribed_topics",
            "Topics or channels confirmed subscribed on open sessions, by venue and stream host "
            "(Bybit: linear, inverse; OKX: public).",
            ["venue", "host"],
            registry=r,
        )
        self.venue_heartbeats = Counter(
            "collector_venue_heartbeats_total",
            "Application pings sent, by venue and outcome (pong, timeout).",
            ["venue", "outcome"],
            registry=r,
        )
        self.venue_instrument_refreshes = Counter(
            "collector_venue_instrument_refreshes_total",
            "Instrument list refreshes, by venue, market and outcome (ok, error).",
            ["venue", "market", "outcome"],
            registry=r,
        )
        self.venue_repair_state = Gauge(
            "collector_venue_repair_state",
            "1 for the state a venue's gap repair is in, 0 for the others: on, off (switched "
            "off: the history endpoint answered 404 or an error code) or disabled (by config).",
            ["venue", "state"],
            registry=r,
        )
        self.venue_repairs = Counter(
            "collector_venue_repairs_total",
            "Coverage gaps read back, by venue and outcome (repaired, partial, failed, skipped).",
            ["venue", "outcome"],
            registry=r,
        )
        self.venue_repair_rows = Counter(
            "collector_venue_repair_rows_total",
            "Liquidations read back for gaps (before deduplication against the stream), by venue.",
            ["venue"],
            registry=r,
        )
        self.venue_repair_requests = Counter(
            "collector_venue_repair_requests_total",
            "History requests made by gap repair, by venue and outcome.",
            ["venue", "outcome"],
            registry=r,
        )

        # Data out (issue 11): the feed, its streams and the alerts.
        self.feed_rows = Counter(
            "collector_feed_rows_total",
            "Committed liquidations the feed read, in cursor order.",
            registry=r,
        )
        self.feed_subscribers = Gauge(
            "collector_feed_subscribers", "Open /v1/liquidations/stream streams.", registry=r
        )
        self.feed_events_sent = Counter(
            "collector_feed_events_sent_total",
            "Liquidation events written to /v1/liquidations/stream streams.",
            registry=r,
        )
        self.feed_disconnects = Counter(
            "collector_feed_disconnects_total",
            "Streams ended, by reason (client, slow_consumer, cursor_too_old, cursor_unknown,"
            " shutdown).",
            ["reason"],
            registry=r,
        )
        self.feed_rejected = Counter(
            "collector_feed_rejected_total",
            "Streams refused: too_many_subscribers, unauthorized.",
            ["reason"],
            registry=r,
        )
        self.alerts_sent = Counter(
            "collector_alerts_sent_total", "Alerts delivered by webhook.", ["rule"], registry=r
        )
        self.alerts_failed = Counter(
            "collector_alerts_failed_total",
            "Alerts given up on after their last webhook attempt.",
            ["rule"],
            registry=r,
        )
        self.alerts_dropped = Counter(
            "collector_alerts_dropped_total",
            "Alerts not delivered: rate_limited (the rule's min_interval_s), queue_full, or"
            " claimed (another replica claimed it first and sends it).",
            ["rule", "reason"],
            registry=r,
        )
        self.alert_attempts_retried = Counter(
            "collector_alert_retries_total",
            "Webhook attempts that failed and were retried.",
            ["rule"],
            registry=r,
        )
        self.alerts_rows_skipped = Counter(
            "collector_alerts_rows_skipped_total",
            "Rows the alerts read but did not judge: too_old (older than [feed] alerts_max_age_s,"
            " a backlog after a restart).",
            ["reason"],
            registry=r,
        )
        # Durable consumers of the committed rows (collector.out.cursor): NATS, alerts.
        self.consumer_rows = Counter(
            "collector_consumer_rows_total",
            "Rows a durable consumer acknowledged (its stored cursor moved past them).",
            ["consumer"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "collector_consumer_lag_rows",
            "Final rows after a durable consumer's position, up to the feed's head (capped).",
            ["consumer"],
            registry=r,
        )
        self.consumer_retries = Counter(
            "collector_consumer_retries_total",
            "Batches a durable consumer failed to hand on and will retry after a backoff.",
            ["consumer"],
            registry=r,
        )
        self.nats_published = Counter(
            "collector_nats_published_total",
            "Rows JetStream acknowledged, by result: stored, or duplicate (a copy another"
            " replica or an earlier attempt already stored).",
            ["stream", "result"],
            registry=r,
        )
        self.nats_publish_failures = Counter(
            "collector_nats_publish_failures_total",
            "Publishes to JetStream that failed (each is retried from the database), by reason.",
            ["stream", "reason"],
            registry=r,
        )
        self.nats_connected = Gauge(
            "collector_nats_connected",
            "1 while the publisher has a connection to a NATS server.",
            ["stream"],
            registry=r,
        )

    def set_repair_state(self, venue: str, state: str) -> None:
        """Mark `venue`'s repair as `state` (on, off, disabled), the other states 0."""
        for each in ("on", "off", "disabled"):
            self.venue_repair_state.labels(venue, each).set(1.0 if each == state else 0.0)

    def watch_shard(self, shard: str, up: Callable[[], int], wanted: int) -> None:
        """Export `shard`'s open connections (read from `up` at scrape time) and whether it is
        degraded (fewer than `wanted`)."""
        self.ws_shard_connections_up.labels(shard).set_function(up)
        self.ws_shard_connections_wanted.labels(shard).set(wanted)
        self.ws_shard_degraded.labels(shard).set_function(lambda: float(up() < wanted))

    def event_age_s(self) -> float:
        """Seconds since the newest event (or since start, before the first)."""
        since = self._last_event_monotonic or self._started_monotonic
        return time.monotonic() - since

    def mark_event(self) -> None:
        """Move the any-host last-event clock (`collector_last_event_age_seconds`)."""
        self._last_event_monotonic = time.monotonic()
