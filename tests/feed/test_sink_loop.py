"""The sinks' own event loop (`SinkLoop`): a runner on it is woken across threads by the
store's writer committing changes, work handed over returns its result or error and is
cancelled with its caller, halting lets a runner finish or cancels it, and stopping the
loop cancels what is left and ends the thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from syncd.core.changes import Change
from syncd.core.records import Change as RecordChange
from syncd.feed.log import WriterChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import SinkRunner, Start
from syncd.feed.sink_loop import SinkLoop
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.writer import Writer

from .support import until

#: Longer than any test: a runner wakes only because it was notified, never by re-checking.
NO_RECHECK = 3600.0


@dataclass
class ThreadNotingSink:
    """Takes every batch, noting the thread and loop each delivery ran on; with `hang`,
    holds every delivery until cancelled."""

    name: str = "app"
    hang: bool = False
    delivered: list[Change] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    loops: set[asyncio.AbstractEventLoop] = field(default_factory=set)
    cancelled: threading.Event = field(default_factory=threading.Event)
    closed_on: list[str] = field(default_factory=list)

    async def deliver(self, batch: Sequence[Change]) -> None:
        self.threads.add(threading.current_thread().name)
        self.loops.add(asyncio.get_running_loop())
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        self.delivered.extend(batch)

    async def until_delivered(self, count: int) -> None:
        await until(lambda: len(self.delivered) == count)

    async def aclose(self) -> None:
        self.closed_on.append(threading.current_thread().name)


@dataclass
class Feed:
    writer: Writer
    reader: sqlite3.Connection
    loop: SinkLoop
    notifier: ChangeNotifier
    log: WriterChangeLog

    async def apply_orders(self, ids: range) -> None:
        batch = [
            RecordChange("orders", rid, 1, "2026-12-01T09:00:00.000Z", {"id": rid, "version": 1}, "webhook")
            for rid in ids
        ]
        await self.writer.run(lambda store: apply_batch(store, batch, synced_at="2026-12-01T09:00:01.000Z"))

    def runner(self, sink: ThreadNotingSink) -> SinkRunner:
        return SinkRunner(sink, self.log, self.notifier, start=Start.BEGINNING, recheck=NO_RECHECK)


@asynccontextmanager
async def open_feed(path: Path) -> AsyncIterator[Feed]:
    """The daemon's wiring: the writer wakes a notifier bound to the sinks' loop."""
    writer = Writer(lambda: Store(path))
    writer.start()
    loop = SinkLoop()
    loop.start()
    notifier = ChangeNotifier(loop.loop)
    await writer.run(lambda store: store.recorder.add_listener(notifier.notify_threadsafe))
    reader = Store.open_reader(path)
    try:
        yield Feed(
            writer,
            reader,
            loop,
            notifier,
            WriterChangeLog(lambda fn: writer.run(lambda s: fn(s.conn)), reader),
        )
    finally:
        await writer.run(lambda store: store.recorder.remove_listener(notifier.notify_threadsafe))
        await loop.stop()
        reader.close()
        writer.stop()


async def test_the_writers_commits_wake_a_runner_on_the_sinks_loop(tmp_path: Path) -> None:
    async with open_feed(tmp_path / "mirror.db") as feed:
        sink = ThreadNotingSink()
        runner = feed.runner(sink)
        task = await feed.loop.spawn(runner)
        await until(lambda: runner.state.delivered == 0)
        # Woken for each commit, from the writer's thread onto the sinks' loop; the runner
        # never re-checks the log on its own within the test.
        for last in (10, 20, 30):
            await feed.apply_orders(range(last - 9, last + 1))
            await sink.until_delivered(last)
        assert [c.record_id for c in sink.delivered] == list(range(1, 31))
        assert sink.threads == {"syncd-sinks"}
        assert sink.loops == {feed.loop.loop}
        assert task.get_loop() is feed.loop.loop is not asyncio.get_running_loop()
        await feed.loop.halt([(runner, task)], 10.0)
        assert task.done()
        assert not task.cancelled()
        # A clean stop lands the last offset before the runner returns.
        assert changelog.offset(feed.reader, "app") == changelog.head(feed.reader) == 30
        await feed.loop.close(sink)
        assert sink.closed_on == ["syncd-sinks"]


async def test_halting_cancels_a_delivery_that_outlasts_its_grace(tmp_path: Path) -> None:
    async with open_feed(tmp_path / "mirror.db") as feed:
        await feed.apply_orders(range(1, 4))
        sink = ThreadNotingSink(hang=True)
        runner = feed.runner(sink)
        task = await feed.loop.spawn(runner)
        await until(lambda: bool(sink.threads))
        await feed.loop.halt([(runner, task)], 0.05)
        assert task.done()
        assert sink.cancelled.is_set()
        # Nothing was delivered, so nothing is skipped: the next runner starts over.
        assert changelog.offset(feed.reader, "app") == 0


async def test_work_handed_over_returns_its_result_or_error_and_is_cancelled_with_its_caller() -> None:
    loop = SinkLoop()
    loop.start()
    try:

        async def where() -> str:
            return threading.current_thread().name

        assert await loop.run(where()) == "syncd-sinks"

        async def fails() -> None:
            raise ValueError("from the sinks' loop")

        with pytest.raises(ValueError, match="from the sinks' loop"):
            await loop.run(fails())

        started, cancelled = threading.Event(), threading.Event()

        async def waits() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        caller = asyncio.create_task(loop.run(waits()))
        await until(started.is_set)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await until(cancelled.is_set)
    finally:
        await loop.stop()


async def test_stopping_cancels_what_is_left_and_ends_the_thread(tmp_path: Path) -> None:
    async with open_feed(tmp_path / "mirror.db") as feed:
        sink = ThreadNotingSink()
        runner = feed.runner(sink)
        task = await feed.loop.spawn(runner)
        await until(lambda: runner.state.delivered == 0)
        assert feed.loop.running
        await feed.loop.stop()
        assert not feed.loop.running
        assert "syncd-sinks" not in {t.name for t in threading.enumerate()}
        assert task.cancelled()
        assert feed.loop.loop.is_closed()
        # A closed loop takes no more work, and says so.
        with pytest.raises(RuntimeError):
            await feed.loop.run(asyncio.sleep(0))
        # The writer's wake-ups after the loop closed are dropped, not raised on its thread.
        await feed.apply_orders(range(1, 3))
        await feed.loop.stop()
