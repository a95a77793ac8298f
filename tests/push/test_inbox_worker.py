"""The inbox worker: full and thin events into the mirror, outcomes, retries, dead letters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from syncd.api import PetstoreClient
from syncd.metrics import Metrics
from syncd.push.inbox import BUSY_COMMITS, Delivery, Inbox
from syncd.push.inbox_worker import InboxWorker
from syncd.push.replay import replay_dead_letters
from syncd.store.writer import Writer
from tests.webhook_support import envelope, order, read_db

API = "http://api.test/v1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api() -> AsyncIterator[tuple[respx.MockRouter, PetstoreClient]]:
    with respx.mock(base_url=API, assert_all_called=False) as router:
        client = PetstoreClient(API, "key", retry_attempts=1)
        yield router, client
        await client.aclose()


async def put(writer: Writer, *bodies: tuple[str, bytes], received_at: float = 1_700_000_000.0) -> None:
    inbox = Inbox(writer)
    await inbox.start()
    for event_id, body in bodies:
        await inbox.submit(Delivery(event_id, received_at, "127.0.0.1", {}, body))
    await inbox.stop()


def events(db: Path) -> dict[str, tuple[Any, ...]]:
    """Events by id: applied ones from `_events`, the ones still in the inbox as pending."""
    rows = read_db(
        db,
        "SELECT event_id, outcome, resource, record_id, version FROM _events"
        " UNION ALL SELECT event_id, 'pending', resource, NULL, NULL FROM _inbox",
    )
    return {r[0]: r[1:] for r in rows}


async def test_full_events_apply_their_snapshot_in_one_pass(tmp_path: Path, writer: Writer) -> None:
    clock = Clock()
    await put(
        writer,
        ("e1", envelope("e1", "order.created", order(1, 1))),
        ("e2", envelope("e2", "order.shipped", order(1, 3, status="shipped"))),
        ("e3", envelope("e3", "order.updated", order(1, 2, status="approved"))),  # arrives late
        ("e4", envelope("e4", "webhook.test", {})),
        received_at=clock.now - 0.02,
    )
    metrics = Metrics()
    worker = InboxWorker(writer, None, fetch_thin=False, metrics=metrics, clock=clock)
    await worker.drain()
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT id, status, _version, _source FROM orders") == [(1, "shipped", 3, "webhook")]
    ev = events(db)
    assert ev["e2"] == ("applied", "orders", "1", 3)
    assert ev["e1"][0] == ev["e3"][0] == "stale"
    assert ev["e4"][0] == "test"
    assert read_db(db, "SELECT COUNT(*) FROM _inbox") == [(0,)]
    assert worker.counts == {"applied": 1, "stale": 2, "test": 1}
    assert metrics.registry.get_sample_value("syncd_event_to_mirror_seconds_count") == 3
    assert metrics.registry.get_sample_value("syncd_event_to_mirror_seconds_sum") == pytest.approx(0.06)


async def test_thin_events_are_fetched_and_gone_records_write_nothing(
    tmp_path: Path, writer: Writer, api: tuple[respx.MockRouter, PetstoreClient]
) -> None:
    router, client = api
    router.get("/orders/5").respond(200, json=order(5, 4, status="approved"))
    router.get("/orders/6").respond(404, json={"error": {"code": "not_found", "message": "no"}})
    await put(
        writer,
        ("t5", envelope("t5", "order.updated", {"id": 5})),
        ("t6", envelope("t6", "order.updated", {"id": 6})),
    )
    await InboxWorker(writer, client, fetch_thin=True).drain()
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT id, status, _version, _source FROM orders") == [(5, "approved", 4, "fetch")]
    ev = events(db)
    assert ev["t5"] == ("applied", "orders", "5", 4)
    assert ev["t6"] == ("gone", "orders", "6", None)
    assert read_db(db, "SELECT COUNT(*) FROM _inbox") == [(0,)]


async def test_thin_events_are_left_alone_when_fetching_is_off(tmp_path: Path, writer: Writer) -> None:
    await put(writer, ("t1", envelope("t1", "customer.registered", {"id": "cus_1"})))
    await InboxWorker(writer, None, fetch_thin=True).drain()
    assert events(tmp_path / "mirror.db")["t1"] == ("unfetched", "customers", "cus_1", None)


async def test_a_failed_fetch_stays_in_the_inbox_and_is_retried_after_backoff(
    tmp_path: Path, writer: Writer, api: tuple[respx.MockRouter, PetstoreClient]
) -> None:
    router, client = api
    route = router.get("/orders/8")
    route.side_effect = [httpx.Response(503), httpx.Response(200, json=order(8, 2))]
    clock = Clock()
    inbox = Inbox(writer)
    worker = InboxWorker(writer, client, fetch_thin=True, clock=clock, retry_delay=5.0, idle_timeout=0.01)
    inbox.add_commit_listener(worker.wake)
    await inbox.start()
    task = asyncio.create_task(worker.run())
    try:
        await inbox.submit(Delivery("t8", clock.now, "c", {}, envelope("t8", "order.updated", {"id": 8})))
        await inbox.submit(Delivery("f9", clock.now, "c", {}, envelope("f9", "order.created", order(9))))
        db = tmp_path / "mirror.db"
        # The full event behind it is not held up by the failing fetch.
        await wait_for(lambda: events(db)["f9"][0] == "applied")
        assert events(db)["t8"][0] == "pending"
        assert read_db(db, "SELECT event_id FROM _inbox") == [("t8",)]
        assert route.call_count == 1
        await asyncio.sleep(0.05)
        assert route.call_count == 1  # backing off: no retry before the delay has passed
        clock.now += 5.0
        await wait_for(lambda: events(db)["t8"][0] == "applied")
        assert read_db(db, "SELECT id, _source FROM orders ORDER BY id") == [(8, "fetch"), (9, "webhook")]
        assert read_db(db, "SELECT COUNT(*) FROM _inbox") == [(0,)]
    finally:
        worker.stop()
        await task
        await inbox.stop()


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_worker_is_woken_by_commits_not_by_polling(tmp_path: Path, writer: Writer) -> None:
    inbox = Inbox(writer)
    worker = InboxWorker(writer, None, fetch_thin=False, idle_timeout=3600)
    inbox.add_commit_listener(worker.wake)
    await inbox.start()
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.02)  # the worker is now idle, waiting for up to an hour
        await inbox.submit(Delivery("w1", 1.0, "c", {}, envelope("w1")))
        await asyncio.wait_for(_until(lambda: worker.processed == 1), 5)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)
        await inbox.stop()
    assert events(tmp_path / "mirror.db")["w1"][0] == "applied"


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def test_replay_reapplies_dead_letters_that_have_become_valid(
    tmp_path: Path, writer: Writer, api: tuple[respx.MockRouter, PetstoreClient]
) -> None:
    router, client = api
    broken = order(3, 1)
    del broken["updatedAt"]
    route = router.get("/orders/3")
    route.side_effect = [httpx.Response(200, json=broken)] + [httpx.Response(200, json=order(3, 2))] * 2
    no_version = order(4)
    del no_version["version"]
    await put(
        writer,
        ("d3", envelope("d3", "order.updated", {"id": 3})),
        ("d4", envelope("d4", "order.created", no_version)),
    )
    await InboxWorker(writer, client, fetch_thin=True).drain()
    db = tmp_path / "mirror.db"
    letters = read_db(db, "SELECT id, event_id, reason FROM _dead_letters ORDER BY id")
    assert [(row[1], "updatedAt" in row[2] or "version" in row[2]) for row in letters] == [
        ("d3", True),
        ("d4", True),
    ]

    results = await replay_dead_letters(writer, client, fetch_thin=True)
    assert [(r.event_id, r.outcome) for r in results] == [("d3", "applied"), ("d4", "invalid")]
    assert read_db(db, "SELECT id, _version FROM orders") == [(3, 2)]
    assert read_db(db, "SELECT event_id, replay_outcome FROM _dead_letters ORDER BY id") == [
        ("d3", "applied"),
        ("d4", "invalid"),
    ]
    assert events(db)["d3"][0] == "applied"
    # Still-invalid letters are offered again; replayed ones are not.
    again = await replay_dead_letters(writer, client, fetch_thin=True)
    assert [(r.event_id, r.outcome) for r in again] == [("d4", "invalid")]
    only = await replay_dead_letters(writer, client, fetch_thin=True, ids=[letters[0][0]])
    assert [(r.event_id, r.outcome) for r in only] == [("d3", "duplicate")]


async def test_while_the_receiver_is_saturated_the_worker_applies_one_batch_per_max_defer(
    tmp_path: Path, writer: Writer
) -> None:
    clock = Clock()
    saturated = [True]
    inbox = Inbox(writer)
    worker = InboxWorker(
        writer,
        None,
        fetch_thin=False,
        clock=clock,
        idle_timeout=3600,
        backlog=inbox.backlog,
        saturated=lambda: saturated[0],
        max_defer=1.0,
        defer_check=0.005,
    )
    inbox.add_commit_listener(worker.wake)
    await inbox.start()
    task = asyncio.create_task(worker.run())
    db = tmp_path / "mirror.db"

    async def deliver(i: int) -> None:
        await inbox.submit(Delivery(f"e{i}", clock.now, "c", {}, envelope(f"e{i}", data=order(i))))

    try:
        await deliver(1)
        # The first batch goes at once: nothing was applied within max_defer.
        await wait_for(lambda: events(db)["e1"][0] == "applied")
        await deliver(2)
        await deliver(3)
        for _ in range(10):  # the worker looks every defer_check and holds back
            await asyncio.sleep(0.005)
        assert inbox.backlog.depth == 2
        assert events(db)["e2"][0] == events(db)["e3"][0] == "pending"
        # Still saturated, max_defer later: one batch (everything waiting fits in it).
        clock.now += 1.0
        await wait_for(lambda: inbox.backlog.depth == 0)
        await deliver(4)
        await asyncio.sleep(0.02)
        assert events(db)["e4"][0] == "pending"
        # The receiver is no longer saturated: applied at once.
        saturated[0] = False
        await wait_for(lambda: events(db)["e4"][0] == "applied")
    finally:
        worker.stop()
        await task
        await inbox.stop()


async def _group_commit(writer: Writer, inbox: Inbox, ids: list[str]) -> None:
    """Commit `ids` as one group: the writer is held until all of them wait."""
    gate = threading.Event()
    writer.submit(lambda store: gate.wait(10))  # a slow disk: commits wait
    waiting = [asyncio.create_task(inbox.submit(Delivery(i, 1.0, "c", {}, envelope(i)))) for i in ids]
    await asyncio.sleep(0)
    assert inbox.waiting == len(ids)
    gate.set()
    assert await asyncio.gather(*waiting) == ["accepted"] * len(ids)


async def test_the_inbox_is_saturated_once_busy_commits_in_a_row_take_busy_batch_deliveries(
    writer: Writer,
) -> None:
    assert BUSY_COMMITS == 3
    inbox = Inbox(writer, busy_batch=3)
    await inbox.start()
    # One commit that waited behind a long job, or two, is a moment, not saturation.
    await _group_commit(writer, inbox, ["a0", "a1", "a2"])
    await _group_commit(writer, inbox, ["b0", "b1", "b2", "b3"])
    assert not inbox.saturated()
    # A smaller commit between them starts the count again.
    await _group_commit(writer, inbox, ["c0", "c1"])
    await _group_commit(writer, inbox, ["d0", "d1", "d2"])
    await _group_commit(writer, inbox, ["e0", "e1", "e2"])
    assert not inbox.saturated()
    # The third large commit in a row.
    await _group_commit(writer, inbox, ["f0", "f1", "f2"])
    assert inbox.saturated()
    # It stays saturated for `within` after the last time, and not past it.
    assert inbox.saturated(within=60)
    assert not inbox.saturated(within=0)
    await inbox.stop()
