"""The inbox's backlog: deliveries acknowledged and not yet applied, and its bound.

Acknowledging first and applying after lets a burst outrun the mirror; the inbox absorbs
it. The bound (`webhook.max_backlog` deliveries, `webhook.max_backlog_bytes` of bodies)
keeps that from filling the disk when the worker cannot keep up (or is stuck on a broken
API): past it, new deliveries are answered 503 with Retry-After and the provider retries
later. Nothing already stored is touched.

The counts are kept in memory, not read with COUNT(*) per request: read once from the
store at start, raised by each inbox commit, lowered by each apply. Both run on the event
loop, so no lock is needed.
"""

from __future__ import annotations

from syncd.errors import SyncdError
from syncd.metrics import Metrics

#: What a refused delivery is told: about how long a large backlog takes to shrink by a
#: useful amount at the apply rate.
RETRY_AFTER_SECONDS = 5


class BacklogFullError(SyncdError, RuntimeError):
    """The inbox holds as many unapplied deliveries (or bytes) as it may; retry later."""

    def __init__(self, event_id: str, reason: str) -> None:
        self.event_id = event_id
        self.reason = reason
        self.retry_after = RETRY_AFTER_SECONDS
        super().__init__(f"event {event_id}: {reason}")


class Backlog:
    """How many deliveries, and how many bytes of bodies, wait in `_inbox` to be applied."""

    def __init__(self, max_deliveries: int, max_bytes: int, *, metrics: Metrics | None = None) -> None:
        self.max_deliveries = max_deliveries
        self.max_bytes = max_bytes
        self._metrics = metrics
        self.depth = 0
        self.bytes = 0

    def set_limits(self, max_deliveries: int, max_bytes: int) -> None:
        self.max_deliveries = max_deliveries
        self.max_bytes = max_bytes

    def load(self, depth: int, size: int) -> None:
        """The store's counts, at start."""
        self.depth, self.bytes = depth, size
        self._publish()

    def added(self, count: int, size: int) -> None:
        self.depth += count
        self.bytes += size
        self._publish()

    def applied(self, count: int, size: int) -> None:
        self.depth = max(0, self.depth - count)
        self.bytes = max(0, self.bytes - size)
        self._publish()

    def refusal(self, waiting: int, waiting_bytes: int, size: int) -> str | None:
        """Why one more delivery of `size` bytes must be refused, with `waiting` deliveries
        (`waiting_bytes`) already on their way to a commit; None when it fits. Those on their
        way count as stored (a few may turn out to be duplicates), so the bound holds
        however many arrive at once."""
        if self.depth + waiting + 1 > self.max_deliveries:
            return f"backlog of {self.max_deliveries} unapplied deliveries reached (webhook.max_backlog)"
        if self.bytes + waiting_bytes + size > self.max_bytes:
            return f"backlog of {self.max_bytes} bytes of unapplied deliveries reached (webhook.max_backlog_bytes)"
        return None

    @property
    def full(self) -> bool:
        """No more deliveries fit (what status and readiness show)."""
        return self.depth >= self.max_deliveries or self.bytes >= self.max_bytes

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.inbox_depth.set(self.depth)
            self._metrics.inbox_bytes.set(self.bytes)
