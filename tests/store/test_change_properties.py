"""The change log's guarantees as properties, over any delivery sequence (the reconciler's
strategies: any order, duplication and mix of webhook, poll and fetch copies, in random
batches), with same-version rival copies, poison records that apply has to isolate, full
relists that tombstone, and redeliveries that restore. Each example runs on a fresh SQLite
file; what the log says is checked against the mirror's rows read back from the store and
against a reference implementation of issue 13's event table written here."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.contract import RESOURCES
from syncd.core.changes import Change, ChangeKind
from syncd.core.records import Change as RecordChange
from syncd.core.records import RecordId, Source
from syncd.core.values import to_stored_value
from syncd.poll.listing_guards import RelistGuard
from syncd.poll.transactions import commit_page, finish_listing
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from tests.core.test_reconcile_properties import (
    SOURCES,
    Record,
    as_change,
    converged,
    deliveries,
    histories,
    splits,
)

Key = tuple[str, RecordId]
#: A mirror row as the properties compare it: (version, deleted, content as stored).
Row = tuple[int, bool, dict[str, Any]]

SYNCED = "2026-12-01T10:00:00.123Z"
#: Spares nothing: every record was changed and synced before it.
FAR_FUTURE = "2999-01-01T00:00:00.000Z"

CHANGE_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# -- programs: batches of deliveries, relists and poison ------------------------------------


@dataclass(frozen=True)
class Apply:
    batch: list[RecordChange]
    #: The record of the poison copy in the batch, if it has one.
    poisoned: Key | None = None


@dataclass(frozen=True)
class Relist:
    pass


Step = Apply | Relist


@st.composite
def stocked_histories(draw: st.DrawFn, max_records: int = 6) -> list[Record]:
    """The reconciler's histories, with inventory states that carry a quantity and a
    threshold (sometimes missing or not a number), so `inventory.low` can happen."""
    out = []
    for record in draw(histories(max_records=max_records)):
        if record.resource == "inventory":
            states = []
            for state in record.states:
                stock = {
                    "quantity": draw(st.integers(0, 9) | st.none() | st.just("4")),
                    "threshold": draw(st.sampled_from([3, 5, None])),
                }
                states.append({**state, **stock})
            record = replace(record, states=tuple(states))
        out.append(record)
    return out


@st.composite
def with_rivals(draw: st.DrawFn, changes: list[RecordChange]) -> list[RecordChange]:
    """Some same-version copies with other content (a buggy upstream), from any source: the
    ordering rule may take them, which is a change at the same version."""
    extra = []
    for change in changes:
        if draw(st.integers(0, 7)) == 0:
            data = {**change.data, "status": draw(st.sampled_from(["shipped", "cancelled", "rival"]))}
            extra.append(as_change(change.resource, data, draw(st.sampled_from(SOURCES))))
    return draw(st.permutations([*changes, *extra]))


_poison_ids = itertools.count(1_000_000)


def poison(history: Sequence[Record], pick: int, source: Source) -> RecordChange:
    """A record value no column can hold: apply rejects the record and keeps the rest. Either
    a newer version of a known record or a record never seen."""
    if pick < len(history):
        target = history[pick]
        rid, resource, version = target.id, target.resource, len(target.states) + 5
    else:
        rid, resource, version = next(_poison_ids), "orders", 1
    data = {"id": rid, "version": version, "updatedAt": "2026-12-01T09:00:00.000Z", "unstorable": object()}
    return RecordChange(resource, rid, version, str(data["updatedAt"]), data, source)


@st.composite
def programs(draw: st.DrawFn, *, poisons: bool = True) -> tuple[list[Record], list[Step]]:
    history = draw(stocked_histories())
    changes = draw(with_rivals(draw(deliveries(history))))
    steps: list[Step] = []
    for batch in draw(splits(changes)):
        if draw(st.integers(0, 3)) == 0:
            steps.append(Relist())
        if poisons and draw(st.integers(0, 3)) == 0:
            bad = poison(history, draw(st.integers(0, len(history))), draw(st.sampled_from(SOURCES)))
            batch.insert(draw(st.integers(0, len(batch))), bad)
            steps.append(Apply(batch, poisoned=(bad.resource, bad.id)))
        else:
            steps.append(Apply(batch))
    # Tombstone what upstream deleted, then bring some of it back (a late webhook, a fetch)
    # and relist again, so deleted, restored and deleted-again all happen.
    steps.append(Relist())
    again = [
        as_change(
            r.resource, r.states[draw(st.integers(0, len(r.states) - 1))], draw(st.sampled_from(SOURCES))
        )
        for r in history
        if r.deleted and draw(st.booleans())
    ]
    if again:
        steps.append(Apply(again))
        if draw(st.booleans()):
            steps.append(Relist())
    return history, steps


# -- running a program against a real store ------------------------------------------------


_files = itertools.count()


@contextmanager
def file_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / f"mirror-{next(_files)}.db")
    try:
        yield store
    finally:
        store.close()


def relist(store: Store, history: Sequence[Record], generation: int) -> None:
    """A full listing of every resource (the live records at their final state) through the
    poller's own transactions: the page commit, then the tombstoning with its changes."""
    for resource in RESOURCES:
        listed = [
            as_change(r.resource, r.final, "poll")
            for r in history
            if r.resource == resource and not r.deleted
        ]
        commit_page(store, resource, listed, None, generation, 0.0)
        guard = RelistGuard(generation, FAR_FUTURE, 0, 1.0, 0, True)
        finish_listing(store, resource, 0.0, len(listed), guard)


