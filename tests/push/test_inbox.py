"""The durable inbox: group commit, deduplication, backpressure, commit failure; and the
audit trail written beside it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from syncd.metrics import Metrics
from syncd.push.audit import AuditLog, AuditRow
from syncd.push.inbox import Delivery, Inbox, InboxCommitError, InboxFullError
from syncd.push.inbox_worker import InboxWorker
from syncd.store import events
from syncd.store.db import Store
from syncd.store.writer import Writer
from tests.webhook_support import envelope, read_db


def delivery(event_id: str, received_at: float = 1000.0, event_type: str = "order.created") -> Delivery:
    return Delivery(
        event_id,
        received_at,
        "127.0.0.1",
        {"content-type": "application/json", "x-webhook-id": event_id},
        envelope(event_id),
        event_type,
    )


async def test_concurrent_deliveries_share_few_commits_and_survive_reopen(
    tmp_path: Path, writer: Writer
) -> None:
    metrics = Metrics()
    inbox = Inbox(writer, max_batch=512, metrics=metrics)
    await inbox.start()
    n = 400
    results = await asyncio.gather(*(inbox.submit(delivery(f"evt_{i}")) for i in range(n)))
    await inbox.stop()
    writer.stop()

    assert results == ["accepted"] * n
    assert inbox.committed == n
    commits = metrics.registry.get_sample_value("syncd_inbox_group_commit_size_count")
    assert commits is not None
    assert commits <= n // 20, f"{commits} transactions for {n} deliveries"
    assert metrics.registry.get_sample_value("syncd_inbox_group_commit_size_sum") == n
    # A fresh connection sees every acknowledged delivery.
    db = tmp_path / "mirror.db"
    rows = read_db(db, "SELECT event_id, deliveries, event_type, resource, last_seen FROM _inbox")
    assert len({r[0] for r in rows}) == n
    assert {r[1:] for r in rows} == {(1, "order.created", "orders", 1000.0)}
    # Acknowledging wrote one row per delivery: the inbox row is the dedupe key until applied.
    assert read_db(db, "SELECT COUNT(*) FROM _events") == [(0,)]


async def test_stored_headers_and_body_are_the_delivery(tmp_path: Path, writer: Writer) -> None:
    inbox = Inbox(writer)
    await inbox.start()
    d = delivery("evt_h", received_at=1234.5)
    assert await inbox.submit(d) == "accepted"
    await inbox.stop()
    (row,) = read_db(
        tmp_path / "mirror.db", "SELECT event_id, received_at, client, headers, body FROM _inbox"
    )
    assert row[:3] == ("evt_h", 1234.5, "127.0.0.1")
    assert json.loads(row[3]) == {"content-type": "application/json", "x-webhook-id": "evt_h"}
    assert bytes(row[4]) == d.body


async def test_duplicates_are_acknowledged_once_stored(tmp_path: Path, writer: Writer) -> None:
    inbox = Inbox(writer)
    await inbox.start()
    assert await inbox.submit(delivery("evt_a", 1000.0)) == "accepted"
    # Again later, and twice within one batch with a new id.
    results = await asyncio.gather(
        inbox.submit(delivery("evt_a", 2000.0)),
        inbox.submit(delivery("evt_b", 2000.0)),
        inbox.submit(delivery("evt_b", 2001.0)),
    )
    await inbox.stop()
    assert results == ["duplicate", "accepted", "duplicate"]
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT event_id, deliveries, received_at, last_seen FROM _inbox ORDER BY seq") == [
        ("evt_a", 2, 1000.0, 2000.0),
        ("evt_b", 2, 2000.0, 2001.0),
    ]


async def test_applying_moves_the_dedupe_key_to_events_with_its_deliveries(
    tmp_path: Path, writer: Writer
) -> None:
    inbox = Inbox(writer)
    await inbox.start()
    assert await inbox.submit(delivery("evt_a", 1000.0)) == "accepted"
    assert await inbox.submit(delivery("evt_a", 1500.0)) == "duplicate"
    await InboxWorker(writer, None, fetch_thin=False, backlog=inbox.backlog).drain()
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT COUNT(*) FROM _inbox") == [(0,)]
    assert inbox.backlog.depth == inbox.backlog.bytes == 0
    # Applied, the id is still known: a later repeat is a duplicate, counted in `_events`.
    assert await inbox.submit(delivery("evt_a", 3000.0)) == "duplicate"
    await inbox.stop()
    assert read_db(
        db, "SELECT event_id, outcome, event_type, resource, deliveries, first_seen, last_seen FROM _events"
    ) == [("evt_a", "applied", "order.created", "orders", 3, 1000.0, 3000.0)]
    assert read_db(db, "SELECT COUNT(*) FROM _inbox") == [(0,)]


async def test_dedupe_keys_are_pruned_after_retention_but_pending_ones_kept(
    tmp_path: Path, writer: Writer
) -> None:
    clock = [1000.0]
    inbox = Inbox(writer, clock=lambda: clock[0])
    await inbox.start()
    await inbox.submit(delivery("evt_old", 1000.0))
    await inbox.submit(delivery("evt_done", 1000.0))

    def apply_done(store: Store) -> None:
        (seq,) = store.conn.execute("SELECT seq FROM _inbox WHERE event_id='evt_done'").fetchone()
        with store.db.atomic():
            events.settle_inbox(store.conn, [(None, None, "1", 1, "applied", 1000.0, seq)])

    await writer.run(apply_done)
    clock[0] = 1000.0 + 8 * 86400
    pruned = await inbox.prune(dedupe_retention=7 * 86400, audit_retention=7 * 86400)
    assert pruned == (1, 0)
    # The pending one is still known, so a retry is still a duplicate; the pruned one is not.
    assert await inbox.submit(delivery("evt_old", clock[0])) == "duplicate"
    assert await inbox.submit(delivery("evt_done", clock[0])) == "accepted"
    await inbox.stop()


def hold_writer(writer: Writer) -> threading.Event:
    """Keep the writer busy (a slow disk) until the returned event is set."""
    gate = threading.Event()
    writer.submit(lambda store: gate.wait(10))
    return gate


async def test_backpressure_refuses_beyond_the_waiting_limit(writer: Writer) -> None:
    inbox = Inbox(writer, max_waiting=3)
    await inbox.start()
    gate = hold_writer(writer)
    first = [asyncio.create_task(inbox.submit(delivery(f"evt_{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    assert inbox.waiting == 3
    with pytest.raises(InboxFullError, match="evt_x"):
        await inbox.submit(delivery("evt_x"))
    gate.set()
    assert await asyncio.gather(*first) == ["accepted"] * 3
    # Once committed there is room again.
    assert await inbox.submit(delivery("evt_x")) == "accepted"
    await inbox.stop()


async def test_failed_commit_fails_every_waiter_and_stores_nothing(tmp_path: Path, writer: Writer) -> None:
    inbox = Inbox(writer)
    await inbox.start()
    assert await inbox.submit(delivery("evt_before")) == "accepted"
    await writer.run(lambda s: s.conn.execute("PRAGMA busy_timeout=20"))
    # Another process holds the write lock: the commit cannot happen.
    other = sqlite3.connect(tmp_path / "mirror.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        results = await asyncio.gather(
            *(inbox.submit(delivery(f"evt_{i}")) for i in range(5)), return_exceptions=True
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(isinstance(r, InboxCommitError) for r in results), results
    assert "evt_0" in str(results[0])
    # The inbox keeps working once the store does.
    assert await inbox.submit(delivery("evt_after")) == "accepted"
    await inbox.stop()
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT event_id FROM _inbox ORDER BY seq") == [("evt_before",), ("evt_after",)]


async def test_stop_commits_what_is_waiting_and_refuses_after(tmp_path: Path, writer: Writer) -> None:
    inbox = Inbox(writer)
    await inbox.start()
    gate = hold_writer(writer)
    pending = asyncio.create_task(inbox.submit(delivery("evt_late")))
    await asyncio.sleep(0)
    stopping = asyncio.create_task(inbox.stop())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not stopping.done(), "stop() returned while a delivery was still waiting"
    gate.set()
    await stopping
    assert await pending == "accepted"
    with pytest.raises(InboxCommitError):
        await inbox.submit(delivery("evt_closed"))


async def test_commit_listeners_are_told_only_about_new_events(writer: Writer) -> None:
    inbox = Inbox(writer)
    calls: list[int] = []
    inbox.add_commit_listener(lambda: calls.append(1))
    await inbox.start()
    await inbox.submit(delivery("evt_1"))
    await inbox.submit(delivery("evt_1"))
    await inbox.stop()
    assert calls == [1]
    assert inbox.last_delivery_at is not None


async def test_replayable_transactions_skip_the_fsync_but_restore_full(writer: Writer) -> None:
    from syncd.store.db import replayable_transaction

    def levels(store: Store) -> tuple[int, int, int]:
        before = store.conn.execute("PRAGMA synchronous").fetchone()[0]
        with replayable_transaction(store):
            inside = store.conn.execute("PRAGMA synchronous").fetchone()[0]
        return before, inside, store.conn.execute("PRAGMA synchronous").fetchone()[0]

    def failing(store: Store) -> None:
        with replayable_transaction(store):
            store.conn.execute("INSERT INTO _meta (key, value) VALUES ('k', 'v')")
            raise RuntimeError("boom")

    assert await writer.run(levels) == (2, 1, 2)  # FULL, NORMAL, FULL again
    with pytest.raises(RuntimeError, match="boom"):
        await writer.run(failing)
    # Rolled back, and acknowledgements are back to FULL.
    assert await writer.run(lambda s: s.conn.execute("PRAGMA synchronous").fetchone()[0]) == 2
    assert await writer.run(lambda s: s.get_meta("k")) is None


async def test_committed_parses_reach_the_worker_once_and_the_memo_is_bounded(writer: Writer) -> None:
    from syncd.push.parse_memo import ParsedBodies, parsed_bodies

    inbox = Inbox(writer)
    await inbox.start()
    fresh = delivery("evt_parsed")
    fresh.parsed = json.loads(fresh.body)
    assert await inbox.submit(fresh) == "accepted"
    again = delivery("evt_parsed")
    again.parsed = {"not": "kept"}
    assert await inbox.submit(again) == "duplicate"
    await inbox.stop()
    assert parsed_bodies.take(bytes(fresh.body)) == json.loads(fresh.body)
    assert parsed_bodies.take(fresh.body) is None  # taken once

    memo = ParsedBodies(max_bytes=100)
    for i in range(5):
        memo.put(b"x" * 30 + str(i).encode(), i)
    assert len(memo) == 3  # the two oldest went first
    assert memo.take(b"x" * 30 + b"0") is None
    assert memo.take(b"x" * 30 + b"4") == 4


async def test_audit_flush_waits_for_a_write_already_in_progress(tmp_path: Path, writer: Writer) -> None:
    audit = AuditLog(writer, interval=3600, batch=1)
    await audit.start()
    gate = hold_writer(writer)
    audit.record(AuditRow(1000.0, "127.0.0.1", "POST", "/webhooks/petstore", 429, "rate_limited", None, 0))
    # A full batch wakes the background task: it takes the row and waits for the busy writer.
    for _ in range(5):
        await asyncio.sleep(0)
    flushing = asyncio.create_task(audit.flush())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not flushing.done(), "flush() returned while the row was still being written"
    gate.set()
    await flushing
    assert read_db(tmp_path / "mirror.db", "SELECT status, reason FROM _audit") == [(429, "rate_limited")]
    await audit.stop()
