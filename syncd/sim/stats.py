"""Counters the simulator keeps about itself, served by GET /_sim/stats."""

from __future__ import annotations

from collections import Counter, deque
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


#: How many acknowledged event ids `/_sim/acked` remembers (the newest win).
ACK_LOG_SIZE = 200_000


class Stats:
    """Plain counters, touched only from the simulator's event loop."""

    def __init__(self) -> None:
        self.acked: deque[str] = deque(maxlen=ACK_LOG_SIZE)
        """Event ids whose delivery got a 2xx, in order: what a receiver promised to keep."""
        self.acked_total = 0
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

    def ack(self, event_id: str) -> None:
        self.acked.append(event_id)
        self.acked_total += 1

    def acked_ids(self) -> dict[str, Any]:
        return {"event_ids": list(self.acked), "complete": self.acked_total == len(self.acked)}

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
