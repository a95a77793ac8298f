"""Prometheus metrics. One `Metrics` object per daemon, on its own registry, so tests and
several daemons in one process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
            "syncd_api_requests", "Requests made to the Pet Store API, by status", ["status"], registry=r
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
        self.event_to_mirror = Histogram(
            "syncd_event_to_mirror_seconds",
            "Time from webhook receipt to the change being applied in the mirror",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def set_mode(self, mode: str) -> None:
        for m in ("push", "fallback", "poll"):
            self.mode.labels(mode=m).set(1 if m == mode else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
