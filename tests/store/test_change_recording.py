"""The change log written with the mirror: one change per committed state, in the write's
transaction, through the real apply path and a real relist's tombstoning (real SQLite files)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from syncd.core.changes import Change, ChangeKind, ChangeSource
from syncd.core.records import Change as RecordChange
from syncd.core.records import Source
from syncd.poll.listing_guards import RelistGuard
from syncd.poll.transactions import begin_initial_sync, commit_page, finish_listing
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.schema import META_INITIAL_SYNC, META_MIRROR_ID, SCHEMA_VERSION
from syncd.store.writer import Writer

SYNCED = "2026-12-01T10:00:00.123Z"


def order(
    rid: int, version: int, status: str = "placed", source: Source = "poll", **fields: Any
) -> RecordChange:
    data = {"id": rid, "status": status, "version": version, "updatedAt": f"2026-12-01T09:00:0{version}.000Z"}
    data.update(fields)
    return RecordChange("orders", rid, version, str(data["updatedAt"]), data, source)


def item(rid: str, version: int, quantity: int, threshold: int = 5) -> RecordChange:
    data = {"id": rid, "product": "kibble", "quantity": quantity, "threshold": threshold, "version": version}
    return RecordChange("inventory", rid, version, "2026-12-01T09:00:00.000Z", data, "poll")


def logged(store: Store) -> list[Change]:
    return changelog.read_after(store.conn, 0, 10_000)


def test_a_new_store_has_a_mirror_id_and_the_recorder_uses_it(store: Store) -> None:
    mirror_id = store.get_meta(META_MIRROR_ID)
    assert mirror_id is not None
    assert len(mirror_id) == 36
    assert store.recorder is not None
    assert store.recorder.mirror_id == mirror_id
    apply_batch(store, [order(1, 1)], synced_at=SYNCED)
    [change] = logged(store)
    assert change.mirror == mirror_id
    assert change.webhook_id == f"{mirror_id}-{change.seq}"


def test_created_updated_and_derived_events(store: Store) -> None:
    apply_batch(store, [order(1, 1)], synced_at=SYNCED)
    apply_batch(store, [order(1, 2, "approved")], synced_at=SYNCED)
    apply_batch(store, [order(1, 3, "shipped", source="webhook")], synced_at=SYNCED)
    apply_batch(store, [order(1, 4, "shipped", note="left at the door")], synced_at=SYNCED)
    created, approved, shipped, noted = logged(store)
    assert (created.kind, created.event, created.previous_version, created.changed) == (
        ChangeKind.CREATED,
        "order.created",
        None,
        None,
    )
    assert created.data == order(1, 1).data
    assert created.at == SYNCED
    assert created.record_id == 1
    assert (approved.event, approved.previous_version, approved.version) == ("order.updated", 1, 2)
    assert approved.changed == {"status": {"from": "placed", "to": "approved"}}
    assert (shipped.event, shipped.source) == ("order.shipped", ChangeSource.WEBHOOK)
    # Still shipped: something else changed, so it is no news of shipping.
    assert noted.event == "order.updated"
    assert noted.changed == {"note": {"from": None, "to": "left at the door"}}
    assert [c.seq for c in (created, approved, shipped, noted)] == [1, 2, 3, 4]


def test_duplicates_stale_copies_and_confirmations_log_nothing(store: Store) -> None:
    apply_batch(store, [order(1, 2, source="webhook")], synced_at=SYNCED)
    before = logged(store)
    result = apply_batch(
        store,
        [order(1, 2, source="webhook"), order(1, 1), order(1, 2, source="poll")],
        synced_at=SYNCED,
    )
    assert result.counts["duplicate"] == 2
    assert result.counts["stale"] == 1
    assert logged(store) == before


def test_several_copies_of_a_record_in_one_batch_are_one_change(store: Store) -> None:
    apply_batch(
        store, [order(1, 1), order(1, 3, "shipped"), order(1, 2), order(1, 3, "shipped")], synced_at=SYNCED
    )
    [change] = logged(store)
    assert (change.kind, change.version, change.event) == (ChangeKind.CREATED, 3, "order.created")


def test_a_same_version_conflict_is_an_update_at_that_version(store: Store) -> None:
    apply_batch(store, [order(1, 2, "approved", source="webhook")], synced_at=SYNCED)
    apply_batch(store, [order(1, 2, "shipped", source="poll")], synced_at=SYNCED)
    _, conflict = logged(store)
    assert (conflict.kind, conflict.version, conflict.previous_version) == (ChangeKind.UPDATED, 2, 2)
    assert conflict.event == "order.shipped"


def test_inventory_low_only_when_it_becomes_low(store: Store) -> None:
    for version, quantity in enumerate([10, 4, 3, 8, 2], start=1):
        apply_batch(store, [item("sku-1", version, quantity)], synced_at=SYNCED)
    assert [c.event for c in logged(store)] == [
        "inventory.created",
        "inventory.low",
        "inventory.updated",
        "inventory.updated",
        "inventory.low",
    ]


def _relist(store: Store, resource: str, listed: list[RecordChange], generation: int) -> int:
    commit_page(store, resource, listed, None, generation, 0.0)
    # Spares nothing: every record was synced before the far future.
    guard = RelistGuard(generation, "2999-01-01T00:00:00.000Z", 10, 1.0, 100, True)
    tombstoned, _ = finish_listing(store, resource, 0.0, 0, guard)
    return tombstoned


def test_a_relist_logs_deleted_with_the_last_known_state_then_restored(store: Store) -> None:
    apply_batch(
        store, [order(1, 1), order(2, 5, "approved", items=[{"sku": "a", "qty": 1}])], synced_at=SYNCED
    )
    assert _relist(store, "orders", [order(1, 1)], generation=1) == 1
    deleted = logged(store)[-1]
    assert (deleted.kind, deleted.event, deleted.source) == (
        ChangeKind.DELETED,
        "order.deleted",
        ChangeSource.RELIST,
    )
    assert deleted.record_id == 2
    assert deleted.version == deleted.previous_version == 5
    assert deleted.data["items"] == [{"sku": "a", "qty": 1}]
    assert deleted.changed is None
    apply_batch(store, [order(2, 5, "approved", items=[{"sku": "a", "qty": 2}])], synced_at=SYNCED)
    restored = logged(store)[-1]
    assert (restored.kind, restored.event, restored.previous_version) == (
        ChangeKind.RESTORED,
        "order.restored",
        5,
    )
    assert restored.changed == {"items": {"from": [{"sku": "a", "qty": 1}], "to": [{"sku": "a", "qty": 2}]}}


def test_without_a_previous_change_the_mirror_row_is_the_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    before = Store(path, record_changes=False)
    apply_batch(
        before,
        [order(1, 1, "approved", items=[{"sku": "a"}], gift=True, big=2**70, label="[not json]")],
        synced_at=SYNCED,
    )
    before.close()
    store = Store(path)
    try:
        assert logged(store) == []
        apply_batch(
            store,
            [
                order(
                    1,
                    2,
                    "shipped",
                    items=[{"sku": "a"}, {"sku": "b"}],
                    gift=True,
                    big=2**70,
                    label="[not json]",
                )
            ],
            synced_at=SYNCED,
        )
        [change] = logged(store)
        assert change.previous_version == 1
        assert change.event == "order.shipped"
        # Values the store converts (a boolean, a huge integer) and a string that looks like
        # JSON are not reported as changed; the nested list reads back as a list.
        assert change.changed == {
            "status": {"from": "approved", "to": "shipped"},
            "items": {"from": [{"sku": "a"}], "to": [{"sku": "a"}, {"sku": "b"}]},
        }
    finally:
        store.close()


def test_a_poison_record_rolls_back_only_its_own_change_and_seqs_stay_dense(store: Store) -> None:
    # A value no column can hold: the record's own fault, isolated by the savepoint bisection.
    poison = order(3, 1, unstorable=object())
    result = apply_batch(store, [order(1, 1), poison, order(2, 1)], synced_at=SYNCED)
    assert result.counts["invalid"] == 1
    changes = logged(store)
    assert [c.record_id for c in changes] == [1, 2]
    assert [c.seq for c in changes] == [1, 2], "a rolled-back change gives its seq back"
    apply_batch(store, [order(4, 1)], synced_at=SYNCED)
    assert changelog.head(store.conn) == 3


def test_a_failed_transaction_takes_its_changes_with_it(store: Store) -> None:
    def fails_after_applying() -> None:
        with store.db.atomic():
            apply_batch(store, [order(1, 1)], synced_at=SYNCED)
            raise RuntimeError("the cursor write failed")

    with pytest.raises(RuntimeError):
        fails_after_applying()
    assert logged(store) == []
    assert changelog.head(store.conn) == 0


def test_the_initial_sync_of_an_empty_mirror_is_left_out_unless_asked(tmp_path: Path) -> None:
    for include_initial in (False, True):
        store = Store(tmp_path / f"mirror-{include_initial}.db")
        assert store.recorder is not None
        store.recorder.include_initial = include_initial
        try:
            assert begin_initial_sync(store, "orders")
            commit_page(store, "orders", [order(1, 1), order(2, 1)], None, None, 0.0)
            # A crash here leaves the mark: the rest of the first sync is initial too.
            assert store.get_meta(META_INITIAL_SYNC + "orders") is not None
            commit_page(store, "orders", [order(3, 1), order(1, 2, "approved")], None, None, 0.0)
            finish_listing(store, "orders", 0.0, 4, None)
            assert store.get_meta(META_INITIAL_SYNC + "orders") is None
            commit_page(store, "orders", [order(4, 1)], None, None, 0.0)
            changes = [(c.record_id, c.kind.value, c.initial) for c in logged(store)]
            if include_initial:
                assert changes == [
                    (1, "created", True),
                    (2, "created", True),
                    (3, "created", True),
                    (1, "updated", False),
                    (4, "created", False),
                ]
            else:
                # An update during the first sync is a real change of a mirrored record.
                assert changes == [(1, "updated", False), (4, "created", False)]
            assert not begin_initial_sync(store, "orders"), "a mirror that has records is not initial"
        finally:
            store.close()


def test_a_store_without_the_log_records_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "mirror.db", record_changes=False)
    try:
        apply_batch(store, [order(1, 1)], synced_at=SYNCED)
        assert logged(store) == []
    finally:
        store.close()


def test_the_writer_wakes_listeners_after_the_commit_not_before(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    writer = Writer(lambda: Store(path))
    writer.start()
    seen: list[int] = []
    woken = threading.Event()

    def listener() -> None:
        # Another connection sees the change: the listener runs after the commit.
        reader = sqlite3.connect(path)
        try:
            seen.append(changelog.head(reader))
        finally:
            reader.close()
        woken.set()

    try:
        recorder = writer.call(lambda store: store.recorder)
        recorder.add_listener(listener)
        writer.call(lambda store: apply_batch(store, [order(1, 2)], synced_at=SYNCED))
        assert woken.wait(5)
        assert seen == [1]
        woken.clear()
        writer.call(lambda store: apply_batch(store, [order(1, 2)], synced_at=SYNCED))
        assert not woken.is_set(), "a duplicate appends nothing and wakes nobody"
    finally:
        writer.stop()


def test_a_v5_store_migrates_to_the_log(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    old = Store(path, migrate_to=5)
    assert old.recorder is None
    apply_batch(old, [order(1, 1)], synced_at=SYNCED)
    old.close()
    store = Store(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.recorder is not None
        apply_batch(store, [order(1, 2, "cancelled")], synced_at=SYNCED)
        [change] = logged(store)
        assert (change.event, change.previous_version) == ("order.cancelled", 1)
    finally:
        store.close()
