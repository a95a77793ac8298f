"""The inbox worker: drains committed webhook deliveries into the reconciler, in order.

Each batch is read from `_inbox`, turned into changes (full events carry their snapshot,
thin events are fetched from the API), then settled in ONE transaction on the writer:
mirror writes, `_events` outcomes, dead letters and the deletion of the processed `_inbox`
rows. A crash anywhere before that commit leaves the rows in the inbox to be processed
again, and the reconciler makes the repeat harmless.

A thin event whose fetch fails stays in the inbox: the worker moves on to later rows and
comes back to the failed ones after a backoff, so an API outage delays thin events without
holding up full ones, and memory holds no per-event retry state. So does one whose fetched
record carries another id than the event named: that is the API's answer going wrong (a
proxy or cache mixing up paths), not the event, which stays good to retry.

Fetches are coalesced per record. Thin events in one batch that name one record share one
fetch, and a fetch sent at time T answers every later thin event for that record received
before T: the event's change happened before it was delivered, so the record read at T
already holds it (or the record was gone by T). After a burst of thousands of thin events
for a few records, each record costs one fetch, not one per event or per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from syncd.core.reconcile import Outcome
from syncd.core.records import (
    TEST_EVENT,
    Change,
    RecordId,
    ThinRef,
    change_from_envelope,
    envelope_from_object,
    parse_envelope,
    parse_record,
)
from syncd.errors import RecordError
from syncd.metrics import Metrics
from syncd.push.inbox import parsed_bodies, replayable_transaction
from syncd.store.apply import apply_batch
from syncd.store.db import OPEN_DEAD_LETTER_SQL, Store
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch

log = logging.getLogger(__name__)

#: Outcomes recorded for events that carry no change for the mirror.
TEST, IGNORED, INVALID, GONE, UNFETCHED = "test", "ignored", "invalid", "gone", "unfetched"
#: Reconciler outcomes: after any of them the mirror holds at least the fetched version.
_APPLIED_OUTCOMES = tuple(o.value for o in Outcome)
#: A thin event whose record could not be fetched: it stays where it is, to be retried.
RETRY = "retry"


#: Records a fetch is remembered for, to answer later thin events received before it.
COVERED_RECORDS = 10_000
#: What a covered thin event is recorded as: its change is already in the mirror.
DUPLICATE = Outcome.DUPLICATE.value


class RecordFetcher(Protocol):
    async def get_record(
        self, resource: str, record_id: int | str, *, on_send: Callable[[], None] | None = None
    ) -> dict[str, Any] | None: ...


@dataclass(slots=True)
class Pending:
    """An event read back from `_inbox` (seq set) or `_dead_letters` (dead_letter_id set).
    A dead letter from a listing has `resource` set and holds the record, not an event."""

    event_id: str | None
    received_at: float
    body: bytes
    seq: int | None = None
    dead_letter_id: int | None = None
    resource: str | None = None


@dataclass(slots=True)
class Settled:
    """What one event means once parsed and fetched: a change to reconcile, or an outcome."""

    item: Pending
    event_type: str | None
    change: Change | None = None
    outcome: str | None = None
    reason: str | None = None
    resource: str | None = None
    record_id: str | None = None
    ref: ThinRef | None = None
    #: When the fetch that answered this thin event was sent (None: no fetch answered it).
    fetched_at: float | None = None
    #: Version to record for an event answered without a change of its own.
    version: int | None = None


@dataclass(slots=True)
class _Fetch:
    """One fetch of one record, shared by every thin event that joined it."""

    task: asyncio.Future[dict[str, Any] | None]
    #: Processor clock when the request (its latest attempt) was sent; None while it waits.
    sent_at: float | None = None


class EventProcessor:
    """Parses events and fetches thin ones. Shared by the worker and dead-letter replay."""

    def __init__(
        self,
        client: RecordFetcher | None,
        *,
        fetch_thin: bool,
        fetch_concurrency: int = 8,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._fetch_thin = fetch_thin
        self._limit = asyncio.Semaphore(fetch_concurrency)
        self._clock = clock
        self._metrics = metrics
        self._inflight: dict[tuple[str, RecordId], _Fetch] = {}
        #: (resource, id) -> (when the committed fetch was sent, version it found; None: gone).
        #: Bounded: forgetting an entry costs one more fetch, nothing else.
        self._covered: OrderedDict[tuple[str, RecordId], tuple[float, int | None]] = OrderedDict()
        #: Fetches this processor made and thin events answered by another event's fetch.
        self.fetches = 0
        self.saved = 0

    async def prepare(self, items: Sequence[Pending]) -> list[Settled]:
        settled = [self._parse(item) for item in items]
        groups: dict[tuple[str, RecordId], list[Settled]] = {}
        for s in settled:
            if s.outcome is not None or s.ref is None:
                continue
            key = (s.ref.resource, s.ref.id)
            if self._answer_from_covered(s, key):
                continue
            groups.setdefault(key, []).append(s)
        if groups:
            await asyncio.gather(*(self._fetch_group(key, group) for key, group in groups.items()))
        return settled

    def committed(self, settled: Iterable[Settled]) -> None:
        """Called once `settled` is committed: its fetched records may now answer later thin
        events (never before: a lost commit would leave them answered by nothing)."""
        for s in settled:
            if s.fetched_at is None or s.ref is None or s.outcome not in (*_APPLIED_OUTCOMES, GONE):
                continue
            key = (s.ref.resource, s.ref.id)
            version = s.change.version if s.change is not None else s.version
            previous = self._covered.pop(key, None)
            if previous is None or previous[0] <= s.fetched_at:
                self._covered[key] = (s.fetched_at, version)
            else:
                self._covered[key] = previous
            while len(self._covered) > COVERED_RECORDS:
                self._covered.popitem(last=False)

    def _answer_from_covered(self, s: Settled, key: tuple[str, RecordId]) -> bool:
        # Receipt and send times are both this host's wall clock (receipts are stored); a
        # clock stepped back between them could answer an event from too early a fetch,
        # which the next poll repairs.
        covered = self._covered.get(key)
        if covered is None or s.item.received_at > covered[0]:
            return False
        s.outcome = DUPLICATE if covered[1] is not None else GONE
        s.version = covered[1]
        self._saved(1)
        return True

    def _saved(self, n: int) -> None:
        self.saved += n
        if self._metrics is not None and n:
            self._metrics.thin_fetches_saved.inc(n)

    def _parse(self, item: Pending) -> Settled:
        if item.resource is not None:
            return self._parse_record_letter(item)
        event_type: str | None = None
        try:
            parsed = parsed_bodies.take(item.body)
            env = parse_envelope(item.body) if parsed is None else envelope_from_object(parsed)
            event_type = env.event_type
            meaning = change_from_envelope(env)
        except RecordError as exc:
            return Settled(item, event_type, outcome=INVALID, reason=exc.reason, resource=exc.resource)
        except Exception as exc:  # a payload must never stop the worker; keep it for inspection
            return Settled(item, event_type, outcome=INVALID, reason=f"{type(exc).__name__}: {exc}")
        if meaning is None:
            # The type is stored with the outcome; SQLite's text cannot hold a lone surrogate.
            shown = env.event_type.encode("utf-8", "backslashreplace").decode()
            return Settled(item, shown, outcome=TEST if env.event_type == TEST_EVENT else IGNORED)
        if isinstance(meaning, Change):
            return Settled(
                item, env.event_type, change=meaning, resource=meaning.resource, record_id=str(meaning.id)
            )
        settled = Settled(
            item, env.event_type, resource=meaning.resource, record_id=str(meaning.id), ref=meaning
        )
        if not self._fetch_thin or self._client is None:
            # The safety poll will bring the record; nothing here can.
            settled.outcome = UNFETCHED
        return settled

    @staticmethod
    def _parse_record_letter(item: Pending) -> Settled:
        """A record a listing returned that could not be stored. Replay applies the record
        as it was listed rather than fetching it again: the reconciler keeps the greatest
        state it is shown, so an old state is simply stale if the mirror has moved on, and
        the listing that follows any later change brings that change anyway. Re-applying
        needs no API and replays exactly what was refused."""
        resource = item.resource
        assert resource is not None
        try:
            obj = json.loads(item.body)
        except ValueError as exc:
            return Settled(item, None, outcome=INVALID, reason=f"not a JSON record: {exc}", resource=resource)
        try:
            change = parse_record(resource, obj, "poll")
        except RecordError as exc:
            rid = obj.get("id") if isinstance(obj, dict) else None
            return Settled(
                item,
                None,
                outcome=INVALID,
                reason=exc.reason,
                resource=resource,
                record_id=None if rid is None else str(rid),
            )
        return Settled(item, None, change=change, resource=resource, record_id=str(change.id))

    async def _fetch_group(self, key: tuple[str, RecordId], group: list[Settled]) -> None:
        latest = max(s.item.received_at for s in group)
        fetch = self._inflight.get(key)
        # Joining a fetch already sent is only sound for events received before it was sent.
        if fetch is None or (fetch.sent_at is not None and fetch.sent_at < latest):
            fetch = _Fetch(asyncio.ensure_future(self._get(key)))
            fetch.task.add_done_callback(functools.partial(self._forget, key, fetch))
            self._inflight[key] = fetch
            self.fetches += 1
            self._saved(len(group) - 1)
        else:
            self._saved(len(group))
        try:
            record = await asyncio.shield(fetch.task)
        except RecordError as exc:
            for s in group:
                s.outcome, s.reason = INVALID, exc.reason
            return
        except Exception as exc:
            ref = group[0].ref
            assert ref is not None
            log.warning(
                "event %s: fetching %s %r failed, will retry: %s", ref.event_id, ref.resource, ref.id, exc
            )
            for s in group:
                s.outcome, s.reason = RETRY, str(exc)
            return
        for s in group:
            self._settle_fetched(s, record, fetch.sent_at)

    def _forget(self, key: tuple[str, RecordId], fetch: _Fetch, _done: object) -> None:
        if self._inflight.get(key) is fetch:
            del self._inflight[key]

    async def _get(self, key: tuple[str, RecordId]) -> dict[str, Any] | None:
        client = self._client
        assert client is not None
        resource, record_id = key

        def sent() -> None:
            fetch = self._inflight.get(key)
            if fetch is not None:
                fetch.sent_at = self._clock()

        async with self._limit:
            return await client.get_record(resource, record_id, on_send=sent)

    def _settle_fetched(self, s: Settled, record: dict[str, Any] | None, sent_at: float | None) -> None:
        ref = s.ref
        assert ref is not None
        s.fetched_at = sent_at
        if record is None:
            s.outcome = GONE
            return
        try:
            change = parse_record(ref.resource, record, "fetch")
        except RecordError as exc:
            s.outcome, s.reason = INVALID, f"fetched record: {exc.reason}"
            return
        # Ids are compared as text: an integer-id resource's ids are normalized already, and
        # a string-id record keeps the spelling its own record gives.
        if str(change.id) != str(ref.id):
            s.outcome = RETRY
            s.reason = f"fetched record has id {change.id!r}, not the {ref.id!r} the event named"
            log.warning("event %s: %s %r: %s; will retry", ref.event_id, ref.resource, ref.id, s.reason)
            if self._metrics is not None:
                self._metrics.fetch_id_mismatches.inc()
            return
        s.change = Change(
            change.resource, change.id, change.version, change.updated_at, change.data, "fetch",
            ref.event_id, ref.event_type,
        )  # fmt: skip


def load_inbox(store: Store, after_seq: int, limit: int) -> list[Pending]:
    rows = store.conn.execute(
        "SELECT seq, event_id, received_at, body FROM _inbox WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [Pending(event_id, received_at, bytes(body), seq=seq) for seq, event_id, received_at, body in rows]


def settle(store: Store, settled: Sequence[Settled], now: float) -> list[str]:
    """Apply, record outcomes, dead-letter and dequeue, all in one transaction. Events left
    with RETRY are not touched. Returns each event's outcome."""
    # Inbox rows can be applied again if this commit is lost; a dead letter's replay cannot.
    from_inbox = all(s.item.seq is not None for s in settled)
    with replayable_transaction(store) if from_inbox else store.db.atomic():
        done = [s for s in settled if s.outcome != RETRY]
        changes = [s for s in done if s.change is not None]
        if changes:
            result = apply_batch(
                store, [s.change for s in changes if s.change is not None], synced_at=format_epoch()
            )
            for i, (s, outcome) in enumerate(zip(changes, result.outcomes, strict=True)):
                s.outcome = outcome.value
                if i in result.reasons:
                    s.reason = result.reasons[i]
        event_rows: list[tuple[Any, ...]] = []
        for s in done:
            item = s.item
            version = s.change.version if s.change is not None else s.version
            if s.outcome == INVALID and item.dead_letter_id is None:
                store.add_dead_letter(
                    item.event_id,
                    s.event_type,
                    item.received_at,
                    s.reason or "",
                    item.body,
                    resource=s.resource,
                    record_id=s.record_id,
                )
            if item.dead_letter_id is not None:
                # A replay still invalid says why now: a newer syncd may refuse it for
                # another reason than the one that first made it a dead letter.
                store.conn.execute(
                    "UPDATE _dead_letters SET replayed_at=?, replay_outcome=?,"
                    " reason=COALESCE(?, reason) WHERE id=?",
                    (now, s.outcome, s.reason if s.outcome == INVALID else None, item.dead_letter_id),
                )
            if item.event_id is not None:
                event_rows.append(
                    (s.outcome, s.event_type, s.resource, s.record_id, version, now, item.event_id)
                )
        store.conn.executemany(
            "UPDATE _events SET outcome=?, event_type=COALESCE(?, event_type), resource=COALESCE(?, resource),"
            " record_id=?, version=?, processed_at=? WHERE event_id=?",
            event_rows,
        )
        store.conn.executemany(
            "DELETE FROM _inbox WHERE seq=?", [(s.item.seq,) for s in done if s.item.seq is not None]
        )
    return [s.outcome or RETRY for s in settled]


