"""The feed's delivery guarantees end to end in one process: sink runners over a
`WriterChangeLog` on a real store, fed by `apply_batch` and relists committing through the
real `Writer`, woken by the recorder's listener (`ChangeNotifier.notify_threadsafe`). Time
for backoffs is a fake clock: an hour of outage takes no real time."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from syncd.core.changes import Change, matches
from syncd.core.records import Change as RecordChange
from syncd.core.records import Source
from syncd.feed.base import DeliveryState, SinkError
from syncd.feed.log import WriterChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import Backoff, OnFailure, SinkRunner, Start
from syncd.poll.listing_guards import RelistGuard
from syncd.poll.transactions import commit_page, finish_listing
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch

from .support import FakeClock, until

HOUR = 3600.0
SOURCES: tuple[Source, ...] = ("webhook", "poll", "fetch")


# -- a store, its writer, and the log a runner reads -------------------------------------------


@dataclass
class Feed:
    writer: Writer
    reader: sqlite3.Connection
    log: WriterChangeLog
    notifier: ChangeNotifier
    generation: int = 0

    async def apply(self, batch: Sequence[RecordChange], at: float = 1_700_000_000.0) -> None:
        synced_at = format_epoch(at)
        await self.writer.run(lambda store: apply_batch(store, batch, synced_at=synced_at))

    async def relist(self, resource: str, listed: Sequence[RecordChange], at: float = 1_700_000_000.0) -> int:
        """A full relist of `resource` that shows only `listed`: the rest is tombstoned."""
        self.generation += 1
        guard = RelistGuard(self.generation, "2999-01-01T00:00:00.000Z", 0, 1.0, 0, True)

        def run(store: Store) -> int:
            commit_page(store, resource, list(listed), None, self.generation, at)
            return finish_listing(store, resource, at, len(listed), guard)[0]

        return await self.writer.run(run)

    def changes(self) -> list[Change]:
        return changelog.read_after(self.reader, 0, 1_000_000)

    def head(self) -> int:
        return changelog.head(self.reader)

    async def prune(self, *, retention: float, now: float, keep_after_seq: int) -> int:
        def run(store: Store) -> int:
            with store.db.atomic():
                return changelog.prune(
                    store.conn, before_at=format_epoch(now - retention), keep_after_seq=keep_after_seq
                )

        return await self.writer.run(run)


@asynccontextmanager
async def open_feed(path: Path) -> AsyncIterator[Feed]:
    writer = Writer(lambda: Store(path))
    writer.start()
    notifier = ChangeNotifier()
    recorder = await writer.run(lambda store: store.recorder)
    assert recorder is not None
    recorder.add_listener(notifier.notify_threadsafe)
    reader = Store.open_reader(path)
    try:
        yield Feed(
            writer, reader, WriterChangeLog(lambda fn: writer.run(lambda s: fn(s.conn)), reader), notifier
        )
    finally:
        recorder.remove_listener(notifier.notify_threadsafe)
        reader.close()
        writer.stop()


# -- a workload: orders through their statuses, customers, stock ---------------------------------


class Shop:
    """Record versions as an upstream makes them, with the copies a mix of paths delivers
    (duplicates and stale ones included)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.records: dict[tuple[str, Any], dict[str, Any]] = {}
        self.sent: list[RecordChange] = []

    def _change(self, resource: str, rid: Any, **fields: Any) -> RecordChange:
        old = self.records.get((resource, rid), {"id": rid, "version": 0})
        data = {**old, **fields, "version": old["version"] + 1}
        data["updatedAt"] = f"2026-12-01T09:{data['version'] % 60:02d}:00.000Z"
        self.records[(resource, rid)] = data
        return RecordChange(resource, rid, data["version"], data["updatedAt"], data, self.rng.choice(SOURCES))

    def step(self) -> RecordChange:
        rng = self.rng
        roll = rng.random()
        orders = [rid for (res, rid) in self.records if res == "orders"]
        if roll < 0.25 or not orders:
            return self._change("orders", len(orders) + 1, status="placed", total=rng.randint(1, 99))
        if roll < 0.6:
            nxt = {"placed": "approved", "approved": "shipped", "shipped": "completed"}
            rid = rng.choice(orders)
            status = self.records[("orders", rid)]["status"]
            new = "cancelled" if rng.random() < 0.1 else nxt.get(status, status)
            return self._change("orders", rid, status=new)
        if roll < 0.8:
            return self._change(
                "customers", f"cus_{rng.randint(1, 6)}", email=f"{rng.randint(1, 9)}@example.com"
            )
        return self._change("inventory", f"sku_{rng.randint(1, 3)}", quantity=rng.randint(0, 12), threshold=5)

    def batch(self, size: int) -> list[RecordChange]:
        """`size` new versions, plus repeats of versions already sent (same or older)."""
        out = [self.step() for _ in range(size)]
        out += self.rng.sample(self.sent, min(len(self.sent), self.rng.randint(0, 3)))
        self.sent.extend(out)
        self.rng.shuffle(out)
        return out

    def listing(self, resource: str, without: set[Any]) -> list[RecordChange]:
        return [
            RecordChange(resource, rid, data["version"], data["updatedAt"], data, "poll")
            for (res, rid), data in self.records.items()
            if res == resource and rid not in without
        ]


