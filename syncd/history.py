"""The last 15 minutes of webhook traffic, in memory, for the admin status page's charts.

Prometheus keeps history for those who run it; an operator looking at one daemon's page
should not need it. The ring holds a fixed number of buckets (`span / step`), whatever the
traffic, so memory stays flat: a bucket is four numbers, not the samples it summarises.
Callers pass the time in (epoch seconds), so tests drive it without waiting.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: What the status page charts: the last 15 minutes in 5 s buckets (180 of them).
HISTORY_SPAN = 900.0
HISTORY_STEP = 5.0


@dataclass(slots=True)
class _Bucket:
    index: int
    deliveries: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0
    latency_max: float = 0.0


class History:
    """Deliveries committed and event-to-mirror latency, bucketed by time.

    Fed from the event loop (inbox commits, inbox worker batches) and read by the admin
    listener; the lock keeps a read from seeing a bucket half-updated should a caller ever
    run on another thread."""

    def __init__(self, span: float = HISTORY_SPAN, step: float = HISTORY_STEP) -> None:
        if not (step > 0 and span >= step and math.isfinite(span)):
            raise ValueError(f"history span {span!r} and step {step!r}: need 0 < step <= span")
        self.span = span
        self.step = step
        self.size = math.ceil(span / step)
        # One more than the span: the current bucket is partly filled.
        self._buckets: deque[_Bucket] = deque(maxlen=self.size + 1)
        self._lock = threading.Lock()

    def _bucket(self, now: float) -> _Bucket:
        index = math.floor(now / self.step)
        buckets = self._buckets
        if buckets and buckets[-1].index >= index:
            # The same step, or a wall clock that stepped back: count it in the newest bucket
            # rather than reorder the ring.
            return buckets[-1]
        bucket = _Bucket(index)
        buckets.append(bucket)
        return bucket

    def deliveries(self, now: float, count: int = 1) -> None:
        """`count` webhook deliveries committed to the inbox at `now`."""
        if count <= 0:
            return
        with self._lock:
            self._bucket(now).deliveries += count

    def latencies(self, now: float, seconds: Iterable[float]) -> None:
        """Event-to-mirror latencies of changes applied at `now`."""
        values = [s for s in seconds if math.isfinite(s) and s >= 0]
        if not values:
            return
        with self._lock:
            bucket = self._bucket(now)
            bucket.latency_sum += sum(values)
            bucket.latency_count += len(values)
            bucket.latency_max = max(bucket.latency_max, *values)

    def series(self, now: float) -> dict[str, Any]:
        """The window ending at `now`, one point per step, oldest first, gaps as zero
        deliveries and no latency (null). The current step's rate is over its elapsed part."""
        last = math.floor(now / self.step)
        first = last - self.size + 1
        with self._lock:
            by_index = {b.index: b for b in self._buckets if first <= b.index <= last}
            buckets = [by_index.get(i) for i in range(first, last + 1)]
        elapsed_now = max(now - last * self.step, 1e-3)
        times: list[float] = []
        rates: list[float] = []
        means: list[float | None] = []
        maxima: list[float | None] = []
        for offset, bucket in enumerate(buckets):
            index = first + offset
            times.append(index * self.step)
            width = elapsed_now if index == last else self.step
            rates.append(0.0 if bucket is None else round(bucket.deliveries / width, 3))
            if bucket is None or bucket.latency_count == 0:
                means.append(None)
                maxima.append(None)
            else:
                means.append(round(bucket.latency_sum / bucket.latency_count * 1000, 3))
                maxima.append(round(bucket.latency_max * 1000, 3))
        return {
            "span_seconds": self.span,
            "step_seconds": self.step,
            "t": times,
            "deliveries_per_second": rates,
            "latency_mean_ms": means,
            "latency_max_ms": maxima,
        }
