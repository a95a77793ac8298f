"""Each mirror row's `_seq` (schema 8): the recorder finds a record's previous change by the
seq its row keeps instead of through an index of the log by record.

The properties run the change properties' programs (any order, duplication and mix of
copies, poison records to isolate, relists that tombstone and redeliveries that restore)
with more steps mixed in: the log turned off and on again, batches of an initial sync the
log leaves out, and pruning. Two real stores run each program: one with the recorder as it
is, one whose recorder finds the previous change the way it did before `_seq`, as the
record's greatest seq still in the log. Their logs must be the same change for change, and
after every step each row's `_seq` must be what that lookup answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.contract import RESOURCES
from syncd.core.changes import Change, ChangeKind, ChangeSource, new_change
from syncd.core.values import StoredState
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.recorder import ChangeRecorder
from syncd.store.schema import SCHEMA_VERSION, field_key
from tests.core.test_reconcile_properties import Record, as_change
from tests.store.test_change_properties import (
    CHANGE_SETTINGS,
    FAR_FUTURE,
    SYNCED,
    Apply,
    Relist,
    Step,
    check_chains,
    check_steps,
    programs,
    relist,
    run,
)


class ScanRecorder(ChangeRecorder):
    """The recorder with the lookup from before `_seq`: a record's previous change is its
    greatest seq still in the log, whatever its mirror row says."""

    def _last_states(
        self, store: Any, resource: str, ids: Sequence[Any], stored: Mapping[tuple[str, Any], StoredState]
    ) -> dict[Any, changelog.LastState]:
        out = {}
        for rid in ids:
            last = changelog.last_change_of(store.conn, resource, rid)
            if last is not None:
                out[rid] = changelog.LastState(last.version, last.kind is ChangeKind.DELETED, last.data)
        return out


# -- more steps ---------------------------------------------------------------------------------


class LogOff:
    pass


class LogOn:
    pass


class Prune:
    """Prune the log's first `share` of seqs (every sink has taken them, retention passed)."""

    def __init__(self, share: float) -> None:
        self.share = share


class Initial:
    """A batch applied as part of an initial sync (`include_initial` decides what it logs)."""

    def __init__(self, batch: list[Any]) -> None:
        self.batch = batch


Extra = Step | LogOff | LogOn | Prune | Initial


@st.composite
def mixed_programs(draw: st.DrawFn) -> tuple[list[Record], list[Extra], bool]:
    history, steps = draw(programs())
    out: list[Extra] = []
    off = False
    for step in steps:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            out.append(LogOn() if off else LogOff())
            off = not off
        elif roll == 1:
            out.append(Prune(draw(st.sampled_from([0.25, 0.5, 1.0]))))
        if isinstance(step, Apply) and step.poisoned is None and draw(st.integers(0, 4)) == 0:
            out.append(Initial(step.batch))
        else:
            out.append(step)
    if off and draw(st.booleans()):
        out.append(LogOn())
    # The last states again, so records written while the log was off chain on with it on.
    out.append(Apply([as_change(r.resource, r.final, "fetch") for r in history]))
    return history, out, draw(st.booleans())


def run_mixed(store: Store, history: Sequence[Record], steps: Sequence[Extra]) -> list[Change]:
    recorder = store.recorder
    assert recorder is not None
    generation = 0
    for step in steps:
        if isinstance(step, LogOff):
            store.recorder = None
        elif isinstance(step, LogOn):
            store.recorder = recorder
        elif isinstance(step, Prune):
            keep = int(changelog.head(store.conn) * step.share)
            with store.db.atomic():
                changelog.prune(store.conn, before_at=FAR_FUTURE, keep_after_seq=keep)
        elif isinstance(step, Initial):
            apply_batch(store, step.batch, synced_at=SYNCED, initial=True)
        elif isinstance(step, Relist):
            generation += 1
            relist(store, history, generation)
        else:
            apply_batch(store, step.batch, synced_at=SYNCED)
        check_last_seqs(store)
    store.recorder = recorder
    return changelog.read_after(store.conn, 0, 1_000_000)