# -- fake sinks ----------------------------------------------------------------------------------


@dataclass
class Attempt:
    seqs: list[int]
    webhook_ids: list[str]
    at: float


@dataclass
class FakeSink:
    """Accepts what it is given unless it is `down` (a callable of the time); `hang_at`: the
    delivery that contains this seq is taken (recorded as received) and never answered."""

    name: str
    down: Any = None
    clock: FakeClock | None = None
    hang_at: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    delivered: list[Change] = field(default_factory=list)
    hung: asyncio.Event = field(default_factory=asyncio.Event)

    async def deliver(self, batch: Sequence[Change]) -> None:
        now = self.clock.time() if self.clock is not None else 0.0
        self.attempts.append(Attempt([c.seq for c in batch], [c.webhook_id for c in batch], now))
        if self.hang_at is not None and any(c.seq == self.hang_at for c in batch):
            self.hung.set()
            await asyncio.Event().wait()  # never answered: the task is cancelled here
        if self.down is not None and self.down(now):
            raise SinkError(self.name, "503 from the handler")
        self.delivered.extend(batch)

    @property
    def seqs(self) -> list[int]:
        return [c.seq for c in self.delivered]


def runner(sink: FakeSink, feed: Feed, clock: FakeClock | None = None, **kw: Any) -> SinkRunner:
    clock = clock or FakeClock()
    return SinkRunner(sink, feed.log, feed.notifier, sleep=clock.sleep, clock=clock.time, **kw)


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- every matching change, in seq order, exactly once --------------------------------------------


FILTERS: dict[str, tuple[str, ...]] = {
    "all": ("*",),
    "orders": ("order.*", "customer.deleted"),
    "alerts": ("order.shipped", "inventory.low"),
}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_matching_change_once_and_in_order_while_the_mirror_commits(
    tmp_path: Path, seed: int
) -> None:
    shop = Shop(seed)
    async with open_feed(tmp_path / "mirror.db") as feed:
        sinks = {name: FakeSink(name) for name in FILTERS}
        runners = [runner(sinks[name], feed, events=FILTERS[name], batch_size=7) for name in FILTERS]
        tasks = [asyncio.create_task(r.run()) for r in runners]
        await until(lambda: all(r.state.delivered == 0 for r in runners))
        for i in range(40):
            await feed.apply(shop.batch(shop.rng.randint(1, 5)))
            if i % 10 == 9:
                # A customer removed upstream: the relist tombstones it (customer.deleted).
                gone = {f"cus_{shop.rng.randint(1, 6)}"}
                await feed.relist("customers", shop.listing("customers", gone))
            await asyncio.sleep(0)  # the runners deliver while the mirror commits
        head = feed.head()
        await until(lambda: all(r.state.delivered == head for r in runners))
        for task in tasks:
            await stopped(task)
        logged = feed.changes()
        assert [c.seq for c in logged] == list(range(1, head + 1))
        for name, sink in sinks.items():
            expected = [c for c in logged if matches(c.event, FILTERS[name])]
            assert expected, f"the workload gives {name} something to match"
            assert sink.delivered == expected, name
            # Exactly once: nothing failed, so nothing was sent twice.
            assert sorted(s for a in sink.attempts for s in a.seqs) == [c.seq for c in expected]
            assert changelog.offset(feed.reader, name) == head
        events = {c.event for c in logged}
        assert {"order.shipped", "customer.deleted", "inventory.low"} <= events


