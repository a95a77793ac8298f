"""The durable webhook inbox: a delivery is acknowledged only once its row is committed.

Group commit. Concurrent deliveries wait in one bounded queue; a drain job on the store
writer takes everything waiting (up to `max_batch`) and commits it in one transaction, one
fsync, then the event loop resolves every waiter. Deliveries that arrive while a commit
runs form the next batch, which the writer takes as soon as it is free, so under load the
batch size follows the arrival rate and the number of transactions stays near the number
of fsyncs the disk can do, while a lone delivery is committed at once: no timer adds
latency, and commits never wait for the event loop to start the next one.

Deduplication. The same event id is acknowledged once per delivery but stored once: an id
already known (waiting in `_inbox`, applied in `_events`, or earlier in the same batch) only
bumps `deliveries`/`last_seen`. A new id is one `_inbox` row, which is its dedupe key until
the worker applies it and writes its `_events` row in the same transaction (acknowledge
first, apply after: the ack path writes one row per delivery).

Backlog. Deliveries not yet applied are bounded (syncd.push.backlog): past the bound a new
delivery is refused (503 with Retry-After) before it reaches the queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import orjson

from syncd.core.records import resource_for_event
from syncd.errors import StoreClosedError, StoreError, SyncdError
from syncd.metrics import Metrics
from syncd.push.backlog import Backlog, BacklogFullError
from syncd.push.parse_memo import parsed_bodies
from syncd.store import events
from syncd.store.db import Store
from syncd.store.writer import Writer

log = logging.getLogger(__name__)

SubmitResult = Literal["accepted", "duplicate"]

#: Group commits in a row of at least `busy_batch` deliveries after which the receiver
#: counts as saturated (`Inbox.saturated`).
BUSY_COMMITS: Final = 3


class InboxFullError(SyncdError, RuntimeError):
    """More deliveries are waiting for a commit than the inbox holds; the sender should retry."""

    def __init__(self, event_id: str, limit: int) -> None:
        self.event_id = event_id
        super().__init__(f"event {event_id}: inbox has {limit} deliveries waiting for a commit")


class InboxUnavailableError(SyncdError, RuntimeError):
    """The inbox cannot take a delivery now (JetStream unreachable or too slow to PubAck);
    the sender should retry after `retry_after` seconds."""

    def __init__(self, event_id: str, reason: str, *, retry_after: int = 1) -> None:
        self.event_id = event_id
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"event {event_id}: {reason}")


class InboxCommitError(StoreError):
    """The store could not commit a batch of deliveries (disk full, locked, writer stopped)."""

    def __init__(self, event_ids: Sequence[str], cause: BaseException) -> None:
        self.event_ids = tuple(event_ids)
        shown = ", ".join(event_ids[:3]) + (f" and {len(event_ids) - 3} more" if len(event_ids) > 3 else "")
        super().__init__(f"cannot commit events {shown}: {cause}")


@dataclass(slots=True)
class Delivery:
    """One verified webhook delivery, as it is stored. `headers` holds only what audit needs:
    never signatures or secrets."""

    event_id: str
    received_at: float
    client: str
    headers: dict[str, str]
    body: bytes
    event_type: str | None = None
    #: The body as the receiver parsed it; never stored, it spares the worker a second parse.
    parsed: Any = field(default=None, repr=False, compare=False)


class DeliveryInbox(Protocol):
    """Where the receiver hands a verified delivery: `submit` returns once it is durable
    (committed to SQLite, or stored by JetStream), or raises InboxFullError,
    InboxCommitError or InboxUnavailableError."""

    async def submit(self, delivery: Delivery) -> SubmitResult: ...


@dataclass(slots=True)
class _Waiting:
    delivery: Delivery
    future: asyncio.Future[SubmitResult] = field(repr=False)


def commit_deliveries(store: Store, deliveries: Sequence[Delivery]) -> list[SubmitResult]:
    """One transaction: new events into `_inbox`, repeats counted. Runs on the writer thread."""
    results: list[SubmitResult] = []
    with store.db.atomic():
        known = events.known_events(store.conn, [d.event_id for d in deliveries])
        inbox_rows: list[events.InboxRow] = []
        repeats: list[tuple[float, str]] = []
        for d in deliveries:
            if d.event_id in known:
                results.append("duplicate")
                repeats.append((d.received_at, d.event_id))
                continue
            known.add(d.event_id)
            results.append("accepted")
            inbox_rows.append(
                (
                    d.event_id,
                    d.received_at,
                    d.client,
                    orjson.dumps(d.headers, option=orjson.OPT_SORT_KEYS).decode(),
                    d.body,
                    d.event_type,
                    resource_for_event(d.event_type) if d.event_type else None,
                )
            )
        events.add_deliveries(store.conn, inbox_rows, repeats)
    return results


class Inbox:
    """Durable, deduplicating, group-committing inbox in front of the store writer.

    Deliveries wait in a queue shared with the writer thread. The first one queues a drain
    job on the writer; the job takes everything waiting (up to `max_batch`), commits it,
    hands the results back to the event loop and, if more deliveries arrived meanwhile,
    queues itself again behind whatever other work the writer has. Batches therefore
    follow each other as fast as the store commits, without waiting for the event loop to
    get round to starting the next one, and other writer work is never starved."""

    def __init__(
        self,
        writer: Writer,
        *,
        max_batch: int = 512,
        max_waiting: int = 4096,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        guard: Callable[[], str | None] | None = None,
        backlog: Backlog | None = None,
        busy_batch: int = 16,
    ) -> None:
        """`guard`, run on the writer thread before every commit, says why the store must not
        take deliveries now (its file was removed or replaced), or None. `backlog`: the bound
        on unapplied deliveries (unbounded by default; `start` reads its counts from the
        store). `busy_batch`: the group commit size at which, `BUSY_COMMITS` commits in a row,
        the receiver counts as saturated (`saturated_at`)."""
        if max_batch < 1 or max_waiting < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_waiting ({max_waiting}) must be >= 1")
        self.backlog = backlog if backlog is not None else Backlog(2**62, 2**62, metrics=metrics)
        self._busy_batch = busy_batch
        #: Group commits in a row of at least `busy_batch` deliveries; only the loop touches it.
        self._busy_commits = 0
        #: Bytes of the bodies submitted and not yet answered (with `_unanswered`).
        self._unanswered_bytes = 0
        #: When the receiver last counted as saturated (monotonic), or None: the inbox
        #: worker holds back while it is.
        self.saturated_at: float | None = None
        self._writer = writer
        self._max_batch = max_batch
        self._max_waiting = max_waiting
        self._metrics = metrics
        self._clock = clock
        self._guard = guard
        #: Appended on the event loop, taken on the writer thread (under `_lock`).
        self._queue: deque[_Waiting] = deque()
        self._lock = threading.Lock()
        #: A drain job is queued or running on the writer (guarded by `_lock`).
        self._draining = False
        #: Deliveries submitted and not yet answered; only the event loop touches it.
        self._unanswered = 0
        self._answered_all = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[], None]] = []
        #: When a delivery was last committed: only durable deliveries count as webhooks
        #: arriving (for readiness and fallback health), never ones answered 503.
        self.last_delivery_at: float | None = None
        #: When a commit last failed, and why; cleared by the next commit that succeeds.
        self.last_failure_at: float | None = None
        self.last_failure: str | None = None
        #: Deliveries committed (each commit's size is the group_commit_size metric).
        self.committed = 0

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called after every commit that stored at least one new event (the worker's wake)."""
        self._listeners.append(listener)

    @property
    def waiting(self) -> int:
        """Deliveries waiting for a commit, including those being committed."""
        return self._unanswered

    def saturated(self, within: float = 0.1) -> bool:
        """Whether the last `BUSY_COMMITS` group commits each took `busy_batch` deliveries or
        more, in the last `within` seconds: the writer spends itself on acknowledgements, and
        they are what the process should spend itself on."""
        at = self.saturated_at
        return at is not None and time.monotonic() - at < within

    async def start(self) -> None:
        self.backlog.load(*await self._writer.run(lambda store: events.inbox_backlog(store.conn)))
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Commit what is waiting, then stop taking deliveries."""
        self._loop = None
        while self._unanswered:
            self._answered_all.clear()
            await self._answered_all.wait()

    async def submit(self, delivery: Delivery) -> SubmitResult:
        """Store one delivery durably; returns once it is committed (or raises)."""
        loop = self._loop
        if loop is None:
            raise InboxCommitError([delivery.event_id], RuntimeError("the inbox is not running"))
        if self._unanswered >= self._max_waiting:
            raise InboxFullError(delivery.event_id, self._max_waiting)
        size = len(delivery.body)
        refusal = self.backlog.refusal(self._unanswered, self._unanswered_bytes, size)
        if refusal is not None:
            raise BacklogFullError(delivery.event_id, refusal)
        waiting = _Waiting(delivery, loop.create_future())
        self._unanswered += 1
        self._unanswered_bytes += size
        with self._lock:
            self._queue.append(waiting)
            start = not self._draining
            self._draining = True
        if start:
            self._schedule_drain(loop)
        return await waiting.future

    async def submit_many(self, deliveries: Sequence[Delivery]) -> list[SubmitResult]:
        """Store `deliveries` in one transaction, bypassing the group-commit queue: the
        JetStream consumer has its batch already and acks it after this returns. Raises
        InboxCommitError when the store cannot commit (nothing of the batch is then stored)."""
        if not deliveries:
            return []
        guard = self._guard

        def commit(store: Store) -> list[SubmitResult]:
            problem = guard() if guard is not None else None
            if problem is not None:
                raise StoreError(problem)
            return commit_deliveries(store, deliveries)

        try:
            results = await self._writer.run(commit)
        except Exception as exc:
            self.last_failure_at = self._clock()
            self.last_failure = str(exc)
            raise InboxCommitError([d.event_id for d in deliveries], exc) from exc
        self._committed(deliveries, results)
        return results

    def _committed(self, deliveries: Sequence[Delivery], results: Sequence[SubmitResult]) -> None:
        """Bookkeeping of a commit that succeeded: health, the parse memo, metrics, the
        worker's wake."""
        self.committed += len(deliveries)
        self.last_delivery_at = self._clock()
        self.last_failure_at = self.last_failure = None
        accepted = accepted_bytes = 0
        for delivery, result in zip(deliveries, results, strict=True):
            if result == "accepted":
                accepted += 1
                accepted_bytes += len(delivery.body)
                if delivery.parsed is not None:
                    parsed_bodies.put(delivery.body, delivery.parsed)
        self.backlog.added(accepted, accepted_bytes)
        if self._metrics is not None:
            self._metrics.group_commit_size.observe(len(deliveries))
            self._metrics.history.deliveries(self.last_delivery_at, len(deliveries))
        if accepted:
            for listener in self._listeners:
                listener()

    async def prune(self, *, dedupe_retention: float, audit_retention: float) -> tuple[int, int]:
        """Forget event ids and audit rows past their retention (pending events are kept)."""
        now = self._clock()
        return await self._writer.run(
            lambda store: events.prune(
                store, now, dedupe_retention=dedupe_retention, audit_retention=audit_retention
            )
        )

    def _schedule_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queue a drain job on the writer; if the writer has stopped, fail what waits."""
        try:
            self._writer.submit(self._drain, loop)
        except StoreClosedError as exc:
            with self._lock:
                orphans = list(self._queue)
                self._queue.clear()
                self._draining = False
            loop.call_soon_threadsafe(self._answer, orphans, None, exc)

    def _drain(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        """One batch, on the writer thread: commit it, pass the results to the loop, and queue
        the next drain if deliveries are waiting."""
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
        results: list[SubmitResult] | None = None
        error: Exception | None = None
        if batch:
            try:
                problem = self._guard() if self._guard is not None else None
                if problem is not None:
                    raise StoreError(problem)
                results = commit_deliveries(store, [w.delivery for w in batch])
            except Exception as exc:  # every waiter must get an answer, whatever broke
                error = exc
        with self._lock:
            more = bool(self._queue)
            self._draining = more
        if more:
            self._schedule_drain(loop)
        if batch:
            loop.call_soon_threadsafe(self._answer, batch, results, error)

    def _answer(
        self, batch: list[_Waiting], results: list[SubmitResult] | None, error: BaseException | None
    ) -> None:
        """On the event loop: resolve a committed (or failed) batch."""
        self._unanswered -= len(batch)
        self._unanswered_bytes -= sum(len(w.delivery.body) for w in batch)
        if results is None:
            log.error("inbox commit of %d deliveries failed: %s", len(batch), error)
            self.last_failure_at = self._clock()
            self.last_failure = str(error)
            failure = InboxCommitError(
                [w.delivery.event_id for w in batch], error or RuntimeError("commit failed")
            )
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(failure)
        else:
            # Saturation is a rate, not a moment: one commit that waited behind a long job
            # (an apply, a checkpoint) gathers many deliveries at 1,000/s too, and holding the
            # worker back then only moves the mirror and the change feed a second behind.
            # Only commits that stay large, one after another, mean arrivals outrun commits.
            self._busy_commits = self._busy_commits + 1 if len(batch) >= self._busy_batch else 0
            if self._busy_commits >= BUSY_COMMITS:
                self.saturated_at = time.monotonic()
            self._committed([w.delivery for w in batch], results)
            for w, result in zip(batch, results, strict=True):
                if not w.future.done():
                    w.future.set_result(result)
        if not self._unanswered:
            self._answered_all.set()
