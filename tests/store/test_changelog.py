import sqlite3
import tempfile
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.core.changes import Change, ChangeKind, ChangeSource, NewChange, new_change
from syncd.store import changelog


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    changelog.create_tables(conn)
    return conn


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = connect(tmp_path / "mirror.db")
    yield c
    c.close()


def at(second: int) -> str:
    return f"2026-12-01T10:{second // 60:02d}:{second % 60:02d}.000Z"


def change(
    record_id: Any = 1,
    version: int = 1,
    *,
    resource: str = "orders",
    second: int = 0,
    status: str = "placed",
    previous: dict[str, Any] | None = None,
) -> NewChange:
    data = {"id": record_id, "status": status, "version": version}
    return new_change(
        mirror="m-1",
        resource=resource,
        record_id=record_id,
        kind=ChangeKind.CREATED if previous is None else ChangeKind.UPDATED,
        source=ChangeSource.POLL,
        data=data,
        version=version,
        previous=previous,
        previous_version=None if previous is None else previous["version"],
        at=at(second),
    )


def commit(conn: sqlite3.Connection, changes: list[NewChange]) -> list[int]:
    conn.execute("BEGIN")
    seqs = changelog.append(conn, changes)
    conn.execute("COMMIT")
    return seqs


def test_create_tables_is_idempotent(conn: sqlite3.Connection) -> None:
    changelog.create_tables(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"_changes", "_sink_offsets", "_sink_dead_letters"} <= tables


def test_append_assigns_increasing_seqs_and_reads_back(conn: sqlite3.Connection) -> None:
    assert changelog.head(conn) == 0
    batch = [change(i, second=i) for i in range(1, 301)]  # several INSERT statements
    seqs = commit(conn, batch)
    assert seqs == list(range(1, 301))
    assert changelog.head(conn) == 300
    read = changelog.read_after(conn, 0, 1000)
    assert [c.seq for c in read] == seqs
    assert [c.unsequenced() for c in read] == batch
    assert [c.seq for c in changelog.read_after(conn, 100, 5)] == [101, 102, 103, 104, 105]
    assert changelog.read_after(conn, 300, 10) == []
    assert commit(conn, []) == []


def test_record_ids_keep_their_type(conn: sqlite3.Connection) -> None:
    commit(conn, [change(7), change("7", resource="customers"), change("sku-1", resource="inventory")])
    assert [c.record_id for c in changelog.read_after(conn, 0, 10)] == [7, "7", "sku-1"]
    assert changelog.last_change_of(conn, "orders", 7) is not None
    assert changelog.last_change_of(conn, "orders", "7") is None
    assert changelog.last_change_of(conn, "customers", "7") is not None


def test_read_after_by_resource(conn: sqlite3.Connection) -> None:
    commit(conn, [change(1), change("c", resource="customers"), change(2), change("i", resource="inventory")])
    assert [c.seq for c in changelog.read_after(conn, 0, 10, resources=["orders"])] == [1, 3]
    assert [c.seq for c in changelog.read_after(conn, 1, 10, resources=["orders", "inventory"])] == [3, 4]
    assert changelog.read_after(conn, 0, 10, resources=[]) == []


def test_read_after_by_resource_reads_by_seq_not_through_the_record_index(conn: sqlite3.Connection) -> None:
    """Through the index by record, every batch would sort all of the resource's changes: a
    read of a resource's changes in batches would cost the square of their number."""
    commit(conn, [change(i) for i in range(1, 50)])
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        assert len(changelog.read_after(conn, 10, 5, resources=["orders"])) == 5
    finally:
        conn.set_trace_callback(None)
    [select] = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + select))
    assert "INTEGER PRIMARY KEY" in plan, plan
    assert "_changes_record" not in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_last_change_chains_a_record(conn: sqlite3.Connection) -> None:
    first = change(1, 1)
    commit(conn, [first, change(2, 1)])
    prior = changelog.last_change_of(conn, "orders", 1)
    assert prior is not None
    second = change(1, 2, status="shipped", previous=dict(prior.data))
    commit(conn, [second])
    last = changelog.last_change_of(conn, "orders", 1)
    assert last is not None
    assert (last.seq, last.event, last.previous_version) == (3, "order.shipped", 1)
    assert last.changed == {"status": {"from": "placed", "to": "shipped"}}
    assert changelog.last_change_of(conn, "orders", 99) is None
    many = changelog.last_changes_of(conn, "orders", [1, 2, 99, *range(1000, 1600)])
    assert {rid: c.seq for rid, c in many.items()} == {1: 3, 2: 2}


def test_last_states_agree_with_last_changes(conn: sqlite3.Connection) -> None:
    big = {"id": 3, "status": "placed", "version": 1, "total": 2**70}
    deleted = new_change(
        mirror="m-1",
        resource="orders",
        record_id=2,
        kind=ChangeKind.DELETED,
        source=ChangeSource.RELIST,
        data={"id": 2, "status": "placed", "version": 1},
        version=1,
        previous={"id": 2, "status": "placed", "version": 1},
        previous_version=1,
        at=at(1),
    )
    commit(conn, [change(1, 1), change(2, 1), change(1, 2, status="shipped", previous=change(1, 1).data)])
    # A value orjson cannot write takes the json module's way, and must read back the same.
    created = new_change(
        mirror="m-1",
        resource="orders",
        record_id=3,
        kind=ChangeKind.CREATED,
        source=ChangeSource.POLL,
        data=big,
        version=1,
        previous=None,
        previous_version=None,
        at=at(1),
    )
    commit(conn, [deleted, created])
    ids = [1, 2, 3, 99, "1"]
    states = changelog.last_states_of(conn, "orders", ids)
    changes = changelog.last_changes_of(conn, "orders", ids)
    assert states == {
        rid: changelog.LastState(c.version, c.kind is ChangeKind.DELETED, c.data)
        for rid, c in changes.items()
    }
    assert (states[1].version, states[1].deleted, states[2].deleted) == (2, False, True)
    assert states[3].data["total"] == 2**70
    assert set(states) == {1, 2, 3}