def stored_value_content(data: Mapping[str, Any]) -> dict[str, Any]:
    """A change's data as the mirror stores it (field -> column value, NULLs dropped)."""
    return {k: to_stored_value(v) for k, v in data.items() if v is not None}


def by_record(changes: Sequence[Change]) -> dict[Key, list[Change]]:
    out: dict[Key, list[Change]] = defaultdict(list)
    for change in changes:
        out[(change.resource, change.record_id)].append(change)
    return out


@dataclass
class Run:
    """Everything a program left: the whole log as read after each step, and per step the
    mirror before and after with the changes it appended."""

    log: list[Change]
    steps: list[tuple[Step, dict[Key, Row], dict[Key, Row], list[Change]]]


def run(store: Store, history: Sequence[Record], steps: Sequence[Step], *, generation: int = 0) -> Run:
    done = Run([], [])
    seq = changelog.head(store.conn)
    for step in steps:
        before = converged(store)
        if isinstance(step, Relist):
            generation += 1
            relist(store, history, generation)
        else:
            apply_batch(store, step.batch, synced_at=SYNCED)
        after = converged(store)
        new = changelog.read_after(store.conn, seq, 1_000_000)
        if new:
            seq = new[-1].seq
        done.steps.append((step, before, after, new))
        done.log.extend(new)
    return done


# -- the reference: issue 13's event table and `changed`, written out independently ----------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def low(state: Mapping[str, Any] | None) -> bool:
    if state is None:
        return False
    quantity, threshold = state.get("quantity"), state.get("threshold")
    return _number(quantity) and _number(threshold) and quantity < threshold


FIXED = {
    "orders": ("order.created", "order.deleted", "order.restored"),
    "customers": ("customer.registered", "customer.deleted", "customer.restored"),
    "inventory": ("inventory.created", "inventory.deleted", "inventory.restored"),
}


def expected_event(
    resource: str, kind: ChangeKind, previous: Mapping[str, Any] | None, data: Mapping[str, Any]
) -> str:
    created, deleted, restored = FIXED[resource]
    if kind is ChangeKind.CREATED:
        return created
    if kind is ChangeKind.DELETED:
        return deleted
    if kind is ChangeKind.RESTORED:
        return restored
    if resource == "orders":
        status = data.get("status")
        was = None if previous is None else previous.get("status")
        if status in ("shipped", "completed", "cancelled") and status != was:
            return f"order.{status}"
        return "order.updated"
    if resource == "inventory":
        return "inventory.low" if low(data) and not low(previous) else "inventory.updated"
    return "customer.updated"


