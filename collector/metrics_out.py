"""The metrics of data out (issue 11): the committed-order feed, its streams and the webhook
alerts; a base of `collector.metrics.Metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class OutMetrics:
    """`collector_feed_*` and `collector_alert*`."""

    def _register_out_metrics(self, r: CollectorRegistry) -> None:
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
            "Alerts not delivered: rate_limited (the rule's min_interval_s) or queue_full.",
            ["rule", "reason"],
            registry=r,
        )
        self.alert_attempts_retried = Counter(
            "collector_alert_retries_total",
            "Webhook attempts that failed and were retried.",
            ["rule"],
            registry=r,
        )