def _count_inbox(store: Store) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM _inbox").fetchone()[0])


class InboxWorker:
    """Drains `_inbox` into the reconciler until stopped. Woken by the inbox after commits."""

    def __init__(
        self,
        writer: Writer,
        client: RecordFetcher | None,
        *,
        fetch_thin: bool,
        metrics: Metrics | None = None,
        batch: int = 500,
        idle_timeout: float = 1.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        busy_interval: float = 0.01,
        busy_rows: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._busy_interval = busy_interval
        self._busy_rows = busy_rows
        self._processor = EventProcessor(client, fetch_thin=fetch_thin, clock=clock, metrics=metrics)
        self._metrics = metrics
        self._batch = batch
        self._idle_timeout = idle_timeout
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopped = False
        self._after_seq = 0
        self._retry_at: float | None = None
        self._failed_rounds = 0
        #: Events by outcome since start (the fallback logic reads how many webhooks applied).
        self.counts: Counter[str] = Counter()
        self.processed = 0
        #: Transactions the worker has settled events in.
        self.batches = 0

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        self._stopped = False
        if self._metrics is not None:
            self._metrics.inbox_depth.set(await self._writer.run(_count_inbox))
        while not self._stopped:
            self._wake.clear()
            if self._retry_at is not None and self._clock() >= self._retry_at:
                self._after_seq, self._retry_at = 0, None
            try:
                rows = await self._writer.run(load_inbox, self._after_seq, self._batch)
                if rows:
                    await self._process(rows)
                    if self._busy_rows <= len(rows) < self._batch and self._busy_interval > 0:
                        # A burst (many rows since the last look): let the next rows gather
                        # for a moment so the next batch is larger. Fewer, larger
                        # transactions leave the writer (and the GIL) to acknowledgements.
                        # A steady trickle (a few rows per commit) is applied at once.
                        await asyncio.sleep(self._busy_interval)
                    continue
            except Exception:
                # The rows stay in the inbox; try again after a pause rather than spin.
                log.exception("inbox worker: processing a batch failed; retrying in %.1fs", self._retry_delay)
                await self._sleep(self._retry_delay)
                continue
            timeout = self._idle_timeout
            if self._retry_at is not None:
                timeout = min(timeout, max(0.0, self._retry_at - self._clock()))
            await self._sleep(timeout)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def drain(self) -> None:
        """Process everything in the inbox now (for `syncd replay`, tests and shutdown)."""
        self._after_seq = 0
        while rows := await self._writer.run(load_inbox, self._after_seq, self._batch):
            await self._process(rows)

    async def _process(self, rows: list[Pending]) -> None:
        settled = await self._processor.prepare(rows)
        now = self._clock()
        outcomes = await self._writer.run(settle, settled, now)
        self._processor.committed(settled)
        self.batches += 1
        self._after_seq = max(self._after_seq, rows[-1].seq or 0)
        retries = outcomes.count(RETRY)
        if retries:
            self._failed_rounds += 1
            delay = min(self._max_retry_delay, self._retry_delay * 2 ** (self._failed_rounds - 1))
            if self._retry_at is None:
                self._retry_at = self._clock() + delay
        elif any(s.change is not None and s.change.source == "fetch" for s in settled):
            self._failed_rounds = 0
        # Latency runs to the commit that made the change visible, not to when it was planned.
        self._record(settled, outcomes, self._clock())

    def _record(self, settled: Iterable[Settled], outcomes: Sequence[str], now: float) -> None:
        done = [o for o in outcomes if o != RETRY]
        self.counts.update(done)
        self.processed += len(done)
        m = self._metrics
        if m is None:
            return
        m.inbox_depth.dec(len(done))
        # Counted per batch: a labelled child costs a lock and a lookup per increment.
        events: Counter[str] = Counter()
        records: Counter[tuple[str, str]] = Counter()
        for s, outcome in zip(settled, outcomes, strict=True):
            if outcome == RETRY:
                continue
            events[outcome] += 1
            if s.change is not None:
                records[(s.change.source, outcome)] += 1
                m.event_to_mirror.observe(max(0.0, now - s.item.received_at))
        for outcome, n in events.items():
            m.events.labels(outcome=outcome).inc(n)
        for (source, outcome), n in records.items():
            m.records.labels(source=source, outcome=outcome).inc(n)
        if events[INVALID]:
            m.dead_letters.inc(events[INVALID])


# -- dead letters ----------------------------------------------------------------------------


def load_dead_letters(store: Store, ids: Sequence[int] | None) -> list[Pending]:
    """Dead letters to replay: the given ids, or every open one (the definition `syncd
    status` counts by, see OPEN_DEAD_LETTER_SQL)."""
    head = "SELECT id, event_id, received_at, body, source, resource FROM _dead_letters"
    if ids:
        marks = ",".join("?" * len(ids))
        sql = f"{head} WHERE id IN ({marks}) ORDER BY id"
        params: Sequence[Any] = list(ids)
    else:
        sql = f"{head} WHERE {OPEN_DEAD_LETTER_SQL} ORDER BY id"
        params = ()
    return [
        Pending(
            event_id,
            received_at,
            bytes(body),
            dead_letter_id=dl_id,
            resource=resource if source == "poll" else None,
        )
        for dl_id, event_id, received_at, body, source, resource in store.conn.execute(sql, params)
    ]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    dead_letter_id: int
    event_id: str | None
    outcome: str
    reason: str | None
    resource: str | None = None
    record_id: str | None = None


async def replay_dead_letters(
    writer: Writer,
    client: RecordFetcher | None,
    *,
    fetch_thin: bool,
    ids: Sequence[int] | None = None,
    clock: Callable[[], float] = time.time,
) -> list[ReplayResult]:
    """Re-parse and re-apply dead letters through the worker's own logic. Ones still invalid
    stay dead letters (marked with the replay's outcome); a failed fetch leaves them as they were."""
    letters = await writer.run(load_dead_letters, ids)
    if not letters:
        return []
    settled = await EventProcessor(client, fetch_thin=fetch_thin).prepare(letters)
    outcomes = await writer.run(settle, settled, clock())
    return [
        ReplayResult(s.item.dead_letter_id or 0, s.item.event_id, outcome, s.reason, s.resource, s.record_id)
        for s, outcome in zip(settled, outcomes, strict=True)
    ]
