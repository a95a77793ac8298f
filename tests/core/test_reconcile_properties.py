"""Convergence of the reconciler, property-tested against real SQLite.

A history is a set of records, each with versions 1..k (its states) and maybe a hard delete
upstream. A delivery sequence is any permutation of the states with each state dropped or
repeated and tagged with any source, as long as the final state of every record that still
exists arrives at least once. Deletes reach the mirror only through a full relist (the API
has no delete event), modelled after the deliveries.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.contract import RESOURCES
from syncd.core.reconcile import Outcome, content_of, digest
from syncd.core.records import AUTHORITY, Change, RecordId, Source
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.schema import RESERVED_FIELDS
from syncd.timefmt import format_epoch

FAR_FUTURE = "9999-12-31T00:00:00.000Z"
TS = "2024-01-15T10:00:00.000Z"
SOURCES: tuple[Source, ...] = ("webhook", "poll", "fetch")
Key = tuple[str, RecordId]

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Record:
    resource: str
    id: RecordId
    states: tuple[dict[str, Any], ...]  # index k holds version k + 1
    deleted: bool

    @property
    def key(self) -> Key:
        return (self.resource, self.id)

    @property
    def final(self) -> dict[str, Any]:
        return self.states[-1]


def as_change(resource: str, data: dict[str, Any], source: Source) -> Change:
    return Change(resource, data["id"], data["version"], data["updatedAt"], data, source)


fields = st.fixed_dictionaries(
    {"status": st.sampled_from(["placed", "approved", "shipped", "completed", "cancelled"])},
    optional={
        "total": st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-(2**70), 2**70),
        "items": st.lists(
            st.fixed_dictionaries({"product": st.text(max_size=5), "quantity": st.integers(0, 9)}),
            max_size=2,
        ),
        "note": st.none() | st.text(max_size=8),
        "giftWrap": st.booleans(),
        "meta": st.dictionaries(st.text(max_size=3), st.integers() | st.none(), max_size=2),
    },
)


@st.composite
def histories(draw: st.DrawFn, max_records: int = 8) -> list[Record]:
    count = draw(st.integers(1, max_records))
    records = []
    for i in range(count):
        resource = draw(st.sampled_from(RESOURCES))
        rid: RecordId = i if resource == "orders" else f"{resource[:3]}_{i}"
        states = []
        for version in range(1, draw(st.integers(1, 4)) + 1):
            data: dict[str, Any] = {"id": rid, **draw(fields)}
            data["updatedAt"] = f"2024-01-15T10:{version:02d}:{i % 60:02d}.000Z"
            data["version"] = version
            states.append(data)
        records.append(Record(resource, rid, tuple(states), draw(st.booleans())))
    return records


@st.composite
def deliveries(draw: st.DrawFn, history: Sequence[Record]) -> list[Change]:
    """Each state 0..3 times (the final state of a live record at least once), any order,
    any source."""
    items = []
    for record in history:
        for k, data in enumerate(record.states):
            must_arrive = k == len(record.states) - 1 and not record.deleted
            for _ in range(draw(st.integers(1 if must_arrive else 0, 3))):
                items.append(as_change(record.resource, data, draw(st.sampled_from(SOURCES))))
    return draw(st.permutations(items))


@st.composite
def splits(draw: st.DrawFn, changes: Sequence[Change]) -> list[list[Change]]:
    # Anything from one batch to one change per batch.
    gaps = draw(st.lists(st.booleans(), min_size=max(len(changes) - 1, 0), max_size=max(len(changes) - 1, 0)))
    bounds = [0, *(i + 1 for i, cut in enumerate(gaps) if cut), len(changes)]
    return [list(changes[a:b]) for a, b in itertools.pairwise(bounds)]


@contextmanager
def fresh_store() -> Iterator[Store]:
    store = Store(":memory:")
    try:
        yield store
    finally:
        store.close()


def snapshot(store: Store) -> dict[Key, dict[str, Any]]:
    """Every mirror row, bookkeeping included."""
    out = {}
    for resource in RESOURCES:
        cur = store.conn.execute(f"SELECT * FROM {resource}")
        names = [d[0] for d in cur.description]
        for row in cur:
            out[(resource, row[0])] = dict(zip(names, row, strict=True))
    return out


def converged(store: Store) -> dict[Key, tuple[int, bool, dict[str, Any]]]:
    """What must agree between runs: version, tombstone and content (field columns, NULLs
    dropped). Bookkeeping such as _source and _synced_at may differ."""
    return {
        key: (
            row["_version"],
            bool(row["_deleted"]),
            {k: v for k, v in row.items() if k not in RESERVED_FIELDS and v is not None},
        )
        for key, row in snapshot(store).items()
    }


def expected_state(
    resource: str, data: dict[str, Any], *, deleted: bool = False
) -> tuple[int, bool, dict[str, Any]]:
    return (data["version"], deleted, content_of(as_change(resource, data, "poll")))


def greatest_delivered(history: Sequence[Record], changes: Sequence[Change]) -> dict[Key, int]:
    best: dict[Key, int] = {}
    for c in changes:
        key = (c.resource, c.id)
        best[key] = max(best.get(key, 0), c.version)
    return best


def apply_all(store: Store, batches: Sequence[Sequence[Change]]) -> None:
    for batch in batches:
        apply_batch(store, batch, synced_at=format_epoch())


def relist(store: Store, history: Sequence[Record], generation: int) -> int:
    """A full listing of every resource: the live records at their final state."""
    listing = [as_change(r.resource, r.final, "poll") for r in history if not r.deleted]
    with store.db.atomic():
        apply_batch(store, listing, listed=generation, synced_at=format_epoch())
        return sum(
            len(store.tombstone_unlisted(resource, generation, spare_since=FAR_FUTURE, now=FAR_FUTURE))
            for resource in RESOURCES
        )


# -- properties ------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=st.data(), history=histories())
def test_any_delivery_sequence_converges_to_the_final_states(
    data: st.DataObject, history: list[Record]
) -> None:
    changes = data.draw(deliveries(history), label="deliveries")
    batches = data.draw(splits(changes), label="batches")
    by_key = {r.key: r for r in history}
    delivered = greatest_delivered(history, changes)
    with fresh_store() as store:
        apply_all(store, batches)
        # Live records hold their final state; deleted ones the greatest state delivered.
        expected = {
            key: expected_state(key[0], by_key[key].states[version - 1]) for key, version in delivered.items()
        }
        assert converged(store) == expected
        for record in history:
            if not record.deleted:
                assert converged(store)[record.key] == expected_state(record.resource, record.final)

        tombstoned = relist(store, history, generation=1)
        gone = {r.key for r in history if r.deleted and r.key in delivered}
        assert tombstoned == len(gone)
        after = converged(store)
        assert {key for key, (_, deleted, _) in after.items() if deleted} == gone
        assert {key: state for key, state in after.items() if key not in gone} == {
            r.key: expected_state(r.resource, r.final) for r in history if not r.deleted
        }

        # A tombstoned record seen again is restored, even at the same version.
        again = [
            as_change(k[0], by_key[k].states[delivered[k] - 1], "webhook") for k in sorted(gone, key=str)
        ]
        result = apply_batch(store, again, synced_at=format_epoch())
        assert result.outcomes == [Outcome.RESURRECTED] * len(again)
        assert not any(deleted for _, deleted, _ in converged(store).values())


@PROPERTY_SETTINGS
@given(data=st.data(), history=histories())
def test_applying_a_sequence_twice_changes_nothing(data: st.DataObject, history: list[Record]) -> None:
    changes = data.draw(deliveries(history), label="deliveries")
    batches = data.draw(splits(changes), label="batches")
    with fresh_store() as store:
        apply_all(store, batches)
        before = snapshot(store)
        results = [apply_batch(store, batch, synced_at=format_epoch()) for batch in batches]
        # Not even bookkeeping moves: nothing is rewritten.
        assert snapshot(store) == before
        assert sum(r.written for r in results) == 0
        relist(store, history, generation=1)
        listed = snapshot(store)
        assert relist(store, history, generation=1) == 0
        assert snapshot(store) == listed


@PROPERTY_SETTINGS
@given(data=st.data(), history=histories())
def test_batching_does_not_change_the_result(data: st.DataObject, history: list[Record]) -> None:
    changes = data.draw(deliveries(history), label="deliveries")
    batches = data.draw(splits(changes), label="batches")
    with fresh_store() as one_by_one, fresh_store() as split, fresh_store() as whole:
        apply_all(one_by_one, [[c] for c in changes])
        apply_all(split, batches)
        apply_all(whole, [changes])
        expected = converged(one_by_one)
        assert converged(split) == expected
        assert converged(whole) == expected
        authority = {k: r["_authority"] for k, r in snapshot(one_by_one).items()}
        assert {k: r["_authority"] for k, r in snapshot(split).items()} == authority


@PROPERTY_SETTINGS
@given(data=st.data(), history=histories())
def test_a_stale_change_never_overwrites_a_newer_one(data: st.DataObject, history: list[Record]) -> None:
    changes = data.draw(deliveries(history), label="deliveries")
    batches = data.draw(splits(changes), label="batches")
    by_key = {r.key: r for r in history}
    seen: list[Change] = []
    with fresh_store() as store:
        for batch in batches:
            result = apply_batch(store, batch, synced_at=format_epoch())
            seen.extend(batch)
            state = converged(store)
            for key, version in greatest_delivered(history, seen).items():
                assert state[key] == expected_state(key[0], by_key[key].states[version - 1])
            for change, outcome in zip(batch, result.outcomes, strict=True):
                if change.version < state[(change.resource, change.id)][0]:
                    assert outcome is Outcome.STALE


@PROPERTY_SETTINGS
@given(data=st.data(), history=histories(max_records=5))
def test_every_source_alone_or_mixed_gives_the_same_mirror(
    data: st.DataObject, history: list[Record]
) -> None:
    """Webhook only, poll only, fetch only and a mix converge to the same mirror."""
    changes = data.draw(deliveries(history), label="deliveries")
    results = []
    for source in (*SOURCES, None):
        retagged = [c if source is None else as_change(c.resource, dict(c.data), source) for c in changes]
        with fresh_store() as store:
            apply_all(store, data.draw(splits(retagged), label=f"batches {source}"))
            results.append(converged(store))
    assert all(r == results[0] for r in results)


# -- same-version conflicts ------------------------------------------------------------------


@st.composite
def conflicting_copies(draw: st.DrawFn) -> list[Change]:
    """Copies of one record where a version can carry several contents (a buggy upstream)."""
    copies = []
    for version in range(draw(st.integers(1, 2)), 3):
        for status in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)):
            data = {"id": 1, "status": status, "updatedAt": TS, "version": version}
            for _ in range(draw(st.integers(1, 3))):
                copies.append(as_change("orders", data, draw(st.sampled_from(SOURCES))))
    return copies


def conflict_winner(copies: Sequence[Change]) -> tuple[int, dict[str, Any], int]:
    """The model: the greatest version; among its contents, the highest authority any copy of
    that content had, then the digest."""
    top = max(c.version for c in copies)
    authority: dict[bytes, int] = {}
    contents: dict[bytes, dict[str, Any]] = {}
    for c in copies:
        if c.version == top:
            content = content_of(c)
            d = digest(content)
            contents[d] = content
            authority[d] = max(authority.get(d, 0), AUTHORITY[c.source])
    best = max(authority, key=lambda d: (authority[d], d))
    return top, contents[best], authority[best]


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(data=st.data(), copies=conflicting_copies())
def test_same_version_conflicts_resolve_independently_of_arrival(
    data: st.DataObject, copies: list[Change]
) -> None:
    version, content, authority = conflict_winner(copies)
    # Several arrival orders and batchings of the same copies per example: they must all
    # land on the model's winner.
    for attempt in range(6):
        order = data.draw(st.permutations(copies), label=f"order {attempt}")
        batches = data.draw(splits(order), label=f"batches {attempt}")
        with fresh_store() as store:
            apply_all(store, batches)
            row = snapshot(store)[("orders", 1)]
            assert (row["_version"], row["status"], row["_authority"]) == (
                version,
                content["status"],
                authority,
            )
            assert converged(store)[("orders", 1)] == (version, False, content)


def test_property_store_on_a_file_behaves_like_memory() -> None:
    """The properties run on ':memory:' for speed; the same sequence on a WAL file agrees."""
    history = [
        Record("customers", "cus_1", ({"id": "cus_1", "status": "a", "updatedAt": TS, "version": 1},), True),
        Record(
            "orders",
            1,
            tuple({"id": 1, "status": s, "updatedAt": TS, "version": v} for v, s in ((1, "a"), (2, "b"))),
            False,
        ),
    ]
    changes = [
        as_change("orders", history[1].states[1], "webhook"),
        as_change("customers", history[0].states[0], "poll"),
        as_change("orders", history[1].states[0], "fetch"),
    ]
    with tempfile.TemporaryDirectory() as tmp, fresh_store() as memory:
        on_file = Store(Path(tmp) / "m.db")
        try:
            for store in (on_file, memory):
                apply_all(store, [changes[:1], changes[1:]])
                assert relist(store, history, generation=1) == 1
            assert converged(on_file) == converged(memory)
            assert converged(on_file)[("orders", 1)][:2] == (2, False)
        finally:
            on_file.close()