# -- a runner killed mid-delivery -------------------------------------------------------------------


@pytest.mark.parametrize("accepted", [False, True], ids=["before-the-answer", "after-the-sink-took-it"])
async def test_a_runner_killed_mid_delivery_redelivers_the_same_seqs_and_skips_nothing(
    tmp_path: Path, accepted: bool
) -> None:
    shop = Shop(7)
    async with open_feed(tmp_path / "mirror.db") as feed:
        for _ in range(6):
            await feed.apply(shop.batch(4))
        head = feed.head()
        hang_at = head // 2
        first = FakeSink("app", hang_at=hang_at)
        if accepted:
            # The sink took the batch (its handler ran), then the daemon died before the offset
            # was committed.
            original = first.deliver

            async def took_then_died(batch: Sequence[Change]) -> None:
                if any(c.seq == hang_at for c in batch):
                    first.delivered.extend(batch)
                await original(batch)

            first.deliver = took_then_died  # type: ignore[method-assign]
        killed = runner(first, feed, start=Start.BEGINNING, batch_size=4)
        task = asyncio.create_task(killed.run())
        async with asyncio.timeout(20):
            await first.hung.wait()
        await stopped(task)
        in_flight = first.attempts[-1]
        assert hang_at in in_flight.seqs
        offset = changelog.offset(feed.reader, "app")
        assert offset == in_flight.seqs[0] - 1, "the offset stays before the unanswered batch"

        second = FakeSink("app")
        restarted = runner(second, feed, start=Start.HEAD, batch_size=4)  # the offset wins over start
        task = asyncio.create_task(restarted.run())
        await until(lambda: restarted.state.delivered == head)
        await stopped(task)
        redelivered = second.attempts[0]
        assert redelivered.seqs == in_flight.seqs
        assert redelivered.webhook_ids == in_flight.webhook_ids
        # Nothing skipped: before the kill and after it, every seq, in order.
        taken = [s for s in first.seqs if s < in_flight.seqs[0]]
        assert taken + second.seqs == list(range(1, head + 1))
        assert [c.to_dict() for c in second.delivered] == [
            c.to_dict() for c in feed.changes() if c.seq > offset
        ]


# -- a sink down for an hour ----------------------------------------------------------------------


