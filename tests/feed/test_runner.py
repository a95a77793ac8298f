import asyncio
import random
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.core.changes import Change, ChangeKind, ChangeSource, matches, new_change
from syncd.feed.base import SinkError
from syncd.feed.log import ConnectionChangeLog, WriterChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import Backoff, DeliveryReport, OnFailure, SinkRunner, Start
from syncd.store import changelog
from syncd.store.db import Store
from syncd.store.writer import Writer

from .support import FakeClock, append_orders, append_orders_on, open_log, until

T = TypeVar("T")


class MemorySink:
    """Accepts everything unless `fail(batch)` says why not."""

    def __init__(
        self, name: str = "mem", fail: Callable[[Sequence[Change]], str | None] | None = None
    ) -> None:
        self.name = name
        self.batches: list[list[int]] = []
        self._fail = fail

    async def deliver(self, batch: Sequence[Change]) -> None:
        reason = self._fail(batch) if self._fail else None
        if reason is not None:
            raise SinkError(self.name, reason)
        self.batches.append([c.seq for c in batch])

    @property
    def seqs(self) -> list[int]:
        return [s for batch in self.batches for s in batch]


async def drive(runner: SinkRunner, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(runner.run())
    try:
        await until(done)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def make(
    sink: MemorySink, log: Any, clock: FakeClock, notifier: ChangeNotifier | None = None, **kw: Any
) -> SinkRunner:
    return SinkRunner(sink, log, notifier or ChangeNotifier(), sleep=clock.sleep, clock=clock.time, **kw)


async def test_a_first_seen_sink_starts_at_the_head(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    notifier = ChangeNotifier()
    append_orders(conn, range(1, 6))
    sink = MemorySink()
    runner = make(sink, log, FakeClock(), notifier)
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.state.delivered == 5)
    # Its start was committed at once: a restart now would not skip what comes next.
    assert changelog.offset(conn, "mem") == 5
    append_orders(conn, [6, 7], notifier=notifier)
    await until(lambda: runner.state.delivered == 7)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.seqs == [6, 7]


async def test_start_beginning_takes_everything_the_log_holds(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    append_orders(conn, range(1, 6))
    changelog.prune(conn, before_at="9999", keep_after_seq=2)
    sink = MemorySink()
    runner = make(sink, log, FakeClock(), start=Start.BEGINNING)
    await drive(runner, lambda: runner.state.delivered == 5)
    assert sink.seqs == [3, 4, 5]


async def test_an_existing_offset_wins_over_start(db: tuple[sqlite3.Connection, ConnectionChangeLog]) -> None:
    conn, log = db
    append_orders(conn, range(1, 6))
    changelog.set_offset(conn, "mem", 3)
    sink = MemorySink()
    runner = make(sink, log, FakeClock(), start=Start.BEGINNING)
    await drive(runner, lambda: runner.state.delivered == 5)
    assert sink.seqs == [4, 5]


async def test_events_filter_skips_but_advances(db: tuple[sqlite3.Connection, ConnectionChangeLog]) -> None:
    conn, log = db
    append_orders(conn, range(1, 4))
    sink = MemorySink()
    runner = make(sink, log, FakeClock(), start=Start.BEGINNING, events=["customer.*"])
    await drive(runner, lambda: runner.state.delivered == 3)
    assert sink.seqs == []
    assert changelog.offset(conn, "mem") == 3

    matching = MemorySink("orders")
    runner = make(matching, log, FakeClock(), start=Start.BEGINNING, events=["order.created"], batch_size=2)
    await drive(runner, lambda: runner.state.delivered == 3)
    assert matching.batches == [[1, 2], [3]]


async def test_one_batch_in_flight_and_in_seq_order(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    notifier = ChangeNotifier()
    append_orders(conn, range(1, 51))
    in_flight = 0
    peak = 0
    seen: list[int] = []

    class SlowSink(MemorySink):
        async def deliver(self, batch: Sequence[Change]) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0)
            append_orders(conn, [1000 + len(seen)], notifier=notifier)  # the writer keeps writing
            seen.extend(c.seq for c in batch)
            in_flight -= 1

    sink = SlowSink()
    runner = make(sink, log, FakeClock(), notifier, start=Start.BEGINNING, batch_size=7)
    await drive(runner, lambda: len(seen) >= 80)
    assert peak == 1
    assert seen == list(range(1, len(seen) + 1))


async def test_the_next_batch_is_read_while_one_is_delivered(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 31))
    reads: list[int] = []

    class Log(ConnectionChangeLog):
        async def read_after(self, seq: int, limit: int) -> Sequence[Change]:
            reads.append(seq)
            return await super().read_after(seq, limit)

    read_during: list[list[int]] = []

    class Watching(MemorySink):
        async def deliver(self, batch: Sequence[Change]) -> None:
            await asyncio.sleep(0)  # the read ahead runs while the batch is in flight
            read_during.append(list(reads))
            await super().deliver(batch)

    sink = Watching()
    runner = make(sink, Log(conn), FakeClock(), start=Start.BEGINNING, batch_size=10)
    await drive(runner, lambda: len(sink.seqs) == 30)
    assert sink.batches == [list(range(1, 11)), list(range(11, 21)), list(range(21, 31))]
    # While batch k was delivered, the batch after it had been asked for.
    assert [during[-1] for during in read_during] == [10, 20, 30]
    # Each batch was read once: the read ahead is the next batch's read, not an extra one.
    assert reads[:4] == [0, 10, 20, 30]


async def test_a_change_committed_after_an_empty_read_ahead_is_not_missed(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    notifier = ChangeNotifier()
    append_orders(conn, range(1, 4))
    appended = False

    class Appending(MemorySink):
        async def deliver(self, batch: Sequence[Change]) -> None:
            nonlocal appended
            for _ in range(3):
                await asyncio.sleep(0)  # the read ahead has found nothing after this batch
            if not appended:
                appended = True
                append_orders(conn, [100], notifier=notifier)
            await super().deliver(batch)

    sink = Appending()
    # No re-check of the log within the test: only the notification can bring seq 4.
    runner = make(sink, log, FakeClock(), notifier, start=Start.BEGINNING, recheck=3600)
    await drive(runner, lambda: sink.seqs == [1, 2, 3, 4])
    assert sink.batches == [[1, 2, 3], [4]]


async def test_log_errors_are_retried_like_delivery_failures(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 4))

    class FlakyLog(ConnectionChangeLog):
        failures = 2

        async def set_offset(self, sink: str, seq: int) -> None:
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("database is locked")
            await super().set_offset(sink, seq)

    flaky = FlakyLog(conn)
    sink = MemorySink()
    clock = FakeClock()
    runner = make(sink, flaky, clock)
    await drive(runner, lambda: changelog.offset(conn, "mem") is not None)
    assert len(clock.delays) == 2
    assert runner.state.last_error is not None
    assert "database is locked" in runner.state.last_error
    # A busy store is not the change's fault: it does not count towards max_attempts.
    assert runner.state.attempts == 0


async def test_unexpected_exceptions_from_a_sink_are_failures(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    append_orders(conn, [1])
    calls = 0

    class BuggySink(MemorySink):
        async def deliver(self, batch: Sequence[Change]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise KeyError("oops")
            await super().deliver(batch)

    sink = BuggySink()
    runner = make(sink, log, FakeClock(), start=Start.BEGINNING)
    await drive(runner, lambda: runner.state.delivered == 1)
    assert sink.seqs == [1]
    assert runner.state.last_error == "KeyError: 'oops'"


async def test_reports_for_metrics(db: tuple[sqlite3.Connection, ConnectionChangeLog]) -> None:
    conn, log = db
    append_orders(conn, range(1, 4))
    reports: list[DeliveryReport] = []
    sink = MemorySink(fail=lambda batch: "down" if len(reports) < 1 else None)
    runner = make(sink, log, FakeClock(), start=Start.BEGINNING, on_report=reports.append)
    await drive(runner, lambda: runner.state.delivered == 3)
    assert [(r.outcome, r.changes) for r in reports] == [("failed", 3), ("delivered", 1), ("delivered", 2)]


async def test_a_down_sink_with_skip_dead_letters_each_change(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    append_orders(conn, range(1, 4))
    sink = MemorySink(fail=lambda batch: "connection refused")
    runner = make(sink, log, FakeClock(), start=Start.BEGINNING, on_failure=OnFailure.SKIP, max_attempts=1)
    await drive(runner, lambda: runner.state.delivered == 3)
    assert [d.seq for d in changelog.sink_dead_letters(conn, "mem")] == [1, 2, 3]
    assert runner.state.dead_letters == 3


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(7)
    backoff = Backoff()
    delays = [backoff.delay(n, rng) for n in range(1, 30)]
    for n, delay in enumerate(delays, start=1):
        base = min(300.0, 2.0 ** (n - 1))
        assert base <= delay <= min(300.0, base * 1.25)
    assert delays[-1] == 300.0
    assert backoff.delay(10_000, rng) == 300.0


def test_invalid_settings_are_refused() -> None:
    notifier = ChangeNotifier()
    with pytest.raises(ValueError, match="max_attempts"):
        SinkRunner(MemorySink(), ConnectionChangeLog(sqlite3.connect(":memory:")), notifier, max_attempts=0)
    with pytest.raises(ValueError, match="'sometimes'"):
        SinkRunner(
            MemorySink(), ConnectionChangeLog(sqlite3.connect(":memory:")), notifier, on_failure="sometimes"
        )


async def test_notifier_wakes_every_waiter_and_loses_nothing() -> None:
    notifier = ChangeNotifier()
    generation = notifier.generation
    notifier.notify()  # between a waiter's read and its wait
    assert await notifier.wait(generation, 30)
    generation = notifier.generation
    waiters = [asyncio.create_task(notifier.wait(generation, 30)) for _ in range(3)]
    await asyncio.sleep(0)
    threading.Thread(target=notifier.notify_threadsafe).start()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert not await notifier.wait(notifier.generation, 0.01)


async def test_writer_change_log(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    setup, _ = open_log(path)
    append_orders(setup, range(1, 4))
    setup.close()
    # Stands in for the store writer: one connection, used from its own thread.
    writer_conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    writes = 0
    in_flight = 0
    overlapped = 0

    async def on_writer(fn: Callable[[sqlite3.Connection], T]) -> T:
        # Like the store writer, work must reach it one call at a time; a runner that
        # issued a second write before the first finished would show as an overlap here
        # (the yields give such a second write the chance to start).
        nonlocal writes, in_flight, overlapped
        writes += 1
        in_flight += 1
        overlapped += in_flight > 1
        try:
            for _ in range(5):
                await asyncio.sleep(0)
            return await asyncio.to_thread(fn, writer_conn)
        finally:
            in_flight -= 1

    log = WriterChangeLog(on_writer, reader)
    sink = MemorySink(fail=lambda batch: "poison" if any(c.seq == 2 for c in batch) else None)
    runner = make(sink, log, FakeClock(), start=Start.BEGINNING, on_failure=OnFailure.SKIP, max_attempts=2)
    await drive(runner, lambda: runner.state.delivered == 3)
    assert sink.seqs == [1, 3]
    assert changelog.offset(reader, "mem") == 3
    assert [d.seq for d in changelog.sink_dead_letters(reader, "mem")] == [2]
    assert writes > 0
    assert overlapped == 0
    reader.close()
    writer_conn.close()


def append_mixed(conn: sqlite3.Connection, ids: range) -> None:
    """Orders for even ids, customers for odd ones (events order.created and customer.registered)."""
    batch = [
        new_change(
            mirror="m",
            resource="orders" if rid % 2 == 0 else "customers",
            record_id=rid if rid % 2 == 0 else f"c{rid}",
            kind=ChangeKind.CREATED,
            source=ChangeSource.POLL,
            data={"id": rid},
            version=1,
            previous=None,
            previous_version=None,
            at="2026-12-01T10:00:00.000Z",
        )
        for rid in ids
    ]
    conn.execute("BEGIN")
    changelog.append(conn, batch)
    conn.execute("COMMIT")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(min_value=1, max_value=40),
    batch_size=st.integers(min_value=1, max_value=8),
    failures=st.lists(st.booleans(), max_size=30),
    events=st.sampled_from([["*"], ["order.*"], ["customer.registered"], ["nothing.*"]]),
    restart_after=st.integers(min_value=0, max_value=40),
    max_attempts=st.integers(min_value=1, max_value=4),
    on_failure=st.sampled_from(list(OnFailure)),
)
def test_every_matching_change_arrives_at_least_once_in_order(
    count: int,
    batch_size: int,
    failures: list[bool],
    events: list[str],
    restart_after: int,
    max_attempts: int,
    on_failure: OnFailure,
) -> None:
    async def scenario(path: Path) -> None:
        conn, log = open_log(path)
        append_mixed(conn, range(count))
        script = list(failures)
        received: list[list[int]] = [[]]

        def fail(batch: Sequence[Change]) -> str | None:
            return "down" if script and script.pop(0) else None

        class Recording(MemorySink):
            async def deliver(self, batch: Sequence[Change]) -> None:
                await super().deliver(batch)
                received[-1].extend(c.seq for c in batch)

        wanted = [c.seq for c in changelog.read_after(conn, 0, 1000) if matches(c.event, events)]
        for phase in (0, 1):
            sink = Recording("s", fail)
            runner = make(
                sink,
                log,
                FakeClock(),
                start=Start.BEGINNING,
                events=events,
                batch_size=batch_size,
                max_attempts=max_attempts,
                on_failure=on_failure,
            )
            if phase == 0:
                # A restart (the task cancelled wherever it is) after some deliveries.
                await drive(
                    runner,
                    lambda r=runner: (
                        len(received[0]) >= min(restart_after, len(wanted)) or r.state.delivered == count
                    ),
                )
                received.append([])
            else:
                await drive(runner, lambda r=runner: r.state.delivered == count)
        dead = [d.seq for d in changelog.sink_dead_letters(conn, "s")]
        conn.close()
        for segment in received:
            assert segment == sorted(set(segment))  # in seq order, no repeats within a run
        first_seen = list(dict.fromkeys(s for segment in received for s in segment))
        # Every matching change, none other: delivered, or (skip only) in the dead letters.
        assert sorted(set(first_seen) | set(dead)) == wanted
        assert first_seen == sorted(first_seen)  # a restart resumes, it never jumps ahead
        if on_failure is OnFailure.BLOCK:
            assert dead == []

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "mirror.db"))


async def test_changes_pruned_past_a_sink_are_reported(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], caplog: pytest.LogCaptureFixture
) -> None:
    conn, log = db
    append_orders(conn, range(1, 6))
    changelog.set_offset(conn, "mem", 1)
    changelog.prune(conn, before_at="9999", keep_after_seq=3)  # as if the sink had been forgotten
    sink = MemorySink()
    runner = make(sink, log, FakeClock())
    with caplog.at_level("WARNING", logger="syncd.feed"):
        await drive(runner, lambda: runner.state.delivered == 5)
    assert sink.seqs == [4, 5]
    assert "changes 2 to 3 were pruned" in caplog.text


async def test_with_the_store_writer(tmp_path: Path) -> None:
    # The wiring the daemon uses: writes through the store's writer thread, reads on a
    # read-only connection, the writer notifying after its commit.
    path = tmp_path / "mirror.db"
    writer = Writer(lambda: Store(path))
    writer.start()
    try:
        notifier = ChangeNotifier()

        def append_in_transaction(store: Store, ids: range) -> None:
            with store.db.atomic():
                append_orders_on(store.conn, ids)
            notifier.notify_threadsafe()

        await writer.run(lambda store: changelog.create_tables(store.conn))
        reader = Store.open_reader(path)
        log = WriterChangeLog(lambda fn: writer.run(lambda store: fn(store.conn)), reader)
        sink = MemorySink()
        runner = make(sink, log, FakeClock(), notifier, start=Start.HEAD)
        task = asyncio.create_task(runner.run())
        await until(lambda: runner.state.delivered == 0)
        await writer.run(append_in_transaction, range(1, 4))
        await until(lambda: runner.state.delivered == 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sink.seqs == [1, 2, 3]
        assert changelog.offset(reader, "mem") == 3
        reader.close()
    finally:
        writer.stop()
