"""Counters the simulator keeps about itself, served by GET /_sim/stats."""

from __future__ import annotations

from collections import Counter
from typing import Any

WEBHOOK_COUNTERS = (
    "attempted",
    "succeeded",
    "failed",
    "retried",
    "duplicated",
    "delayed",
    "thin",
    "dropped_fault",
    "dropped_paused",
    "dropped_overflow",
    "dropped_gave_up",
    "dropped_endpoint_deleted",
    "dropped_quiesce",
)


class Stats:
    """Plain counters, touched only from the simulator's event loop."""

    def __init__(self) -> None:
        self.changes: Counter[str] = Counter()
        """Changes made per resource (creations, updates and deletions)."""
        self.deletions: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        """Events generated per event type, before any delivery fault."""
        self.requests: Counter[str] = Counter()
        """API requests by "METHOD /route status"."""
        self.bytes_sent = 0
        self.api_faults: Counter[str] = Counter()
        """API faults injected: hang, 429, 5xx, short_page, cursor_expired."""
        self.webhooks: Counter[str] = Counter()
        """See WEBHOOK_COUNTERS; "dropped" in the snapshot sums the dropped_* reasons."""

    def request(self, route: str, status: int, size: int) -> None:
        self.requests[f"{route} {status}"] += 1
        self.bytes_sent += size

    def snapshot(self) -> dict[str, Any]:
        dropped = sum(v for k, v in self.webhooks.items() if k.startswith("dropped_"))
        return {
            "changes": dict(self.changes),
            "deletions": dict(self.deletions),
            "events": dict(self.events),
            "events_total": sum(self.events.values()),
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "bytes_sent": self.bytes_sent,
            "api_faults": dict(self.api_faults),
            "webhooks": {
                **dict.fromkeys(WEBHOOK_COUNTERS, 0),
                **self.webhooks,
                "dropped": dropped,
            },
        }