async def test_a_blocking_sink_down_for_an_hour_loses_nothing_keeps_order_and_the_log_is_pruned_after(
    tmp_path: Path,
) -> None:
    shop = Shop(11)
    clock = FakeClock()
    back_at = clock.start + HOUR
    retention = 600.0
    async with open_feed(tmp_path / "mirror.db") as feed:
        for _ in range(3):
            await feed.apply(shop.batch(2), at=clock.now)
        sink = FakeSink("app", down=lambda now: now < back_at, clock=clock)
        blocking = runner(
            sink, feed, clock, start=Start.BEGINNING, on_failure=OnFailure.BLOCK, max_attempts=5
        )
        states: list[DeliveryState] = []
        kept_while_down: list[int] = []

        async def during_outage(_: float) -> None:
            states.append(blocking.state.state)
            if clock.now < back_at:
                # The mirror goes on committing while the sink is down.
                await feed.apply(shop.batch(2), at=clock.now)
                # Pruning meanwhile never takes what the sink has not taken.
                offset = changelog.offset(feed.reader, "app") or 0
                await feed.prune(retention=retention, now=clock.now, keep_after_seq=offset)
                kept_while_down.append(len(changelog.read_after(feed.reader, offset, 1_000_000)))
                assert kept_while_down[-1] == feed.head() - offset

        clock.on_sleep = during_outage
        task = asyncio.create_task(blocking.run())
        await until(lambda: clock.now >= back_at and blocking.state.delivered == feed.head())
        await stopped(task)
        head = feed.head()
        assert clock.elapsed >= HOUR
        assert DeliveryState.BLOCKED in states
        assert len(kept_while_down) > 10
        # Order kept: until the first change went through, nothing else was tried.
        failed = [a for a in sink.attempts if a.at < back_at]
        assert failed
        assert {a.seqs[0] for a in failed} == {1}
        assert all(a.seqs == [1] for a in failed[1:]), "retries send the blocked change alone"
        assert sink.seqs == list(range(1, head + 1)), "every change, once, in seq order"
        assert changelog.offset(feed.reader, "app") == head

        # Caught up: pruning with the retention leaves only the changes within it.
        committed = {c.seq: c.at for c in feed.changes()}
        cutoff = format_epoch(clock.now - retention)
        recent = sum(1 for at in committed.values() if at >= cutoff)
        not_taken = head - (changelog.offset(feed.reader, "app") or 0)
        await feed.prune(retention=retention, now=clock.now, keep_after_seq=head)
        left = feed.changes()
        assert len(left) <= not_taken + recent
        assert len(left) == recent
        assert 0 < recent < len(committed), "the outage's changes span more than the retention"
        assert all(c.at >= cutoff for c in left)


async def test_a_skipping_sink_down_for_an_hour_dead_letters_after_max_attempts_and_catches_up(
    tmp_path: Path,
) -> None:
    shop = Shop(12)
    clock = FakeClock()
    back_at = clock.start + HOUR
    max_attempts = 4
    async with open_feed(tmp_path / "mirror.db") as feed:
        await feed.apply(shop.batch(3), at=clock.now)
        sink = FakeSink("app", down=lambda now: now < back_at, clock=clock)
        skipping = runner(
            sink,
            feed,
            clock,
            start=Start.BEGINNING,
            on_failure=OnFailure.SKIP,
            max_attempts=max_attempts,
            backoff=Backoff(initial=10.0, maximum=300.0, jitter=0.0),
        )

        async def during_outage(_: float) -> None:
            if clock.now < back_at:
                await feed.apply(shop.batch(1), at=clock.now)

        clock.on_sleep = during_outage
        task = asyncio.create_task(skipping.run())
        await until(lambda: clock.now >= back_at and skipping.state.delivered == feed.head())
        # After the outage the sink takes new changes as they come.
        await feed.apply(shop.batch(3), at=clock.now)
        await until(lambda: skipping.state.delivered == feed.head())
        await stopped(task)
        head = feed.head()
        dead = [d.seq for d in changelog.sink_dead_letters(feed.reader, "app", limit=100_000)]
        assert dead, "the outage outlasted max_attempts"
        assert sink.seqs, "the sink took changes again once it was back"
        assert dead == sorted(dead)
        assert sink.seqs == sorted(sink.seqs)
        # Nothing lost: every change was either delivered or kept as a dead letter.
        assert sorted(dead + sink.seqs) == list(range(1, head + 1))
        for seq in dead:
            # Tried max_attempts times (at the head of a delivery), then given up.
            assert sum(1 for a in sink.attempts if a.seqs[0] == seq) == max_attempts
        letters = {d.seq: d.change for d in changelog.sink_dead_letters(feed.reader, "app", limit=100_000)}
        assert [letters[s].to_dict() for s in dead] == [
            c.to_dict() for c in feed.changes() if c.seq in letters
        ]
        assert changelog.offset(feed.reader, "app") == head
        assert clock.elapsed >= HOUR
