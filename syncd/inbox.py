"""The durable webhook inbox: a delivery is acknowledged only once its row is committed.

Group commit. Concurrent deliveries wait in one bounded list; a single flusher task takes
everything waiting (up to `max_batch`) as soon as the previous commit is done and commits
it in one writer job, one transaction, one fsync, then resolves every waiter. Deliveries
that arrive while a commit runs form the next batch, so under load the batch size follows
the arrival rate and the number of transactions stays near the number of fsyncs the disk
can do, while a lone delivery is committed at once: no timer adds latency, and the event
loop never idles waiting for a batch to fill. (An optional `window` waits a little longer
for company before each commit, for disks whose fsyncs are expensive.)

Deduplication. The same event id is acknowledged once per delivery but stored once: an id
already in `_events` (or earlier in the same batch) only bumps `deliveries`/`last_seen`.
New ids get their `_events` row (outcome 'pending') in the same transaction as their
`_inbox` row, so the dedupe key and the event can never be separated by a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from syncd.errors import StoreError, SyncdError
from syncd.metrics import Metrics
from syncd.records import resource_for_event
from syncd.store import Store, Writer, insert_values

log = logging.getLogger("syncd.inbox")

SubmitResult = Literal["accepted", "duplicate"]


class InboxFullError(SyncdError, RuntimeError):
    """More deliveries are waiting for a commit than the inbox holds; the sender should retry."""

    def __init__(self, event_id: str, limit: int) -> None:
        self.event_id = event_id
        super().__init__(f"event {event_id}: inbox has {limit} deliveries waiting for a commit")


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


class ParsedBodies:
    """A bounded memo of parsed webhook bodies, from the receiver (which must parse every
    body to check it) to the worker (which needs the same parse), so a body is parsed once
    on its way to the mirror. A memo of a pure function: whoever misses parses the body
    itself, so the bound, restarts and rows that came from disk change nothing but speed.
    An entry is taken once; the oldest go first when the bound is reached."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._items: dict[bytes, Any] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, body: bytes, parsed: Any) -> None:
        if body in self._items:
            return
        self._items[body] = parsed
        self._bytes += len(body)
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._items))
            del self._items[oldest]
            self._bytes -= len(oldest)

    def take(self, body: bytes) -> Any:
        """The parse of `body` if it is here (then forgotten), else None."""
        parsed = self._items.pop(body, None)
        if parsed is not None:
            self._bytes -= len(body)
        return parsed


#: The process's memo (the receiver's inbox fills it, the inbox worker drains it).
parsed_bodies = ParsedBodies()


@dataclass(slots=True)
class _Waiting:
    delivery: Delivery
    future: asyncio.Future[SubmitResult] = field(repr=False)


@contextlib.contextmanager
def replayable_transaction(store: Store) -> Iterator[None]:
    """One transaction committed without its own fsync (synchronous=NORMAL), for work that
    can be redone from what is already durable: applying inbox rows (they are deleted in the
    same transaction, so a lost commit leaves them to be applied again) and the audit trail.
    WAL keeps commits in order and the next FULL commit (the next acknowledgement) syncs
    everything before it, so this never weakens what an acknowledgement promises; it only
    keeps the disk's flushes for acknowledgements. FULL is restored whatever happens."""
    if store.conn.in_transaction:
        # Joining a caller's transaction: its own commit decides how it is synced.
        with store.db.atomic():
            yield
        return
    store.conn.execute("PRAGMA synchronous=NORMAL")
    try:
        with store.db.atomic():
            yield
    finally:
        store.conn.execute("PRAGMA synchronous=FULL")


