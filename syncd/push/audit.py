"""Request audit trail for the webhook receiver, written in batches off the ack path.

Rows wait in a bounded buffer and a background task hands them to the store writer in
batches, so auditing never adds a transaction to an acknowledgement. If the store falls
behind, the oldest rows are dropped and counted rather than letting memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from typing import NamedTuple, Protocol

from syncd.metrics import Metrics
from syncd.store.audit import add_audit
from syncd.store.db import Store, replayable_transaction
from syncd.store.writer import Writer

log = logging.getLogger(__name__)


class RejectionSampler:
    """Per-client token bucket for the audit rows and log lines of rejected requests. A
    client answered 4xx/5xx in a loop would otherwise write a row (and a line) per request,
    gigabytes an hour; past its burst it gets `rate` rows a second, and the rest are only
    counted. Memory is bounded by an LRU of clients."""

    def __init__(self, rate: float = 1.0, burst: float = 20.0, *, max_clients: int = 10_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max_clients = max_clients
        #: client -> (tokens, last refill, rejections not audited since the last audited one)
        self._clients: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def admit(self, client: str, now: float) -> int | None:
        """None: do not audit this one. Otherwise audit it; the number is how many of the
        client's rejections before it were not audited."""
        tokens, last, skipped = self._clients.pop(client, (self._burst, now, 0))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        if tokens >= 1.0:
            self._clients[client] = (tokens - 1.0, now, 0)
            result: int | None = skipped
        else:
            self._clients[client] = (tokens, now, skipped + 1)
            result = None
        if len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)
        return result


class AuditRow(NamedTuple):
    at: float
    client: str
    method: str
    path: str
    status: int
    reason: str
    event_id: str | None
    body_size: int


class AuditBuffer:
    """Audit rows waiting to be written: at most `max_rows`, the oldest dropped past that.
    Every row lost, dropped here or by a write that failed (`lost`), is counted in `dropped`
    and in `syncd_webhook_audit_dropped_total`."""

    def __init__(self, max_rows: int, metrics: Metrics | None) -> None:
        self._rows: deque[AuditRow] = deque(maxlen=max_rows)
        self._metrics = metrics
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: AuditRow) -> None:
        if len(self._rows) == self._rows.maxlen:
            self.lost(1)
        self._rows.append(row)

    def take(self, limit: int | None = None) -> list[AuditRow]:
        """The oldest `limit` rows (all of them by default), removed from the buffer."""
        count = len(self._rows) if limit is None else min(limit, len(self._rows))
        return [self._rows.popleft() for _ in range(count)]

    def lost(self, count: int) -> None:
        self.dropped += count
        if self._metrics is not None:
            self._metrics.audit_dropped.inc(count)


class AuditTrail(Protocol):
    """What the receiver records each answer to: `AuditLog` (the store) or, in `syncd
    receive`, which has no store, `syncd.push.log_audit.LogAudit` (JSON log lines)."""

    def record(self, row: AuditRow) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _write(store: Store, rows: list[AuditRow]) -> None:
    # The trail may lose its last rows in a power cut, never an acknowledged delivery.
    with replayable_transaction(store):
        add_audit(store.conn, rows)


class AuditLog:
    def __init__(
        self,
        writer: Writer,
        *,
        max_rows: int = 10_000,
        interval: float = 0.25,
        batch: int = 2_000,
        metrics: Metrics | None = None,
    ) -> None:
        self._writer = writer
        self._buffer = AuditBuffer(max_rows, metrics)
        self._interval = interval
        self._batch = batch
        self._kick = asyncio.Event()
        #: Held while rows are being written, so a flush also waits for a write in progress.
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.written = 0

    @property
    def dropped(self) -> int:
        """Rows lost: the buffer was full (the oldest go first), or the store refused them."""
        return self._buffer.dropped

    def record(self, row: AuditRow) -> None:
        self._buffer.add(row)
        if len(self._buffer) >= self._batch:
            self._kick.set()

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="syncd-audit")

    async def stop(self) -> None:
        self._stopping = True
        self._kick.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def flush(self) -> None:
        """Write every buffered row now; returns once they (and any rows the background task
        was already writing) are committed."""
        async with self._writing:
            await self._write_buffered()

    async def _write_buffered(self) -> None:
        while rows := self._buffer.take(self._batch):
            try:
                await self._writer.run(_write, rows)
            except Exception as exc:
                # Audit must not take the receiver down with the store; the loss is counted.
                log.error("cannot write %d audit rows: %s", len(rows), exc)
                self._buffer.lost(len(rows))
                return
            self.written += len(rows)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._interval)
            self._kick.clear()
            await self.flush()
        await self.flush()
