"""The reconciliation engine: pure decisions (batch apply through the store: syncd.store.apply).

Ordering rule. The states of one record are totally ordered by the key
    (version, authority of the source, content digest)
where an API read (`poll`, `fetch`) has more authority than a webhook snapshot, and the
digest (BLAKE2b of canonical JSON) only breaks the tie between two different contents
claiming the same version from equally authoritative sources, which the contract never
produces but a buggy or hostile upstream can. The mirror holds, per record, the greatest
state it has been shown. A maximum does not depend on the order or the number of times
states are delivered, which is what makes both paths and any retry pattern converge.
One content shown by several sources counts with the highest of their authorities
(`_authority`), so a poll confirming a webhook's copy still outranks a rival webhook copy.

Tombstones are the one exception the design asks for: a record that a full listing no
longer returns is marked deleted, and a tombstoned record seen again is restored, even at
the same version (the listing may simply not have shown it yet).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from syncd.core.records import AUTHORITY, Change, RecordId
from syncd.core.values import PLAIN_TYPES, StoredState, storable_text, to_column_value, to_stored_value

Content = Mapping[str, Any]


class Outcome(StrEnum):
    APPLIED = "applied"  # new record or newer version written
    RESURRECTED = "resurrected"  # tombstoned record seen again, restored
    CONFLICT = "conflict"  # same version, different content; the rule picked the incoming one
    STALE = "stale"  # older than what is stored (or lost a same-version conflict)
    DUPLICATE = "duplicate"  # same version, same content
    INVALID = "invalid"  # could not be stored: the caller keeps it as a dead letter

    @property
    def writes(self) -> bool:
        return self in _WRITING


_WRITING = frozenset({Outcome.APPLIED, Outcome.RESURRECTED, Outcome.CONFLICT})


def content_of(change: Change) -> dict[str, Any]:
    """The record as the store keeps it (field -> column value, NULLs dropped), for
    comparisons. Fields are compared by name, whatever column the mapping gave them."""
    return {k: to_stored_value(v) for k, v in change.data.items() if v is not None}


_ABSENT = object()


def _matches(data: Mapping[str, Any], stored: Content) -> bool:
    """`content_of(change) == stored` without building the dict: the duplicate check runs for
    every record a poll's lookback re-reads, and most are equal (building the dict costs 11%
    more CPU on re-read duplicates, bench/RESULTS.md). tests/core/test_values_properties.py
    proves it agrees with `content_of`."""
    fields = 0
    for key, value in data.items():
        if value is None:
            continue
        fields += 1
        # Strings are stored as they are unless SQLite cannot hold them (escaped then).
        if stored.get(key, _ABSENT) != (value if type(value) in PLAIN_TYPES else to_column_value(value)) and (
            type(value) is not str or stored.get(key, _ABSENT) != storable_text(value)
        ):
            return False
    return fields == len(stored)


def digest(content: Content) -> bytes:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def _stored_authority(stored: StoredState) -> int:
    return AUTHORITY.get(stored.source, 0) if stored.authority is None else stored.authority


def _outranks(authority_a: int, content_a: Content, authority_b: int, content_b: Content) -> bool:
    """Same version: does state a rank above state b? Authority first, then the digest, which
    only decides between different contents."""
    if authority_a != authority_b:
        return authority_a > authority_b
    if content_a == content_b:
        return False
    return digest(content_a) > digest(content_b)


def _decide(stored: StoredState | None, change: Change, incoming: Content | None) -> Outcome:
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
            f"{change.resource} {change.id!r} v{change.version}: deciding a same-version change"
            " needs the stored content"
        )
    if incoming is None:
        if _matches(change.data, stored.content):
            return Outcome.DUPLICATE
        incoming = content_of(change)
    elif incoming == stored.content:
        return Outcome.DUPLICATE
    if _outranks(AUTHORITY.get(change.source, 0), incoming, _stored_authority(stored), stored.content):
        return Outcome.CONFLICT
    return Outcome.STALE


def decide(stored: StoredState | None, change: Change) -> Outcome:
    """Pure decision for one incoming change against the stored state of its record.

    `stored.content` must be given when the versions are equal (the only case that
    compares content)."""
    return _decide(stored, change, None)


@dataclass
class BatchResult:
    """Outcome of every change of a batch, in input order, and totals. A change that could
    not be stored is INVALID, with its reason in `reasons` (by index)."""

    outcomes: list[Outcome]
    counts: Counter[str] = field(default_factory=Counter)
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return sum(self.counts[o.value] for o in Outcome if o.writes)


class BatchPlan(NamedTuple):
    """Outcomes in input order; indexes of the changes to write; indexes of duplicates whose
    source has more authority than the stored copy's (only `_authority` is raised)."""

    outcomes: list[Outcome]
    writes: list[int]
    confirms: list[int]


def plan_batch(changes: Sequence[Change], stored: Mapping[tuple[str, RecordId], StoredState]) -> BatchPlan:
    """Pure batch decision: every change's outcome and what to write.

    Several changes to one record collapse to the greatest; it alone is decided against the
    stored state, the others are stale or duplicates of it."""
    contents: dict[int, Content] = {}

    def content(i: int) -> Content:
        found = contents.get(i)
        if found is None:
            found = contents[i] = content_of(changes[i])
        return found

    winners: dict[tuple[str, RecordId], int] = {}
    repeated = False
    for i, change in enumerate(changes):
        key = (change.resource, change.id)
        best = winners.setdefault(key, i)
        if best == i:
            continue
        repeated = True
        other = changes[best]
        if change.version > other.version or (
            change.version == other.version
            and _outranks(
                AUTHORITY.get(change.source, 0), content(i), AUTHORITY.get(other.source, 0), content(best)
            )
        ):
            winners[key] = i

    outcomes: list[Outcome] = [Outcome.STALE] * len(changes)
    writes: list[int] = []
    confirms: list[int] = []
    for i in winners.values() if repeated else range(len(changes)):
        change = changes[i]
        state = stored.get((change.resource, change.id))
        outcome = outcomes[i] = _decide(state, change, contents.get(i))
        if outcome in _WRITING:
            writes.append(i)
        elif (
            outcome is Outcome.DUPLICATE
            and state is not None
            and AUTHORITY.get(change.source, 0) > _stored_authority(state)
        ):
            confirms.append(i)
    if repeated:
        writes.sort()
        confirms.sort()
        for i, change in enumerate(changes):
            best = winners[(change.resource, change.id)]
            if i == best:
                continue
            # A copy of the winner shares its fate: a duplicate of what is (or is now) stored,
            # or stale with it when the mirror already holds something greater.
            winner = changes[best]
            if outcomes[best] is not Outcome.STALE and (
                winner.version == change.version and content(best) == content(i)
            ):
                outcomes[i] = Outcome.DUPLICATE
    return BatchPlan(outcomes, writes, confirms)