def test_offsets(conn: sqlite3.Connection) -> None:
    assert changelog.offset(conn, "app") is None
    changelog.set_offset(conn, "app", 5, now=100.0)
    changelog.set_offset(conn, "app", 7, now=101.0)
    changelog.set_offset(conn, "script", 2)
    assert changelog.offset(conn, "app") == 7
    assert changelog.offsets(conn) == {"app": 7, "script": 2}
    row = conn.execute("SELECT updated_at FROM _sink_offsets WHERE sink='app'").fetchone()
    assert row[0] == 101.0
    changelog.set_offset(conn, "app", 3)  # a reset moves it back
    assert changelog.offset(conn, "app") == 3
    changelog.drop_offset(conn, "script")
    assert changelog.offsets(conn) == {"app": 3}


def test_dead_letters_keep_the_whole_change(conn: sqlite3.Connection) -> None:
    commit(conn, [change(1), change(2)])
    first = changelog.read_after(conn, 0, 1)[0]
    dl_id = changelog.add_sink_dead_letter(conn, "app", first, "HTTP 500: boom", now=50.0)
    changelog.prune(conn, before_at=at(3600), keep_after_seq=2)  # the row it came from is gone
    [dead] = changelog.sink_dead_letters(conn, "app")
    assert (dead.id, dead.sink, dead.seq, dead.reason, dead.at) == (dl_id, "app", 1, "HTTP 500: boom", 50.0)
    assert dead.change == first
    assert changelog.sink_dead_letters(conn, "other") == []
    changelog.mark_dead_letter_replayed(conn, dl_id, "delivered", now=60.0)
    assert changelog.sink_dead_letters(conn, "app") == []
    [replayed] = changelog.sink_dead_letters(conn, "app", pending_only=False)
    assert (replayed.replayed_at, replayed.replay_outcome) == (60.0, "delivered")


def test_prune_keeps_what_a_sink_has_not_taken_and_what_is_recent(conn: sqlite3.Connection) -> None:
    commit(conn, [change(i, second=i) for i in range(1, 11)])
    # Sinks have taken up to seq 6; retention keeps everything from second 4 on.
    assert changelog.prune(conn, before_at=at(4), keep_after_seq=6) == 3
    assert [c.seq for c in changelog.read_after(conn, 0, 100)] == [4, 5, 6, 7, 8, 9, 10]
    assert changelog.prune(conn, before_at=at(60), keep_after_seq=6) == 3
    assert changelog.oldest(conn) == 7
    assert changelog.prune(conn, before_at=at(60), keep_after_seq=10, limit=2) == 2
    assert changelog.prune(conn, before_at=at(60), keep_after_seq=10, limit=2) == 2
    assert changelog.oldest(conn) is None
    assert changelog.head(conn) == 10  # the head survives an empty log
    assert commit(conn, [change(11)]) == [11]


def test_seqs_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    conn = connect(path)
    commit(conn, [change(i) for i in range(5)])
    changelog.prune(conn, before_at=at(3600), keep_after_seq=5)
    conn.close()
    conn = connect(path)
    assert changelog.head(conn) == 5
    assert commit(conn, [change(9)]) == [6]
    conn.close()


def test_rolled_back_appends_leave_no_rows(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    changelog.append(conn, [change(1), change(2)])
    conn.execute("ROLLBACK")
    assert changelog.read_after(conn, 0, 10) == []
    # A rolled-back seq was never seen by anyone, so handing it out again is harmless.
    assert commit(conn, [change(3)]) == [1]


Op = tuple[str, int]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(min_value=0, max_value=150)),
            st.tuples(st.just("prune"), st.integers(min_value=0, max_value=400)),
        ),
        max_size=12,
    )
)
def test_seqs_strictly_increase_and_are_never_reused(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "mirror.db")
        try:
            assigned: list[int] = []
            kept: set[int] = set()
            second = 0
            for op, n in ops:
                if op == "append":
                    batch = [change(i, second=(second := second + 1) % 3600) for i in range(n)]
                    seqs = commit(conn, batch)
                    assert len(seqs) == n
                    assert not set(seqs) & set(assigned)
                    assigned += seqs
                    assert all(b > a for a, b in pairwise(assigned))
                    kept.update(seqs)
                else:
                    # Pruning by seq bound only (every `at` is before the cut-off).
                    deleted = changelog.prune(conn, before_at="9999", keep_after_seq=n)
                    gone = {s for s in kept if s <= n}
                    assert deleted == len(gone)
                    kept -= gone
                assert changelog.head(conn) == (assigned[-1] if assigned else 0)
                read: list[Change] = changelog.read_after(conn, 0, 10_000)
                assert [c.seq for c in read] == sorted(kept)
        finally:
            conn.close()
