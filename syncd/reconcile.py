"""The reconciliation engine: pure decisions, then batch apply through the store.

Ordering rule. The states of one record are totally ordered by the key
    (version, authority of the source, content digest)
where an API read (`poll`, `fetch`) has more authority than a webhook snapshot, and the
digest (BLAKE2b of canonical JSON) only breaks the tie between two different contents
claiming the same version from equally authoritative sources, which the contract never
produces but a buggy or hostile upstream can. The mirror holds, per record, the greatest
state it has been shown. A maximum does not depend on the order or the number of times
states are delivered, which is what makes both paths and any retry pattern converge.

Tombstones are the one exception the design asks for: a record that a full listing no
longer returns is marked deleted, and a tombstoned record seen again is restored, even at
the same version (the listing may simply not have shown it yet).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from syncd.records import Change, RecordId
from syncd.store import Store, StoredState, to_column_value, utc_iso

log = logging.getLogger("syncd.reconcile")

_AUTHORITY = {"webhook": 1, "poll": 2, "fetch": 2}


class Outcome(StrEnum):
    APPLIED = "applied"  # new record or newer version written
    RESURRECTED = "resurrected"  # tombstoned record seen again, restored
    CONFLICT = "conflict"  # same version, different content; the rule picked the incoming one
    STALE = "stale"  # older than what is stored (or lost a same-version conflict)
    DUPLICATE = "duplicate"  # same version, same content

    @property
    def writes(self) -> bool:
        return self in (Outcome.APPLIED, Outcome.RESURRECTED, Outcome.CONFLICT)


def content_of(change: Change) -> dict[str, Any]:
    """The record as the store keeps it (column values, NULLs dropped), for comparisons."""
    return {k: to_column_value(v) for k, v in change.data.items() if v is not None}


def digest(content: Mapping[str, Any]) -> bytes:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def _incoming_wins_tie(
    stored_source: str, stored: Mapping[str, Any], change: Change, incoming: Mapping[str, Any]
) -> bool:
    a, b = _AUTHORITY.get(change.source, 0), _AUTHORITY.get(stored_source, 0)
    if a != b:
        return a > b
    return digest(incoming) > digest(stored)


def decide(stored: StoredState | None, change: Change) -> Outcome:
    """Pure decision for one incoming change against the stored state of its record.

    `stored.content` must be given when the versions are equal (the only case that
    compares content)."""
    if stored is None:
        return Outcome.APPLIED
    if change.version > stored.version:
        return Outcome.RESURRECTED if stored.deleted else Outcome.APPLIED
    if change.version < stored.version:
        return Outcome.STALE
    if stored.deleted:
        return Outcome.RESURRECTED
    if stored.content is None:
        raise ValueError(
            f"{change.resource} {change.id!r} v{change.version}: deciding a same-version change needs the stored content"
        )
    incoming = content_of(change)
    if incoming == stored.content:
        return Outcome.DUPLICATE
    if _incoming_wins_tie(stored.source, stored.content, change, incoming):
        return Outcome.CONFLICT
    return Outcome.STALE


def _better(a: Change, b: Change) -> bool:
    """True when `a` is a greater state than `b` of the same record (the ordering rule)."""
    if a.version != b.version:
        return a.version > b.version
    ca, cb = content_of(a), content_of(b)
    if ca == cb:
        return False
    return _incoming_wins_tie(b.source, cb, a, ca)


@dataclass
class BatchResult:
    """Outcome of every change of a batch, in input order, and totals."""

    outcomes: list[Outcome]
    counts: Counter[str] = field(default_factory=Counter)
    applied_by_source: Counter[str] = field(default_factory=Counter)

    @property
    def written(self) -> int:
        return sum(self.counts[o.value] for o in Outcome if o.writes)


def plan_batch(
    changes: Sequence[Change], stored: Mapping[tuple[str, RecordId], StoredState]
) -> tuple[list[Outcome], list[int]]:
    """Pure batch decision: every change's outcome and the indexes of the changes to write.

    Several changes to one record collapse to the greatest; it alone is decided against the
    stored state, the others are stale or duplicates of it."""
    winners: dict[tuple[str, RecordId], int] = {}
    for i, change in enumerate(changes):
        key = (change.resource, change.id)
        best = winners.get(key)
        if best is None or _better(change, changes[best]):
            winners[key] = i
    outcomes: list[Outcome] = []
    to_write: list[int] = []
    for i, change in enumerate(changes):
        key = (change.resource, change.id)
        best = winners[key]
        if i == best:
            outcome = decide(stored.get(key), change)
            if outcome.writes:
                to_write.append(i)
        else:
            winner = changes[best]
            same = winner.version == change.version and content_of(winner) == content_of(change)
            outcome = Outcome.DUPLICATE if same else Outcome.STALE
        outcomes.append(outcome)
    return outcomes, to_write


def apply_batch(store: Store, changes: Sequence[Change], *, listed: int | None = None) -> BatchResult:
    """Decide a batch against the stored versions and write the winners. Runs on the writer
    thread; call it inside `store.db.atomic()` to make it one transaction with other writes
    (the poller's cursor); on its own it opens its own transaction."""
    if not store.conn.in_transaction:
        with store.db.atomic():
            return apply_batch(store, changes, listed=listed)
    by_resource: dict[str, list[RecordId]] = {}
    for change in changes:
        by_resource.setdefault(change.resource, []).append(change.id)
    stored: dict[tuple[str, RecordId], StoredState] = {}
    for resource, ids in by_resource.items():
        states = store.mirror_states(resource, ids)
        same_version = [
            c.id
            for c in changes
            if c.resource == resource and c.id in states and states[c.id].version == c.version
        ]
        contents = store.mirror_contents(resource, same_version) if same_version else {}
        for rid, state in states.items():
            if rid in contents:
                state = StoredState(state.version, state.deleted, state.source, contents[rid])
            stored[(resource, rid)] = state
    outcomes, to_write = plan_batch(changes, stored)
    synced_at = utc_iso()
    writes: dict[str, list[tuple[Mapping[str, Any], int, str]]] = {}
    result = BatchResult(outcomes)
    for i in to_write:
        change = changes[i]
        writes.setdefault(change.resource, []).append((change.data, change.version, change.source))
        result.applied_by_source[change.source] += 1
        if outcomes[i] is Outcome.CONFLICT:
            log.warning(
                "conflict: %s %r v%d differs from the stored copy; the %s copy wins by the ordering rule",
                change.resource,
                change.id,
                change.version,
                change.source,
            )
    for resource, records in writes.items():
        store.write_records(resource, records, synced_at=synced_at, listed=listed)
    if listed is not None:
        for resource, ids in by_resource.items():
            store.mark_listed(resource, ids, listed)
    result.counts.update(o.value for o in outcomes)
    return result