def check_last_seqs(store: Store) -> None:
    """Every row's `_seq` is its record's greatest seq in the log; a row whose record has no
    change left there has none, or one pruned (at most the smallest seq still there)."""
    oldest = changelog.oldest(store.conn)
    for resource in RESOURCES:
        rows = store.conn.execute(
            f"SELECT id, _seq, (SELECT MAX(seq) FROM _changes c WHERE c.resource = ? AND c.record_id = m.id)"
            f" FROM {resource} m",
            (resource,),
        ).fetchall()
        for rid, seq, greatest in rows:
            if greatest is not None:
                assert seq == greatest, (resource, rid, seq, greatest)
            elif seq is not None:
                assert oldest is None or seq < oldest, (resource, rid, seq, oldest)


def comparable(log: Sequence[Change]) -> list[dict[str, Any]]:
    """The changes without what differs between two stores: their mirror ids, and the commit
    times a relist's page takes from the clock."""
    return [{k: v for k, v in c.to_dict().items() if k not in ("mirror", "at")} for c in log]


@CHANGE_SETTINGS
@given(program=mixed_programs())
def test_the_log_is_the_one_the_scan_of_the_log_chains(
    tmp_path: Path, program: tuple[list[Record], list[Extra], bool]
) -> None:
    history, steps, include_initial = program
    logs = []
    for name, scan in (("seq", False), ("scan", True)):
        store = Store(tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.db")
        try:
            assert store.recorder is not None
            if scan:
                store.recorder = ScanRecorder(store.recorder.mirror_id)
            store.recorder.include_initial = include_initial
            logs.append(run_mixed(store, history, steps))
        finally:
            store.close()
    assert comparable(logs[0]) == comparable(logs[1])


@CHANGE_SETTINGS
@given(program=programs())
def test_the_issue_s_invariants_hold_with_each_row_s_seq(
    tmp_path: Path, program: tuple[list[Record], list[Step]]
) -> None:
    """The change properties' checks again, with `_seq` checked after every step: one change
    per committed state, none for duplicates, stale copies and confirmations; per record a
    chain whose last change is the mirror's row; a restore chains on its deleted change."""
    history, steps = program
    store = Store(tmp_path / f"inv-{len(list(tmp_path.iterdir()))}.db")
    try:
        done = run(store, history, steps)
        check_steps(done)
        check_chains(done.log)
        check_last_seqs(store)
    finally:
        store.close()


# -- examples -----------------------------------------------------------------------------------


def order(version: int, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": 1,
        "status": status,
        "version": version,
        "updatedAt": f"2026-12-01T10:0{version}:00.000Z",
        **extra,
    }


def last_seq(store: Store, rid: Any = 1) -> Any:
    return store.conn.execute("SELECT _seq FROM orders WHERE id = ?", (rid,)).fetchone()[0]


def test_a_tombstone_keeps_the_seq_so_a_restore_chains_on_the_deleted_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    try:
        apply_batch(store, [as_change("orders", order(1, "placed", gift=True), "poll")], synced_at=SYNCED)
        relist(store, [Record("orders", 1, (order(1, "placed"),), True)], 1)
        deleted = changelog.read_after(store.conn, 0, 10)[-1]
        assert deleted.kind is ChangeKind.DELETED
        assert last_seq(store) == deleted.seq
        apply_batch(
            store, [as_change("orders", order(2, "shipped", gift=False), "webhook")], synced_at=SYNCED
        )
        restored = changelog.read_after(store.conn, deleted.seq, 10)
        assert [(c.kind, c.previous_version) for c in restored] == [(ChangeKind.RESTORED, 1)]
        # From the deleted change's JSON: a boolean, which the mirror's row holds as 1.
        assert restored[0].changed == {
            "status": {"from": "placed", "to": "shipped"},
            "gift": {"from": True, "to": False},
        }
        assert last_seq(store) == restored[0].seq
    finally:
        store.close()


def test_an_initial_sync_the_log_leaves_out_writes_no_seq(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    try:
        apply_batch(store, [as_change("orders", order(1, "placed"), "poll")], synced_at=SYNCED, initial=True)
        assert changelog.head(store.conn) == 0
        assert last_seq(store) is None
        apply_batch(store, [as_change("orders", order(2, "shipped"), "poll")], synced_at=SYNCED)
        [change] = changelog.read_after(store.conn, 0, 10)
        assert (change.kind, change.event, change.previous_version) == (
            ChangeKind.UPDATED,
            "order.shipped",
            1,
        )
        assert last_seq(store) == change.seq
    finally:
        store.close()


def test_a_seq_left_from_before_the_log_was_off_is_not_believed(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    try:
        recorder = store.recorder
        apply_batch(store, [as_change("orders", order(1, "placed", gift=True), "poll")], synced_at=SYNCED)
        first = last_seq(store)
        store.recorder = None
        apply_batch(store, [as_change("orders", order(2, "shipped", gift=True), "poll")], synced_at=SYNCED)
        assert last_seq(store) == first  # the log-off write leaves it alone
        store.recorder = recorder
        apply_batch(store, [as_change("orders", order(3, "completed", gift=True), "poll")], synced_at=SYNCED)
        change = changelog.read_after(store.conn, first, 10)[0]
        # Against the mirror's row (v2, shipped), not the stale change (v1, placed).
        assert (change.previous_version, change.changed) == (
            2,
            {"status": {"from": "shipped", "to": "completed"}},
        )
        assert last_seq(store) == change.seq
    finally:
        store.close()


def test_a_seq_whose_change_was_pruned_falls_back_to_the_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    try:
        apply_batch(store, [as_change("orders", order(1, "placed"), "poll")], synced_at=SYNCED)
        with store.db.atomic():
            assert changelog.prune(store.conn, before_at=FAR_FUTURE, keep_after_seq=1) == 1
        apply_batch(store, [as_change("orders", order(2, "shipped"), "poll")], synced_at=SYNCED)
        [change] = changelog.read_after(store.conn, 0, 10)
        assert (change.seq, change.previous_version, change.changed) == (
            2,
            1,
            {"status": {"from": "placed", "to": "shipped"}},
        )
    finally:
        store.close()


def test_a_seq_that_is_another_record_s_change_is_not_believed(tmp_path: Path) -> None:
    """Only a hand-edited file can do this; the recorder then chains on the row instead."""
    store = Store(tmp_path / "m.db")
    try:
        one, two = order(1, "placed"), {**order(1, "placed"), "id": 2}
        apply_batch(
            store, [as_change("orders", one, "poll"), as_change("orders", two, "poll")], synced_at=SYNCED
        )
        with store.db.atomic():
            store.conn.execute("UPDATE orders SET _seq = 2 WHERE id = 1")
            store.conn.execute("UPDATE _changes SET data = ? WHERE seq = 2", ('{"id":2,"status":"rival"}',))
        apply_batch(store, [as_change("orders", order(2, "shipped"), "poll")], synced_at=SYNCED)
        change = changelog.read_after(store.conn, 2, 10)[0]
        assert change.changed == {"status": {"from": "placed", "to": "shipped"}}
    finally:
        store.close()


def test_a_rolled_back_batch_takes_its_seqs_back_from_the_rows(tmp_path: Path) -> None:
    """The savepoint that isolates a poison record rolls back its part's change rows and
    the `_seq`s written with them: the seqs are handed out again, to the records stored."""
    store = Store(tmp_path / "m.db")
    try:
        store.conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, 40)
        batch = [
            as_change("orders", order(1, "placed"), "poll"),
            as_change("orders", {**order(1, "placed"), "id": 2, **{f"f{i}": i for i in range(40)}}, "poll"),
            as_change("orders", {**order(1, "placed"), "id": 3}, "poll"),
        ]
        result = apply_batch(store, batch, synced_at=SYNCED)
        assert list(result.reasons) == [1]
        rows = store.conn.execute("SELECT id, _seq FROM orders ORDER BY id").fetchall()
        assert rows == [(1, 1), (3, 2)]
        assert [(c.seq, c.record_id) for c in changelog.read_after(store.conn, 0, 10)] == [(1, 1), (2, 3)]
        check_last_seqs(store)
    finally:
        store.close()


# -- the migration ------------------------------------------------------------------------------


def test_migration_from_schema_7_backfills_seq_and_drops_the_index(tmp_path: Path) -> None:
    """A real file at the previous schema: rows with changes, a row mirrored before the log,
    a record field already called `_seq`. Schema 8 keeps the field under a column of its
    own, points each row at its greatest seq, and drops the index that lookup used."""
    path = tmp_path / "v7.db"
    old = Store(path, migrate_to=7, record_changes=False)
    try:
        assert old.schema_version() == 7
        assert old.conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_changes_record'").fetchone()
        with old.db.atomic():
            old.write_records("orders", [(order(1, "placed", gift=True), 1, "poll")], synced_at=SYNCED)
            old.write_records("orders", [({**order(1, "placed"), "id": 2}, 1, "poll")], synced_at=SYNCED)
            # What schema 7 did with a record's `_seq` field: a column of that name.
            old.conn.execute('ALTER TABLE orders ADD COLUMN "_seq"')
            old.conn.execute(
                "INSERT INTO _fields (resource, field, col) VALUES ('orders', ?, '_seq')",
                (field_key("_seq"),),
            )
            old.conn.execute("UPDATE orders SET \"_seq\" = 'a field' WHERE id = 1")

            def logged(version: int, status: str, previous: dict[str, Any] | None) -> Any:
                return new_change(
                    mirror="m",
                    resource="orders",
                    record_id=1,
                    kind=ChangeKind.CREATED if previous is None else ChangeKind.UPDATED,
                    source=ChangeSource.POLL,
                    data=order(version, status, gift=True),
                    version=version,
                    previous=previous,
                    previous_version=None if previous is None else version - 1,
                    at=SYNCED,
                )

            first = logged(1, "placed", None)
            changelog.append(old.conn, [first, logged(1, "placed", dict(first.data))])
            other = new_change(
                mirror="m",
                resource="customers",
                record_id="1",
                kind=ChangeKind.CREATED,
                source=ChangeSource.POLL,
                data={"id": "1"},
                version=1,
                previous=None,
                previous_version=None,
                at=SYNCED,
            )
            changelog.append(old.conn, [other])
    finally:
        old.close()

    store = Store(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 8
        assert (
            store.conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_changes_record'").fetchone()
            is None
        )
        rows = store.conn.execute('SELECT id, _seq, "_seq~2" FROM orders ORDER BY id').fetchall()
        # Order 1's greatest seq is 2 (seq 3 is customer "1", not order 1); order 2 has none.
        assert rows == [(1, 2, "a field"), (2, None, None)]
        assert store.field_columns("orders")["_seq"] == "_seq~2"
        assert store.mirror_contents("orders", [1])[1]["_seq"] == "a field"
        apply_batch(
            store,
            [as_change("orders", order(2, "shipped", gift=False), "poll")],
            synced_at=SYNCED,
        )
        change = changelog.read_after(store.conn, 3, 10)[0]
        assert (change.previous_version, change.event) == (1, "order.shipped")
        # Chained on the logged JSON (true), not the row's 1.
        assert change.changed == {
            "status": {"from": "placed", "to": "shipped"},
            "gift": {"from": True, "to": False},
        }
        assert last_seq(store) == change.seq == 4
        check_last_seqs(store)
    finally:
        store.close()


def test_a_new_store_has_seq_and_no_record_index(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.db")
    try:
        for resource in RESOURCES:
            assert "_seq" in store.columns(resource)
        indexes = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "_changes_record" not in indexes
    finally:
        store.close()
