"""The metrics of data out (issue 11): the committed-order feed, its streams and the webhook
alerts; a base of `collector.metrics.Metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class OutMetrics:
    """`collector_feed_*` and `collector_alert*`."""

    def _register_out_metrics(self, r: CollectorRegistry) -> None:
        self.feed_rows = Counter(
            "collector_feed_rows_total",
            "Committed liquidations the feed read for its streams, in cursor order (none while no"
            " stream is open).",
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
