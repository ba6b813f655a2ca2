"""The metrics of the venues beside Binance (Bybit, OKX): the same facts as Binance's, labelled
by venue; a base of `collector.metrics.Metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class VenueMetrics:
    """`collector_venue_*`: events, connections, subscriptions, heartbeats, instruments and
    the gap repair of each venue."""

    def _register_venue_metrics(self, r: CollectorRegistry) -> None:
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

    def set_repair_state(self, venue: str, state: str) -> None:
        """Mark `venue`'s repair as `state` (on, off, disabled), the other states 0."""
        for each in ("on", "off", "disabled"):
            self.venue_repair_state.labels(venue, each).set(1.0 if each == state else 0.0)
