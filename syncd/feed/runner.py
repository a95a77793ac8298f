"""Delivering the change log to one sink: `SinkRunner`, woken by the `ChangeNotifier`
(syncd.feed.notifier) the store's writer sets after committing changes.

Guarantees. A runner delivers the changes matching its sink's `events` in seq order, one
batch in flight, and commits its offset only after the sink accepted them, so a restart
resumes at the first change not known to be delivered (at least once; a redelivery has the
same seq, hence the same webhook-id). Changes that do not match are skipped, but the offset
moves past them. A failing change is retried with exponential backoff and jitter; with
`on_failure="block"` forever, keeping the order; with `"skip"` it goes to the sink's dead
letters after `max_attempts` and the runner goes on. Each sink has its own runner (task):
one slow or failing sink never delays the mirror or another sink.

Time. The backoff waits through an injectable `sleep` and status times come from an
injectable `clock`, so tests run hours of outage without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from syncd.core.changes import Change, matches
from syncd.feed.base import ChangeLog, DeliveryState, Sink, SinkError, SinkState
from syncd.feed.notifier import ChangeNotifier

log = logging.getLogger("syncd.feed")

Sleep = Callable[[float], Awaitable[None]]


class OnFailure(StrEnum):
    BLOCK = "block"
    SKIP = "skip"


class Start(StrEnum):
    HEAD = "head"  # a first-seen sink takes changes committed after it was added
    BEGINNING = "beginning"  # ... or everything the log still holds


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry `attempt` (1 for the first retry): `initial * 2**(attempt-1)`,
    plus up to `jitter` of itself at random (so sinks failing together do not retry in
    lockstep), never more than `maximum`."""

    initial: float = 1.0
    maximum: float = 300.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = self.initial * 2.0 ** min(max(attempt - 1, 0), 60)
        return min(self.maximum, base * (1.0 + self.jitter * rng.random()))


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One delivery attempt, for metrics: `outcome` is delivered, failed or dead_lettered."""

    sink: str
    outcome: str
    changes: int
    seconds: float


#: Seconds between re-checks of the log when no notification came: a safety net for a
#: notification lost (another process appending, a missed call), not the normal path.
DEFAULT_RECHECK: Final = 5.0


class SinkRunner:
    """Feeds `sink` from `changelog`, one batch of up to `batch_size` changes at a time."""

    def __init__(
        self,
        sink: Sink,
        changelog: ChangeLog,
        notifier: ChangeNotifier,
        *,
        events: Sequence[str] = ("*",),
        on_failure: OnFailure | str = OnFailure.BLOCK,
        max_attempts: int = 10,
        batch_size: int = 100,
        start: Start | str = Start.HEAD,
        backoff: Backoff = Backoff(),
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        recheck: float = DEFAULT_RECHECK,
        on_report: Callable[[DeliveryReport], None] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"sink {sink.name!r}: max_attempts must be >= 1, got {max_attempts}")
        if batch_size < 1:
            raise ValueError(f"sink {sink.name!r}: batch_size must be >= 1, got {batch_size}")
        self.sink = sink
        self._log = changelog
        self._notifier = notifier
        self.events = tuple(events)
        self.on_failure = OnFailure(on_failure)
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.start = Start(start)
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._recheck = recheck
        self._on_report = on_report
        self._state = SinkState(sink.name)
        self._offset: int | None = None
        # Matching changes read but not yet delivered, and the seq the offset moves to once
        # they are (the last one read, past any trailing non-matching ones).
        self._pending: list[Change] = []
        self._pending_end = 0
        self._stopping = False
        #: The offset write in flight (see `_commit`).
        self._committing: asyncio.Future[None] | None = None
        #: The read of the batch after the one being delivered: (after seq, the notifier's
        #: generation before it, the read).
        self._next: tuple[int, int, asyncio.Future[Sequence[Change]]] | None = None
        self._log_failures = 0

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def state(self) -> SinkState:
        return self._state

    def stop(self) -> None:
        """Ask `run()` to return after the step in progress (cancelling the task also works;
        either way an undelivered batch is simply delivered again next time)."""
        self._stopping = True
        self._notifier.notify()

    async def run(self) -> None:
        """Deliver until stopped or cancelled."""
        try:
            while not self._stopping:
                await self.step()
        except asyncio.CancelledError:
            self._drop_next()
            # The offset write in flight is for changes already delivered: let it land, so
            # a new runner does not deliver them again.
            if self._committing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._committing)
            raise
        self._drop_next()
        await self._flush_offset()

    async def _open(self) -> int:
        offset = await self._log.offset(self.name)
        if offset is None:
            offset = 0 if self.start is Start.BEGINNING else await self._log.head()
            # Committed at once: a restart before the first delivery must not move the start
            # to a later head and lose what was committed in between.
            await self._log.set_offset(self.name, offset)
            log.info("sink %s: first seen, starting after seq %d (%s)", self.name, offset, self.start.value)
        else:
            head = await self._log.head()
            if offset > head:
                # Only a reset past the head does this; new changes below it would be skipped.
                log.warning("sink %s: offset %d is past the log's head %d", self.name, offset, head)
        self._state = replace(self._state, delivered=offset)
        return offset

    async def step(self) -> None:
        """One unit of work: read the next batch (or wait for one), deliver it, or wait out a
        backoff. Errors of the log (the store) are retried like delivery failures."""
        try:
            if self._offset is None:
                self._offset = await self._open()
            if not self._pending:
                await self._read_or_wait()
            else:
                await self._attempt()
        except Exception as exc:
            await self._log_failed(exc)
            return
        if self._log_failures:
            self._log_failures = 0
            if self._state.attempts == 0:
                self._state = replace(self._state, state=DeliveryState.OK, next_attempt_at=None)

    def _drop_next(self) -> None:
        if self._next is not None:
            read = self._next[2]
            self._next = None
            if read.done() and not read.cancelled():
                # Its error, if any, is the next read's to meet; it is retrieved here.
                read.exception()
            read.cancel()

    async def _read_or_wait(self) -> None:
        assert self._offset is not None
        ahead = self._next
        if ahead is not None and ahead[0] == self._offset:
            # Read while the batch before was delivered: what the log held after it then.
            self._next = None
            generation, batch = ahead[1], await ahead[2]
        else:
            self._drop_next()  # read after an offset that has moved since (a skip, a reset)
            generation = self._notifier.generation
            batch = await self._log.read_after(self._offset, self.batch_size)
        if not batch:
            await self._notifier.wait(generation, self._recheck)
            return
        if self._offset and batch[0].seq > self._offset + 1:
            # Seqs have no holes (a rolled-back append gives its seqs back), so this is
            # pruning past the sink: say so rather than pass over it in silence. (Offset 0
            # is "from the beginning", whatever the log still holds.)
            log.warning(
                "sink %s: changes %d to %d were pruned before it took them",
                self.name,
                self._offset + 1,
                batch[0].seq - 1,
            )
        wanted = [change for change in batch if matches(change.event, self.events)]
        if not wanted:
            await self._commit(batch[-1].seq)
            return
        self._pending = wanted
        self._pending_end = batch[-1].seq

    async def _attempt(self) -> None:
        # After a failure, one change at a time: that isolates the change that fails (for a
        # batch sink that cannot say which) and keeps retries of a broken sink cheap.
        batch = self._pending if self._state.attempts == 0 else self._pending[:1]
        if self._next is None and self._state.attempts == 0:
            # The next batch is read while this one is delivered, so a sink behind the log
            # does not wait for a read between batches. Changes after `_pending_end` are
            # the same whenever they are read (the log only grows past an offset), so the
            # read is good for whenever this batch is done, however many attempts it takes.
            self._next = (
                self._pending_end,
                self._notifier.generation,
                asyncio.ensure_future(self._log.read_after(self._pending_end, self.batch_size)),
            )
        started = time.perf_counter()
        try:
            await self.sink.deliver(batch)
        except Exception as exc:
            delivered = exc.delivered if isinstance(exc, SinkError) else 0
            reason = exc.reason if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
            self._report("failed", len(batch) - delivered, started)
            if delivered > 0:
                self._report("delivered", delivered, started)
                await self._delivered(batch[:delivered])
            await self._delivery_failed(reason, None if isinstance(exc, SinkError) else exc)
            return
        self._report("delivered", len(batch), started)
        await self._delivered(batch)

    async def _delivered(self, done: Sequence[Change]) -> None:
        del self._pending[: len(done)]
        await self._commit(done[-1].seq if self._pending else self._pending_end)
        if self._state.attempts:
            log.info("sink %s: delivering again after %d failed attempts", self.name, self._state.attempts)
        self._state = replace(self._state, state=DeliveryState.OK, attempts=0, next_attempt_at=None)

    async def _commit(self, seq: int) -> None:
        # The offset is written while the next batch is read and delivered: waiting for the
        # store's writer (queued behind the mirror's synced commits) after every batch made a
        # caught-up sink as slow as that queue. Writes stay one at a time and in order, and an
        # offset is only ever written once its changes were delivered; one lost to a crash
        # means a redelivery, which at least once allows.
        await self._flush_offset()
        self._offset = seq
        self._state = replace(self._state, delivered=seq)
        self._committing = asyncio.ensure_future(self._log.set_offset(self.name, seq))

    async def _flush_offset(self) -> None:
        """Wait for the offset write in flight; its error is raised here (the step fails and
        backs off like any other error of the log)."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing

    async def _delivery_failed(self, reason: str, unexpected: BaseException | None) -> None:
        attempts = self._state.attempts + 1
        change = self._pending[0]
        if self.on_failure is OnFailure.SKIP and attempts >= self.max_attempts:
            # The dead letter also moves the offset: the write before it must land first.
            await self._flush_offset()
            await self._log.dead_letter(self.name, change, reason)
            self._report("dead_lettered", 1, time.perf_counter())
            log.warning(
                "sink %s: seq %d (%s) failed %d times, moved to dead letters: %s",
                self.name,
                change.seq,
                change.event,
                attempts,
                reason,
            )
            del self._pending[0]
            self._offset = change.seq
            self._state = replace(
                self._state,
                delivered=change.seq,
                state=DeliveryState.OK,
                attempts=0,
                last_error=reason,
                last_error_at=self._clock(),
                next_attempt_at=None,
                dead_letters=self._state.dead_letters + 1,
            )
            if not self._pending:
                await self._commit(self._pending_end)
            return
        blocked = self.on_failure is OnFailure.BLOCK and attempts >= self.max_attempts
        self._state = replace(
            self._state,
            state=DeliveryState.BLOCKED if blocked else DeliveryState.RETRYING,
            attempts=attempts,
        )
        if unexpected is not None:
            log.error("sink %s: delivery raised unexpectedly", self.name, exc_info=unexpected)
        await self._wait_backoff(reason, attempts, change)

    async def _log_failed(self, exc: Exception) -> None:
        # Counted apart from the change's own attempts: a busy store must not send a change
        # to the dead letters, nor make the sink look blocked by it.
        self._log_failures += 1
        reason = f"change log: {type(exc).__name__}: {exc}"
        if self._state.state is DeliveryState.OK:
            self._state = replace(self._state, state=DeliveryState.RETRYING)
        log.error("sink %s: %s", self.name, reason, exc_info=exc)
        await self._wait_backoff(reason, self._log_failures, None)

    async def _wait_backoff(self, reason: str, attempts: int, change: Change | None) -> None:
        delay = self._backoff.delay(attempts, self._rng)
        now = self._clock()
        self._state = replace(self._state, last_error=reason, last_error_at=now, next_attempt_at=now + delay)
        # Every failure is in status; the log gets the first ones and then one in ten, so a
        # sink down for a day does not flood it.
        if attempts <= 3 or attempts % 10 == 0:
            what = f"seq {change.seq}" if change is not None else "delivery"
            log.warning(
                "sink %s: %s failed (attempt %d), retrying in %.1f s: %s",
                self.name,
                what,
                attempts,
                delay,
                reason,
            )
        await self._sleep(delay)

    def _report(self, outcome: str, count: int, started: float) -> None:
        if self._on_report is None or count <= 0:
            return
        try:
            self._on_report(DeliveryReport(self.name, outcome, count, time.perf_counter() - started))
        except Exception:
            # Metrics must never stop deliveries.
            log.exception("sink %s: delivery report hook failed", self.name)
