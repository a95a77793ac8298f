"""Prometheus metrics. One `Metrics` object per daemon, on its own registry, so tests and
several daemons in one process never share counters."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from syncd.history import History

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "syncd_webhook_requests",
            "Webhook requests answered, by HTTP status and reason",
            ["status", "reason"],
            registry=r,
        )
        self.events = Counter(
            "syncd_events",
            "Webhook events by outcome (applied, stale, duplicate, ignored, invalid, ...)",
            ["outcome"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "syncd_webhook_ack_seconds",
            "Time from request received to durable acknowledgement",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inbox_depth = Gauge(
            "syncd_inbox_depth", "Webhook deliveries committed but not yet applied", registry=r
        )
        self.inbox_bytes = Gauge(
            "syncd_inbox_bytes", "Bytes of webhook bodies committed but not yet applied", registry=r
        )
        self.group_commit_size = Histogram(
            "syncd_inbox_group_commit_size",
            "Deliveries committed together in one transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.records = Counter(
            "syncd_records",
            "Record changes decided by the reconciler, by source and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.poll_duration = Histogram(
            "syncd_poll_seconds", "Duration of one poll of one resource", ["resource", "kind"], registry=r
        )
        self.poll_errors = Counter(
            "syncd_poll_errors", "Failed polls by resource and error kind", ["resource", "kind"], registry=r
        )
        self.api_requests = Counter(
            "syncd_api_requests",
            "Requests made to the Pet Store API, by kind (poll, relist, fetch, other) and status",
            ["kind", "status"],
            registry=r,
        )
        self.api_budget_wait = Histogram(
            "syncd_api_budget_wait_seconds",
            "Time a request waited for the client-side request budget (api.rate_limit), by kind",
            ["kind"],
            buckets=(0.0, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.api_budget_waiting = Gauge(
            "syncd_api_budget_waiting",
            "Requests waiting for the request budget now, by kind",
            ["kind"],
            registry=r,
        )
        self.fetch_id_mismatches = Counter(
            "syncd_fetch_id_mismatches",
            "Fetched records refused because their id is not the one requested (the event is retried)",
            registry=r,
        )
        self.thin_fetches_saved = Counter(
            "syncd_thin_fetches_saved",
            "Thin events answered by a fetch of the same record made for another event",
            registry=r,
        )
        self.api_bytes = Counter(
            "syncd_api_response_bytes", "Bytes received from the Pet Store API", registry=r
        )
        self.cursor_lag = Gauge(
            "syncd_cursor_lag_seconds",
            "Wall clock minus the resource's committed cursor",
            ["resource"],
            registry=r,
        )
        self.last_poll = Gauge(
            "syncd_last_poll_timestamp_seconds",
            "When the resource was last polled successfully",
            ["resource"],
            registry=r,
        )
        self.mode = Gauge("syncd_mode", "1 for the current mode", ["mode"], registry=r)
        self.fallback_switches = Counter(
            "syncd_fallback_switches",
            "Switches between push and fallback polling, by reason",
            ["to", "reason"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "syncd_webhook_audit_dropped", "Audit rows dropped because the buffer was full", registry=r
        )
        self.audit_sampled_out = Counter(
            "syncd_webhook_audit_sampled_out",
            "Rejected requests neither audited nor logged: their client was over its audit budget",
            registry=r,
        )
        self.dead_letters = Counter("syncd_dead_letters", "Events stored as dead letters", registry=r)
        self.tombstones = Counter(
            "syncd_tombstones", "Records marked deleted by a full relist", ["resource"], registry=r
        )
        self.future_timestamps = Counter(
            "syncd_future_timestamps",
            "Listed records stamped further ahead of the API's clock than poll.max_clock_skew"
            " (mirrored, not used for the cursor), once per record and timestamp",
            ["resource"],
            registry=r,
        )
        self.listings_aborted = Counter(
            "syncd_listings_aborted",
            "Listings ended because the API repeated a next_cursor or exceeded poll.max_pages",
            ["resource", "reason"],
            registry=r,
        )
        self.relists_held_back = Counter(
            "syncd_relists_held_back",
            "Full relists that tombstoned nothing because they would delete more than"
            " poll.max_tombstone_ratio of the live records",
            ["resource"],
            registry=r,
        )
        self.event_to_mirror = Histogram(
            "syncd_event_to_mirror_seconds",
            "Time from webhook receipt to the change being applied in the mirror",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        #: The same deliveries and latencies over the last 15 minutes, for the status page.
        self.history = History()

        self.changes = Counter(
            "syncd_changes",
            "Changes committed to the change log, by resource and event",
            ["resource", "event"],
            registry=r,
        )
        self.sink_lag = Gauge(
            "syncd_sink_lag",
            "Changes in the log a sink has not taken yet (the log's head minus its offset)",
            ["sink"],
            registry=r,
        )
        self.sink_deliveries = Counter(
            "syncd_sink_deliveries",
            "Changes handed to a sink, by outcome (delivered, failed, dead_lettered)",
            ["sink", "outcome"],
            registry=r,
        )
        self.sink_delivery_seconds = Histogram(
            "syncd_sink_delivery_seconds",
            "Duration of one delivery attempt (a batch) to a sink",
            ["sink"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.jetstream_connected = Gauge(
            "syncd_jetstream_connected",
            "1 while connected to NATS with the JetStream streams in place (syncd receive, and"
            " syncd run with webhook.inbox = nats)",
            registry=r,
        )
        self.jetstream_consumed = Counter(
            "syncd_jetstream_consumed",
            "Deliveries taken from the inbox stream by this mirror's consumer, committed and acked",
            registry=r,
        )

    def forget_sink(self, sink: str) -> None:
        """Drop a removed sink's series, so /metrics does not report it forever."""
        for metric in (self.sink_lag, self.sink_delivery_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(sink)
        for outcome in ("delivered", "failed", "dead_lettered"):
            with contextlib.suppress(KeyError):
                self.sink_deliveries.remove(sink, outcome)

    def set_mode(self, mode: str) -> None:
        for m in ("push", "fallback", "poll"):
            self.mode.labels(mode=m).set(1 if m == mode else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
