import itertools
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from syncd.core.reconcile import (
    BatchPlan,
    Outcome,
    content_of,
    decide,
    digest,
    plan_batch,
)
from syncd.core.records import Change, Source
from syncd.core.values import StoredState
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.mirror import mirror_counts
from syncd.timefmt import format_epoch

FAR_FUTURE = "9999-12-31T00:00:00.000Z"


def change(
    rid: Any = 1, version: int = 1, source: Source = "poll", resource: str = "orders", **fields: Any
) -> Change:
    data = {"id": rid, "status": "placed", "updatedAt": f"2024-01-15T10:00:{version:02d}.000Z", **fields}
    data["version"] = version
    return Change(resource, rid, version, data["updatedAt"], data, source)


def stored_as(c: Change, *, deleted: bool = False, authority: int | None = None) -> StoredState:
    return StoredState(c.version, deleted, c.source, content_of(c), authority)


def mirror(store: Store, resource: str = "orders") -> dict[Any, dict[str, Any]]:
    cur = store.conn.execute(f"SELECT * FROM {resource}")
    names = [d[0] for d in cur.description]
    return {r[0]: dict(zip(names, r, strict=True)) for r in cur}


# -- decide ----------------------------------------------------------------------------------


def test_new_record_is_applied() -> None:
    assert decide(None, change()) is Outcome.APPLIED


def test_newer_version_is_applied_older_is_stale() -> None:
    stored = StoredState(5, False, "webhook")
    assert decide(stored, change(version=6)) is Outcome.APPLIED
    assert decide(stored, change(version=4, source="fetch")) is Outcome.STALE


def test_same_version_same_content_is_a_duplicate() -> None:
    c = change(version=3, items=[{"b": 1, "a": 2}], total=9.5)
    again = change(version=3, items=[{"a": 2, "b": 1}], total=9.5, source="webhook")
    assert decide(stored_as(c), again) is Outcome.DUPLICATE


def test_nulls_are_absent_fields_for_comparison() -> None:
    assert decide(stored_as(change(note=None)), change()) is Outcome.DUPLICATE


def test_same_version_needs_the_stored_content() -> None:
    with pytest.raises(ValueError, match=r"orders 1 v1: .* needs the stored content"):
        decide(StoredState(1, False, "poll"), change())


def test_api_read_beats_webhook_snapshot_in_a_conflict() -> None:
    hook = change(status="shipped", source="webhook")
    for source in ("poll", "fetch"):
        api: Change = change(status="approved", source=source)  # type: ignore[arg-type]
        assert decide(stored_as(hook), api) is Outcome.CONFLICT
        assert decide(stored_as(api), hook) is Outcome.STALE


def test_equal_authority_conflict_is_decided_by_digest_in_either_order() -> None:
    a, b = change(status="approved"), change(status="shipped", source="fetch")
    winner, loser = (a, b) if digest(content_of(a)) > digest(content_of(b)) else (b, a)
    assert decide(stored_as(loser), winner) is Outcome.CONFLICT
    assert decide(stored_as(winner), loser) is Outcome.STALE


def test_stored_authority_counts_over_its_source() -> None:
    # A webhook copy a poll later confirmed ranks as an API read.
    hook = change(status="shipped", source="webhook")
    rival = change(status="approved", source="webhook")
    confirmed = stored_as(hook, authority=2)
    assert decide(confirmed, rival) is Outcome.STALE


def test_tombstoned_record_is_resurrected_even_at_the_same_version() -> None:
    c = change(version=4)
    assert decide(stored_as(c, deleted=True), c) is Outcome.RESURRECTED
    assert decide(StoredState(4, True, "poll"), change(version=5)) is Outcome.RESURRECTED
    assert decide(StoredState(4, True, "poll"), change(version=3)) is Outcome.STALE


def test_only_writing_outcomes_write() -> None:
    assert {o for o in Outcome if o.writes} == {Outcome.APPLIED, Outcome.RESURRECTED, Outcome.CONFLICT}


# -- plan_batch ------------------------------------------------------------------------------


def test_plan_collapses_a_record_to_its_greatest_state() -> None:
    changes = [change(version=2), change(version=5), change(version=3), change(version=5, source="webhook")]
    plan = plan_batch(changes, {})
    assert plan == BatchPlan(
        [Outcome.STALE, Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE],
        writes=[1],
        confirms=[],
    )