def json_same(a: Any, b: Any) -> bool:
    """Equality as JSON has it: a boolean is not a number, 1 and 1.0 are one number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_same(x, y) for x, y in zip(a, b, strict=True))
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def expected_changed(previous: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in (previous.keys() | data.keys()) - {"version", "updatedAt"}:
        old, new = previous.get(key), data.get(key)
        if not json_same(old, new):
            out[key] = {"from": old, "to": new}
    return out


# -- the checks ------------------------------------------------------------------------------


def expected_kind(before: Row | None, after: Row) -> ChangeKind:
    if before is None:
        return ChangeKind.CREATED
    if before[1]:
        return ChangeKind.RESTORED
    return ChangeKind.DELETED if after[1] else ChangeKind.UPDATED


def check_steps(done: Run, earlier: Sequence[Change] = ()) -> None:
    """Per step and record: as many changes as times its stored state changed (one, or none
    for duplicates, stale copies and confirmations), of the kind the transition is; and the
    record's last change is its mirror row. `earlier`: the changes before the run."""
    last: dict[Key, Change] = {key: chain[-1] for key, chain in by_record(earlier).items()}
    for step, before, after, new in done.steps:
        appended = by_record(new)
        for key in before.keys() | after.keys() | appended.keys():
            state_changed = before.get(key) != after.get(key)
            count = len(appended.get(key, ()))
            if isinstance(step, Apply) and step.poisoned == key and state_changed:
                # Isolating a poison copy of this very record cuts its copies apart; each
                # part that writes it logs a change.
                assert count >= 1, (key, before.get(key), after.get(key))
            else:
                assert count == (1 if state_changed else 0), (step, key, before.get(key), after.get(key), new)
            if count == 1:
                assert appended[key][0].kind is expected_kind(before.get(key), after[key])
            if count:
                last[key] = appended[key][-1]
        assert last.keys() == after.keys()
        for key, row in after.items():
            change = last[key]
            assert (change.version, change.kind is ChangeKind.DELETED) == (row[0], row[1])
            assert stored_value_content(change.data) == row[2], key


def check_chains(log: Sequence[Change]) -> None:
    """Per record: previous_version is the prior change's version (None first), versions
    never decrease, kinds follow a valid sequence, events and `changed` are the reference's."""
    for key, chain in by_record(log).items():
        prior: Change | None = None
        for change in chain:
            if prior is None:
                assert change.previous_version is None
                assert change.kind is ChangeKind.CREATED, key
            else:
                assert change.previous_version == prior.version, key
                assert change.version >= prior.version, key
                assert change.kind is not ChangeKind.CREATED
                if change.kind is ChangeKind.DELETED:
                    assert prior.kind is not ChangeKind.DELETED
                if change.kind is ChangeKind.RESTORED or change.kind is ChangeKind.UPDATED:
                    assert (change.kind is ChangeKind.RESTORED) == (prior.kind is ChangeKind.DELETED)
            previous = None if prior is None else prior.data
            assert change.event == expected_event(change.resource, change.kind, previous, change.data), (
                prior,
                change,
            )
            if change.kind is ChangeKind.CREATED or change.kind is ChangeKind.DELETED:
                assert change.changed is None
            else:
                assert previous is not None
                assert change.changed == expected_changed(previous, change.data)
            if change.kind is ChangeKind.DELETED:
                assert prior is not None
                assert change.version == change.previous_version
                assert change.data == prior.data, "a deleted change carries the last known state"
            prior = change


def check_seqs(log: Sequence[Change], first: int = 1) -> None:
    assert [c.seq for c in log] == list(range(first, first + len(log))), "seqs increase without holes"


# -- properties ------------------------------------------------------------------------------


