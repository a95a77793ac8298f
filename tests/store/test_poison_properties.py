"""Property: arbitrary JSON records, hostile ones mixed with good ones, through parse ->
reconcile -> store on a real SQLite database, by both paths. Every record ends mirrored or
dead-lettered with a reason, nothing escapes the batch, every good record is mirrored,
and every mirrored record compares equal to itself when delivered again."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from syncd.core.reconcile import Outcome
from syncd.core.records import Change, parse_record
from syncd.errors import RecordError
from syncd.poll.transactions import Rejected, commit_page
from syncd.push.inbox_worker import commit_outcomes
from syncd.push.processor import EventProcessor, InboxItem
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.timefmt import format_epoch
from tests.webhook_support import order

#: A column limit generated records reach (orders start with 16 columns): a record whose new
#: fields would pass it must become a dead letter, never fail the batch.
COLUMN_LIMIT = 22
NOW = 1_700_000_000.0

# The whole of Unicode, lone surrogates and NUL included, surrogates drawn often enough.
chars = st.characters(exclude_categories=()) | st.characters(categories=["Cs"]) | st.just("\x00")
names = st.sampled_from(
    [
        "id",
        "ID",
        "Total",
        "total",
        "TOTAL",
        "_version",
        "_VERSION",
        "_deleted",
        "_listed",
        "_source",
        "a\x00b",
        "",
    ]
) | st.text(chars, max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(chars, max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
ids = (
    st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**63 + 2)
    | st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2)
    | st.text(chars, max_size=4)
    | st.floats(allow_nan=True)
    | st.booleans()
    | st.none()
)
versions = (
    st.integers(min_value=-2, max_value=5) | st.integers(min_value=2**63 - 2, max_value=2**64) | st.floats()
)


@st.composite
def hostile(draw: st.DrawFn) -> dict[str, Any]:
    """A record with hostile fields; half the time its id or version is hostile too (or
    missing), the rest of the time they are valid so the record reaches the store."""
    record: dict[str, Any] = order(0)
    if draw(st.booleans()):
        record["id"] = draw(ids)
        if draw(st.booleans()):
            record["version"] = draw(versions)
    else:
        record["id"] = draw(st.integers(min_value=0, max_value=20) | st.text(max_size=3))
        record["version"] = draw(st.integers(min_value=1, max_value=3))
    record.update(draw(st.dictionaries(names, values, max_size=14)))
    if isinstance(record.get("id"), str) and record["id"].startswith("good-"):
        record["id"] = "hostile"
    return record


batches = st.tuples(
    st.lists(hostile(), max_size=8),
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)


def good_records(good_versions: list[int]) -> list[dict[str, Any]]:
    return [order(f"good-{i}", version) for i, version in enumerate(good_versions)]  # type: ignore[arg-type]


@contextmanager
def store() -> Iterator[Store]:
    s = Store(":memory:")
    s.conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, COLUMN_LIMIT)
    try:
        yield s
    finally:
        s.close()


def _mapped(s: Store) -> bool:
    return any(field != col for field, col in s.field_columns("orders").items())


def assert_good_mirrored(s: Store, good: list[dict[str, Any]]) -> None:
    rows = dict(s.conn.execute("SELECT id, _version FROM orders WHERE id LIKE 'good-%'").fetchall())
    assert rows == {r["id"]: r["version"] for r in good}


def assert_redelivery_writes_nothing(s: Store, changes: list[Change]) -> None:
    # What the mirror took compares equal to itself: a re-delivery is a duplicate (or stale
    # next to a greater copy of the same record), never a write.
    again = apply_batch(s, changes, synced_at=format_epoch())
    assert again.written == 0, again.counts
    assert Outcome.INVALID.value not in again.counts


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(batches)
def test_any_listing_page_is_mirrored_or_dead_lettered(batch: tuple[Any, ...]) -> None:
    bad, good_versions, rnd = batch
    good = good_records(good_versions)
    records = bad + good
    rnd.shuffle(records)
    with store() as s:
        apply_batch(s, [parse_record("orders", order(999), "poll")], synced_at=format_epoch())
        # As the poller prepares a page: what does not parse is rejected with its reason.
        changes: list[Change] = []
        rejected: list[Rejected] = []
        for obj in records:
            try:
                changes.append(parse_record("orders", obj, "poll"))
            except RecordError as exc:
                rejected.append((obj, exc.reason, None))
        result, _ = commit_page(s, "orders", changes, None, None, NOW, rejected)
        invalid = [i for i, o in enumerate(result.outcomes) if o is Outcome.INVALID]
        assert set(invalid) == set(result.reasons)
        assert all(result.reasons.values())
        letters = s.conn.execute("SELECT reason, source, resource FROM _dead_letters").fetchall()
        assert len(letters) == len(rejected) + len(invalid)
        event(f"rejected when parsed: {bool(rejected)}, when stored: {bool(invalid)}")
        assert all(
            reason and source == "poll" and resource == "orders" for reason, source, resource in letters
        )
        mirrored = {rid for (rid,) in s.conn.execute("SELECT id FROM orders")}
        kept = [c for i, c in enumerate(changes) if i not in result.reasons]
        assert {c.id for c in kept} <= mirrored
        assert 999 in mirrored  # stored before, not lost
        assert_good_mirrored(s, good)
        assert_redelivery_writes_nothing(s, kept)


@SETTINGS
@given(batches)
def test_any_webhook_batch_is_mirrored_or_dead_lettered(batch: tuple[Any, ...]) -> None:
    bad, good_versions, rnd = batch
    good = good_records(good_versions)
    records = bad + good
    rnd.shuffle(records)
    items = [
        InboxItem(
            f"evt_{i}",
            NOW,
            json.dumps({"eventId": f"evt_{i}", "event": "order.updated", "data": record}).encode(),
            seq=i + 1,
        )
        for i, record in enumerate(records)
    ]
    with store() as s:
        settled = asyncio.run(EventProcessor(None, fetch_thin=False).prepare(items))
        outcomes = commit_outcomes(s, settled, NOW)
        assert len(outcomes) == len(items)
        invalid = {x.item.event_id: x.reason for x in settled if x.outcome == "invalid"}
        assert all(invalid.values())
        assert set(outcomes) <= {o.value for o in Outcome}
        letters = dict(s.conn.execute("SELECT event_id, reason FROM _dead_letters").fetchall())
        assert set(letters) == set(invalid)
        event(f"dead letters: {bool(letters)}; mapped columns: {_mapped(s)}")
        assert_good_mirrored(s, good)
        kept = [x.change for x in settled if x.change is not None and x.outcome != "invalid"]
        mirrored = {rid for (rid,) in s.conn.execute("SELECT id FROM orders")}
        assert {c.id for c in kept} <= mirrored
        assert_redelivery_writes_nothing(s, kept)