def test_plan_decides_only_the_winner_against_the_stored_state() -> None:
    stored = {("orders", 1): StoredState(4, False, "poll")}
    plan = plan_batch([change(version=3), change(version=2)], stored)
    assert plan.outcomes == [Outcome.STALE, Outcome.STALE]
    assert plan.writes == []


def test_plan_keeps_records_and_resources_apart() -> None:
    changes = [
        change(1, 1),
        change(1, 1, resource="customers"),
        change(2, 1),
        change(1, 2),
    ]
    plan = plan_batch(changes, {("customers", 1): stored_as(change(1, 1, resource="customers"))})
    assert plan.outcomes == [Outcome.STALE, Outcome.DUPLICATE, Outcome.APPLIED, Outcome.APPLIED]
    assert plan.writes == [2, 3]


def test_plan_picks_the_api_copy_of_a_same_version_conflict_within_a_batch() -> None:
    hook, api = change(status="shipped", source="webhook"), change(status="approved", source="poll")
    for order in ([hook, api], [api, hook]):
        plan = plan_batch(order, {})
        assert [order[i] for i in plan.writes] == [api]


def test_plan_prefers_the_more_authoritative_of_equal_copies() -> None:
    # Written as an API read, so a later rival webhook copy cannot displace it.
    hook, api = change(source="webhook"), change(source="poll")
    for order in ([hook, api], [api, hook]):
        plan = plan_batch(order, {})
        assert [order[i].source for i in plan.writes] == ["poll"]
        assert sorted(plan.outcomes) == sorted([Outcome.APPLIED, Outcome.DUPLICATE])


def test_plan_confirms_a_webhook_copy_seen_again_by_an_api_read() -> None:
    hook = change(source="webhook")
    plan = plan_batch([change(source="fetch")], {("orders", 1): stored_as(hook)})
    assert plan == BatchPlan([Outcome.DUPLICATE], writes=[], confirms=[0])
    # The same copy seen again by a webhook confirms nothing.
    assert plan_batch([hook], {("orders", 1): stored_as(hook)}).confirms == []


# -- apply_batch against SQLite --------------------------------------------------------------


def test_apply_writes_counts_and_sources(store: Store) -> None:
    result = apply_batch(
        store,
        [change(1, 1, "webhook"), change(2, 1), change(1, 2, "webhook"), change(3, 1, "fetch")],
        synced_at=format_epoch(),
    )
    assert result.outcomes == [Outcome.STALE, Outcome.APPLIED, Outcome.APPLIED, Outcome.APPLIED]
    assert result.counts == {"stale": 1, "applied": 3}
    assert result.written == 3
    rows = mirror(store)
    assert {rid: (r["_version"], r["_source"], r["_authority"]) for rid, r in rows.items()} == {
        1: (2, "webhook", 1),
        2: (1, "poll", 2),
        3: (1, "fetch", 2),
    }
    again = apply_batch(store, [change(1, 2, "webhook"), change(2, 1)], synced_at=format_epoch())
    assert again.counts == {"duplicate": 2}
    assert again.written == 0