def commit_deliveries(store: Store, deliveries: Sequence[Delivery]) -> list[SubmitResult]:
    """One transaction: new events into `_inbox` and `_events`, repeats counted. Runs on the
    writer thread."""
    conn = store.conn
    results: list[SubmitResult] = []
    with store.db.atomic():
        known = store.known_events([d.event_id for d in deliveries])
        inbox_rows: list[tuple[str, float, str, str, bytes]] = []
        event_rows: list[tuple[str, str | None, str | None, float, float, str]] = []
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
                )
            )
            resource = resource_for_event(d.event_type) if d.event_type else None
            event_rows.append((d.event_id, d.event_type, resource, d.received_at, d.received_at, "pending"))
        insert_values(conn, "INSERT INTO _inbox (event_id, received_at, client, headers, body)", inbox_rows)
        insert_values(
            conn,
            "INSERT INTO _events (event_id, event_type, resource, first_seen, last_seen, outcome)",
            event_rows,
        )
        conn.executemany(
            "UPDATE _events SET deliveries = deliveries + 1, last_seen = MAX(last_seen, ?)"
            " WHERE event_id = ?",
            repeats,
        )
    return results


class Inbox:
    """Durable, deduplicating, group-committing inbox in front of the store writer."""

    def __init__(
        self,
        writer: Writer,
        *,
        window: float = 0.0,
        max_batch: int = 512,
        max_waiting: int = 4096,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_batch < 1 or max_waiting < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_waiting ({max_waiting}) must be >= 1")
        self._writer = writer
        self._window = window
        self._max_batch = max_batch
        self._max_waiting = max_waiting
        self._metrics = metrics
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._listeners: list[Callable[[], None]] = []
        self.last_delivery_at: float | None = None
        #: Transactions committed and deliveries they held, for tests and status.
        self.commits = 0
        self.committed = 0

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called after every commit that stored at least one new event (the worker's wake)."""
        self._listeners.append(listener)

    @property
    def waiting(self) -> int:
        """Deliveries waiting for a commit, including the one being committed."""
        return len(self._waiting) + self._in_flight

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._flusher(), name="syncd-inbox-flusher")

    async def stop(self) -> None:
        """Commit what is waiting, then stop taking deliveries."""
        self._stopping = True
        self._wakeup.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, delivery: Delivery) -> SubmitResult:
        """Store one delivery durably; returns once it is committed (or raises)."""
        if self._stopping or self._task is None:
            raise InboxCommitError([delivery.event_id], RuntimeError("the inbox is not running"))
        if self.waiting >= self._max_waiting:
            raise InboxFullError(delivery.event_id, self._max_waiting)
        future: asyncio.Future[SubmitResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(delivery, future))
        self.last_delivery_at = self._clock()
        self._wakeup.set()
        if len(self._waiting) >= self._max_batch:
            self._full.set()
        return await future

    async def prune(self, *, dedupe_retention: float, audit_retention: float) -> tuple[int, int]:
        """Forget event ids and audit rows past their retention (pending events are kept)."""
        now = self._clock()
        return await self._writer.run(
            lambda store: store.prune(now, dedupe_retention=dedupe_retention, audit_retention=audit_retention)
        )

    async def _flusher(self) -> None:
        while True:
            if not self._waiting:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._window > 0 and len(self._waiting) < self._max_batch and not self._stopping:
                # Let concurrent deliveries join this commit, unless the batch is already full.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._window)
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            # One commit at a time: what arrives meanwhile is the next batch, taken the moment
            # this one is answered.
            await self._commit(batch)

    async def _commit(self, batch: list[_Waiting]) -> None:
        self._in_flight += len(batch)
        deliveries = [w.delivery for w in batch]
        try:
            results = await self._writer.run(commit_deliveries, deliveries)
        except Exception as exc:  # every waiter must get an answer, whatever broke
            log.error("inbox commit of %d deliveries failed: %s", len(batch), exc)
            error = InboxCommitError([d.event_id for d in deliveries], exc)
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(error)
            return
        finally:
            self._in_flight -= len(batch)
        self.commits += 1
        self.committed += len(batch)
        accepted = 0
        for w, result in zip(batch, results, strict=True):
            if result == "accepted":
                accepted += 1
                if w.delivery.parsed is not None:
                    parsed_bodies.put(w.delivery.body, w.delivery.parsed)
            if not w.future.done():
                w.future.set_result(result)
        if self._metrics is not None:
            self._metrics.group_commit_size.observe(len(batch))
            self._metrics.inbox_depth.inc(accepted)
        if accepted:
            for listener in self._listeners:
                listener()