@CHANGE_SETTINGS
@given(program=programs())
def test_one_change_per_committed_state_and_none_otherwise(
    tmp_path: Path, program: tuple[list[Record], list[Step]]
) -> None:
    history, steps = program
    with file_store(tmp_path) as store:
        done = run(store, history, steps)
        check_steps(done)
        assert changelog.head(store.conn) == len(done.log)


@CHANGE_SETTINGS
@given(program=programs())
def test_each_record_s_changes_form_a_chain_with_the_table_s_events(
    tmp_path: Path, program: tuple[list[Record], list[Step]]
) -> None:
    history, steps = program
    with file_store(tmp_path) as store:
        done = run(store, history, steps)
        check_chains(done.log)
        check_seqs(done.log)
        # Every tombstone is logged and every tombstoned record still has its deleted change.
        kinds = {c.kind for c in done.log}
        if any(isinstance(s, Relist) for s in steps) and any(row[1] for row in converged(store).values()):
            assert ChangeKind.DELETED in kinds


@CHANGE_SETTINGS
@given(program=programs(poisons=False))
def test_without_poison_each_state_change_is_exactly_one_change(
    tmp_path: Path, program: tuple[list[Record], list[Step]]
) -> None:
    """The same deliveries with no record to isolate: every step's count is exact."""
    history, steps = program
    with file_store(tmp_path) as store:
        done = run(store, history, steps)
        for _step, before, after, new in done.steps:
            appended = by_record(new)
            for key in before.keys() | after.keys():
                assert len(appended.get(key, ())) == (1 if before.get(key) != after.get(key) else 0)
        check_seqs(done.log)


@CHANGE_SETTINGS
@given(data=st.data(), first=programs(), second=programs())
def test_seqs_are_never_reused_after_pruning(
    tmp_path: Path,
    data: st.DataObject,
    first: tuple[list[Record], list[Step]],
    second: tuple[list[Record], list[Step]],
) -> None:
    history, steps = first
    with file_store(tmp_path) as store:
        before = run(store, history, steps)
        head = changelog.head(store.conn)
        keep = data.draw(st.integers(0, head), label="keep_after_seq")
        with store.db.atomic():
            changelog.prune(store.conn, before_at=FAR_FUTURE, keep_after_seq=keep)
        assert [c.seq for c in changelog.read_after(store.conn, 0, 1_000_000)] == [
            c.seq for c in before.log if c.seq > keep
        ]
        assert changelog.head(store.conn) == head
        # More deliveries, of the same records and others: every new seq is past every old one.
        more_history, more_steps = second
        after = run(store, [*history, *more_history], more_steps, generation=100)
        check_seqs(after.log, first=head + 1)
        # A record whose previous change was pruned still chains on (to its mirror row).
        check_steps(after, before.log)
        earlier = {key: chain[-1] for key, chain in by_record(before.log).items()}
        for key, chain in by_record(after.log).items():
            if key in earlier:
                assert chain[0].previous_version == earlier[key].version


def test_isolating_a_poison_record_does_not_log_another_record_twice(tmp_path: Path) -> None:
    """The case the properties reach only rarely: the bisection that isolates the poison
    must not cut another record's copies apart (two writes, two changes, for one state)."""
    states = tuple(
        {"id": 1, "status": s, "version": v, "updatedAt": f"2024-01-15T10:0{v}:00.000Z"}
        for v, s in ((1, "placed"), (2, "shipped"))
    )
    record = Record("orders", 1, states, False)
    batch = [
        as_change("orders", states[0], "webhook"),
        poison([], 0, "poll"),
        as_change("orders", states[1], "poll"),
    ]
    with file_store(tmp_path) as store:
        done = run(store, [record], [Apply(batch, poisoned=(batch[1].resource, batch[1].id))])
        check_steps(done)
        [change] = done.log
        assert (change.kind, change.version, change.event) == (ChangeKind.CREATED, 2, "order.created")