def test_apply_conflict_writes_and_logs(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    apply_batch(store, [change(7, 3, "webhook", status="shipped")], synced_at=format_epoch())
    with caplog.at_level(logging.WARNING, logger="syncd.store.apply"):
        result = apply_batch(store, [change(7, 3, "poll", status="approved")], synced_at=format_epoch())
    assert result.outcomes == [Outcome.CONFLICT]
    assert mirror(store)[7]["status"] == "approved"
    assert "conflict: orders 7 v3" in caplog.text


def test_mixed_source_conflict_converges_in_every_arrival_order(store: Store, tmp_path: Path) -> None:
    """Two contents claim version 1; the API read shows one of them. Whatever the order and
    batching, the API's content wins."""
    a_hook = change(status="shipped", source="webhook")
    a_poll = change(status="shipped", source="poll")
    # The rival webhook copy wins the digest tie-break against the first webhook copy, so only
    # the poll's confirmation can keep it out.
    b_hook = next(
        c
        for c in (change(status=s, source="webhook") for s in ("approved", "placed", "completed", "x", "y"))
        if digest(content_of(c)) > digest(content_of(a_hook))
    )
    finals = set()
    for n, order in enumerate(itertools.permutations([a_hook, b_hook, a_poll])):
        for split in range(4):
            s = Store(tmp_path / f"m{n}-{split}.db")
            if split < 3:
                apply_batch(s, list(order[:split]), synced_at=format_epoch())
                apply_batch(s, list(order[split:]), synced_at=format_epoch())
            else:
                for c in order:
                    apply_batch(s, [c], synced_at=format_epoch())
            row = mirror(s)[1]
            finals.add((row["status"], row["_authority"]))
            s.close()
    assert finals == {("shipped", 2)}


def test_confirming_keeps_the_first_source_and_sync_time(store: Store) -> None:
    apply_batch(store, [change(source="webhook")], synced_at=format_epoch())
    before = mirror(store)[1]
    result = apply_batch(store, [change(source="poll")], synced_at=format_epoch())
    after = mirror(store)[1]
    assert result.outcomes == [Outcome.DUPLICATE]
    assert result.written == 0
    assert (after["_source"], after["_synced_at"], after["_authority"]) == (
        "webhook",
        before["_synced_at"],
        2,
    )


def test_relist_tombstones_and_a_record_seen_again_is_restored(store: Store) -> None:
    apply_batch(store, [change(1, 2), change(2, 1, "webhook")], synced_at=format_epoch())
    apply_batch(store, [change(1, 2)], listed=1, synced_at=format_epoch())
    assert len(store.tombstone_unlisted("orders", 1, spare_since=FAR_FUTURE, now=FAR_FUTURE)) == 1
    assert mirror(store)[2]["_deleted"] == 1
    result = apply_batch(store, [change(2, 1, "webhook")], synced_at=format_epoch())
    assert result.outcomes == [Outcome.RESURRECTED]
    assert result.written == 1
    row = mirror(store)[2]
    assert (row["_deleted"], row["_deleted_at"]) == (0, None)


def test_apply_marks_every_listed_record_even_unchanged_ones(store: Store) -> None:
    apply_batch(store, [change(1, 2), change(2, 1)], synced_at=format_epoch())
    result = apply_batch(
        store, [change(1, 1), change(2, 1), change(3, 1)], listed=4, synced_at=format_epoch()
    )
    assert result.outcomes == [Outcome.STALE, Outcome.DUPLICATE, Outcome.APPLIED]
    assert {rid: r["_listed"] for rid, r in mirror(store).items()} == {1: 4, 2: 4, 3: 4}


def test_apply_joins_an_open_transaction(store: Store) -> None:
    def page_then_failing_cursor() -> None:
        with store.db.atomic():
            apply_batch(store, [change(1, 1)], synced_at=format_epoch())
            assert store.conn.in_transaction
            raise RuntimeError("cursor write failed")

    with pytest.raises(RuntimeError, match="cursor write failed"):
        page_then_failing_cursor()
    assert mirror(store) == {}


def test_new_fields_and_removed_fields(store: Store) -> None:
    apply_batch(store, [change(1, 1, giftWrap=True, tags=["a"])], synced_at=format_epoch())
    apply_batch(store, [change(1, 2)], synced_at=format_epoch())
    row = mirror(store)[1]
    assert (row["giftWrap"], row["tags"], row["_version"]) == (None, None, 2)
    # Equal once both sides drop the NULLs: a duplicate, not a conflict.
    assert apply_batch(store, [change(1, 2, giftWrap=None)], synced_at=format_epoch()).outcomes == [
        Outcome.DUPLICATE
    ]


def test_fields_named_like_bookkeeping_are_kept_under_mapped_columns(store: Store) -> None:
    data = {"_version": 99, "_deleted": 1, "_links": {"self": "/orders/1"}}
    apply_batch(store, [change(1, 3, **data)], synced_at=format_epoch())
    row = mirror(store)[1]
    assert (row["_version"], row["_deleted"], row["_links"]) == (3, 0, '{"self":"/orders/1"}')
    assert (row["_version~2"], row["_deleted~2"]) == (99, 1)
    assert apply_batch(store, [change(1, 3, **data)], synced_at=format_epoch()).outcomes == [
        Outcome.DUPLICATE
    ]
    # The field is content like any other: a copy without it differs.
    del data["_deleted"]
    assert apply_batch(store, [change(1, 3, **data)], synced_at=format_epoch()).outcomes != [
        Outcome.DUPLICATE
    ]


def test_string_and_integer_ids_are_distinct_records(store: Store) -> None:
    apply_batch(store, [change(1, 1), change("1", 1)], synced_at=format_epoch())
    assert mirror_counts(store.conn, "orders") == (2, 0)
    assert apply_batch(store, [change("1", 1), change(1, 1)], synced_at=format_epoch()).counts == {
        "duplicate": 2
    }


# -- crashes: a batch is all or nothing --------------------------------------------------------


def test_failing_write_mid_batch_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_batch(store, [change(1, 1)], synced_at=format_epoch())
    before = mirror(store)
    real_write = Store.write_records
    written: list[str] = []

    def write_then_fail(self: Store, resource: str, *args: Any, **kwargs: Any) -> None:
        if written:
            raise OSError(f"disk gone while writing {resource}")
        real_write(self, resource, *args, **kwargs)
        written.append(resource)

    monkeypatch.setattr(Store, "write_records", write_then_fail)
    batch = [change(1, 2), change(2, 1), change("cus_1", 1, resource="customers")]
    with pytest.raises(OSError, match="disk gone while writing customers"):
        apply_batch(store, batch, synced_at=format_epoch())
    assert written == ["orders"]
    assert not store.conn.in_transaction
    assert mirror(store) == before
    assert mirror(store, "customers") == {}


def test_unstorable_value_costs_only_its_record(store: Store) -> None:
    apply_batch(store, [change(1, 1)], synced_at=format_epoch())
    # A value no JSON text exists for fails the second resource's write, after the first's;
    # the batch is rolled back and applied again without it.
    batch = [change(1, 2, note="new column"), change("cus_1", 1, resource="customers", bad={1, 2})]
    result = apply_batch(store, batch, synced_at=format_epoch())
    assert result.outcomes == [Outcome.APPLIED, Outcome.INVALID]
    assert "set is not JSON serializable" in result.reasons[1]
    assert mirror(store)[1]["note"] == "new column"
    assert mirror(store, "customers") == {}
    assert apply_batch(store, [change(1, 2, note="new column")], synced_at=format_epoch()).outcomes == [
        Outcome.DUPLICATE
    ]


KILL_SCRIPT = """
import sys
from syncd.store.apply import apply_batch
from syncd.timefmt import format_epoch
from syncd.core.records import Change
from syncd.store.db import Store

path, n = sys.argv[1], int(sys.argv[2])
store = Store(path)

def order(rid, version):
    data = {"id": rid, "status": "placed", "note": "x" * 200, "updatedAt": "2024-01-15T10:00:00.000Z",
            "version": version}
    return Change("orders", rid, version, data["updatedAt"], data, "poll")

apply_batch(store, [order(i, 1) for i in range(100)], synced_at=format_epoch())
real_write = Store.write_records

def announce(self, resource, records, **kwargs):
    # Orders are written (uncommitted) by now; the customers write is still to come.
    if resource == "customers":
        print("writing", flush=True)
    return real_write(self, resource, records, **kwargs)

Store.write_records = announce
customers = [
    Change("customers", f"cus_{i}", 1, "2024-01-15T10:00:00.000Z",
           {"id": f"cus_{i}", "name": "n" * 200, "updatedAt": "2024-01-15T10:00:00.000Z", "version": 1}, "poll")
    for i in range(n)
]
apply_batch(store, [order(i, 2) for i in range(n)] + customers, synced_at=format_epoch())
print("committed", flush=True)
"""


@pytest.mark.slow
def test_killed_process_leaves_the_whole_batch_or_none(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    n = 100_000
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path), str(n)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line == "writing\n", f"the writer process did not start its batch: {line!r}"
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert "committed" not in rest, "the batch finished before the kill; make it larger"
    assert (tmp_path / "mirror.db-wal").exists()

    reopened = Store(path)
    try:
        assert reopened.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        versions = dict(reopened.conn.execute("SELECT _version, COUNT(*) FROM orders GROUP BY _version"))
        customers = mirror_counts(reopened.conn, "customers")[0]
        # Either the whole batch (every order at v2 and every customer) or none of it.
        assert (versions, customers) in (({1: 100}, 0), ({2: n}, n))
        assert (versions, customers) == ({1: 100}, 0)
    finally:
        reopened.close()
