"""The inbox worker: drains committed webhook deliveries into the reconciler, in order.

Each batch is read from `_inbox`, turned into changes (full events carry their snapshot,
thin events are fetched from the API), then committed in ONE transaction on the writer:
mirror writes, `_events` outcomes, dead letters and the deletion of the processed `_inbox`
rows. A crash anywhere before that commit leaves the rows in the inbox to be processed
again, and the reconciler makes the repeat harmless.

A thin event whose fetch fails stays in the inbox: the worker moves on to later rows and
comes back to the failed ones after a backoff, so an API outage delays thin events without
holding up full ones, and memory holds no per-event retry state. So does one whose fetched
record carries another id than the event named: that is the API's answer going wrong (a
proxy or cache mixing up paths), not the event, which stays good to retry.

Parsing and fetching are syncd.push.processor; re-driving dead letters is syncd.push.replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from syncd.core.records import EventOutcome
from syncd.metrics import Metrics
from syncd.push.backlog import Backlog
from syncd.push.processor import EventProcessor, InboxItem, RecordFetcher, Settled
from syncd.store import dead_letters, events
from syncd.store.apply import apply_batch
from syncd.store.db import Store, replayable_transaction
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch

log = logging.getLogger(__name__)


def load_inbox(store: Store, after_seq: int, limit: int) -> list[InboxItem]:
    return [
        InboxItem(event_id, received_at, body, seq=seq)
        for seq, event_id, received_at, body in events.load_inbox(store.conn, after_seq, limit)
    ]


def commit_outcomes(store: Store, settled: Sequence[Settled], now: float) -> list[EventOutcome]:
    """Apply, record outcomes, dead-letter and dequeue, all in one transaction. Events left
    with RETRY are not touched. Returns each event's outcome."""
    # Inbox rows can be applied again if this commit is lost; a dead letter's replay cannot.
    # Neither can a change of the log: a sink may deliver it the moment it commits, and a
    # commit lost after that would hand its seq to another change. So with the log on, the
    # commit is synced (SQLite cannot raise the sync level once the transaction has begun).
    replayable = store.recorder is None and all(s.item.seq is not None for s in settled)
    with replayable_transaction(store) if replayable else store.db.atomic():
        done = [s for s in settled if s.outcome is not EventOutcome.RETRY]
        changes = [s for s in done if s.change is not None]
        if changes:
            result = apply_batch(
                store, [s.change for s in changes if s.change is not None], synced_at=format_epoch()
            )
            for i, (s, decided) in enumerate(zip(changes, result.outcomes, strict=True)):
                s.outcome = EventOutcome(decided.value)
                if i in result.reasons:
                    s.reason = result.reasons[i]
        outcome_rows: list[events.OutcomeRow] = []
        applied_rows: list[events.AppliedRow] = []
        for s in done:
            item = s.item
            version = s.change.version if s.change is not None else s.version
            outcome = s.outcome
            if outcome is EventOutcome.INVALID and item.dead_letter_id is None:
                dead_letters.add_dead_letter(
                    store.conn,
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
                dead_letters.mark_replayed(
                    store.conn,
                    item.dead_letter_id,
                    now,
                    outcome,
                    s.reason if outcome is EventOutcome.INVALID else None,
                )
            if item.seq is not None:
                applied_rows.append((s.event_type, s.resource, s.record_id, version, outcome, now, item.seq))
            elif item.event_id is not None:
                outcome_rows.append(
                    (outcome, s.event_type, s.resource, s.record_id, version, now, item.event_id)
                )
        events.record_outcomes(store.conn, outcome_rows)
        # The inbox rows become `_events` rows (the dedupe key from now on) and leave the inbox.
        events.settle_inbox(store.conn, applied_rows)
    return [s.outcome or EventOutcome.RETRY for s in settled]


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
        backlog: Backlog | None = None,
        saturated: Callable[[], bool] | None = None,
        max_defer: float = 1.0,
        defer_check: float = 0.05,
    ) -> None:
        """`backlog` is lowered by what each batch applies. `saturated` says whether the
        receiver is saturated now (`Inbox.saturated`); while it is, the worker applies one
        batch per `max_defer` seconds at most and otherwise leaves the writer and the GIL to
        acknowledgements, looking again every `defer_check` seconds."""
        self._writer = writer
        self._backlog = backlog
        self._saturated = saturated
        self._max_defer = max_defer
        self._defer_check = defer_check
        self._last_batch_at = -math.inf
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

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        self._stopped = False
        while not self._stopped:
            self._wake.clear()
            if self._retry_at is not None and self._clock() >= self._retry_at:
                self._after_seq, self._retry_at = 0, None
            deferred = self._deferred()
            if deferred > 0:
                # Acknowledge first, apply after: a saturated receiver's deliveries wait in
                # the inbox. Not on the wake event, which every commit sets.
                await asyncio.sleep(min(deferred, self._defer_check))
                continue
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

    def _deferred(self) -> float:
        """How much longer to hold back the next batch: while the receiver is saturated,
        until `max_defer` after the last batch; otherwise 0."""
        if self._saturated is None or not self._saturated():
            return 0.0
        return max(0.0, self._last_batch_at + self._max_defer - self._clock())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def drain(self) -> None:
        """Process everything in the inbox now (for `syncd replay`, tests and shutdown)."""
        self._after_seq = 0
        while rows := await self._writer.run(load_inbox, self._after_seq, self._batch):
            await self._process(rows)

    async def _process(self, rows: list[InboxItem]) -> None:
        settled = await self._processor.prepare(rows)
        now = self._clock()
        outcomes = await self._writer.run(commit_outcomes, settled, now)
        self._last_batch_at = self._clock()
        self._processor.committed(settled)
        if self._backlog is not None:
            applied = [
                s.item
                for s, o in zip(settled, outcomes, strict=True)
                if o is not EventOutcome.RETRY and s.item.seq is not None
            ]
            self._backlog.applied(len(applied), sum(len(item.body) for item in applied))
        self._after_seq = max(self._after_seq, rows[-1].seq or 0)
        retries = outcomes.count(EventOutcome.RETRY)
        if retries:
            self._failed_rounds += 1
            delay = min(self._max_retry_delay, self._retry_delay * 2 ** (self._failed_rounds - 1))
            if self._retry_at is None:
                self._retry_at = self._clock() + delay
        elif any(s.change is not None and s.change.source == "fetch" for s in settled):
            self._failed_rounds = 0
        # Latency runs to the commit that made the change visible, not to when it was planned.
        self._record(settled, outcomes, self._clock())

    def _record(self, settled: Iterable[Settled], outcomes: Sequence[EventOutcome], now: float) -> None:
        done = [o for o in outcomes if o is not EventOutcome.RETRY]
        self.counts.update(done)
        self.processed += len(done)
        m = self._metrics
        if m is None:
            return
        # Counted per batch: a labelled child costs a lock and a lookup per increment.
        by_outcome: Counter[str] = Counter()
        records: Counter[tuple[str, str]] = Counter()
        latencies: list[float] = []
        for s, outcome in zip(settled, outcomes, strict=True):
            if outcome is EventOutcome.RETRY:
                continue
            by_outcome[outcome] += 1
            if s.change is not None:
                records[(s.change.source, outcome)] += 1
                latency = max(0.0, now - s.item.received_at)
                m.event_to_mirror.observe(latency)
                latencies.append(latency)
        m.history.latencies(now, latencies)
        for label, n in by_outcome.items():
            m.events.labels(outcome=label).inc(n)
        for (source, label), n in records.items():
            m.records.labels(source=source, outcome=label).inc(n)
        if by_outcome[EventOutcome.INVALID]:
            m.dead_letters.inc(by_outcome[EventOutcome.INVALID])
