"""The reconciliation engine: pure decisions, then batch apply through the store.

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
import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from syncd.core.records import AUTHORITY, Change, RecordId
from syncd.errors import ColumnLimitError, RecordError, StoreError
from syncd.store.db import PLAIN_TYPES, Store, StoredState, to_column_value, to_stored_value, utc_iso
from syncd.store.schema import storable_text

log = logging.getLogger(__name__)

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
    conv = to_stored_value
    return {k: conv(v) for k, v in change.data.items() if v is not None}


_ABSENT = object()


def _matches(data: Mapping[str, Any], stored: Content) -> bool:
    """`content_of(change) == stored` without building the dict: the duplicate check runs for
    every record a poll's lookback re-reads, and most are equal."""
    conv, plain = to_column_value, PLAIN_TYPES
    get = stored.get
    fields = 0
    for key, value in data.items():
        if value is None:
            continue
        fields += 1
        # Strings are stored as they are unless SQLite cannot hold them (escaped then).
        if get(key, _ABSENT) != (value if type(value) in plain else conv(value)) and (
            type(value) is not str or get(key, _ABSENT) != storable_text(value)
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
    applied_by_source: Counter[str] = field(default_factory=Counter)
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


#: SQLite errors a record's own content causes (as opposed to the disk, a lock, corruption).
_RECORD_SQLITE_ERRORS = ("too many columns", "duplicate column", "too many sql variables", "too big")


def _record_fault(exc: Exception) -> bool:
    """Whether `exc` is the fault of the records being written, so leaving the culprit out
    lets the rest through. Anything else (disk full, I/O error, a locked or corrupt file)
    fails the whole batch, to be tried again: those are no record's fault."""
    if isinstance(
        exc, ColumnLimitError | RecordError | OverflowError | UnicodeError | TypeError | ValueError
    ):
        return True
    if isinstance(exc, sqlite3.InterfaceError | sqlite3.DataError | sqlite3.IntegrityError):
        return True
    if isinstance(exc, sqlite3.ProgrammingError):
        return "binding" in str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(m in message for m in _RECORD_SQLITE_ERRORS)
    return False


def _reason(exc: Exception) -> str:
    if isinstance(exc, StoreError):
        return f"cannot be stored: {exc}"
    return f"cannot be stored: {type(exc).__name__}: {exc}"


def apply_batch(store: Store, changes: Sequence[Change], *, listed: int | None = None) -> BatchResult:
    """Decide a batch against the stored versions and write the winners. Runs on the writer
    thread; call it inside `store.db.atomic()` to make it one transaction with other writes
    (the poller's cursor); on its own it opens its own transaction.

    A record that cannot be stored costs only itself: the batch's writes are rolled back to
    a savepoint and the batch is split in halves until the records at fault stand alone;
    they come back INVALID with a reason (the caller dead-letters them), everything else is
    applied as if they had not been there. A failure no record causes (disk full) is raised.
    """
    if not store.conn.in_transaction:
        # A transaction of its own needs no savepoint to undo a failed first attempt (a
        # savepoint copies every page it changes to a sub-journal): roll it all back, and
        # isolate the culprits in a new one.
        try:
            with store.db.atomic():
                return _apply(store, changes, listed)
        except Exception as exc:
            if not _record_fault(exc):
                raise
            store.forget_schema()
        with store.db.atomic():
            return apply_batch(store, changes, listed=listed)
    try:
        with store.db.atomic():
            return _apply(store, changes, listed)
    except Exception as exc:
        if not _record_fault(exc):
            raise
        store.forget_schema()
        if len(changes) == 1:
            return _rejected(changes[0], exc)
    result = BatchResult([Outcome.STALE] * len(changes))
    half = len(changes) // 2
    _isolate(store, changes, list(range(half)), listed, result)
    _isolate(store, changes, list(range(half, len(changes))), listed, result)
    return result


def _rejected(change: Change, exc: Exception) -> BatchResult:
    reason = _reason(exc)
    log.warning("%s %r: %s; kept as a dead letter", change.resource, change.id, reason)
    return BatchResult([Outcome.INVALID], Counter({Outcome.INVALID.value: 1}), reasons={0: reason})


def _isolate(
    store: Store, changes: Sequence[Change], indexes: list[int], listed: int | None, into: BatchResult
) -> None:
    """Apply `changes[i] for i in indexes` in a savepoint; on a record's fault, halve and
    recurse. Each part is decided against what the parts before it wrote, so a record's
    copies split across parts still leave the greatest of them (minus the rejected ones)."""
    if not indexes:
        return
    part = [changes[i] for i in indexes]
    try:
        with store.db.atomic():
            result = _apply(store, part, listed)
    except Exception as exc:
        if not _record_fault(exc):
            raise
        store.forget_schema()
        if len(indexes) == 1:
            result = _rejected(part[0], exc)
        else:
            half = len(indexes) // 2
            _isolate(store, changes, indexes[:half], listed, into)
            _isolate(store, changes, indexes[half:], listed, into)
            return
    for j, i in enumerate(indexes):
        into.outcomes[i] = result.outcomes[j]
        if j in result.reasons:
            into.reasons[i] = result.reasons[j]
    into.counts.update(result.counts)
    into.applied_by_source.update(result.applied_by_source)


def _apply(store: Store, changes: Sequence[Change], listed: int | None) -> BatchResult:
    by_resource: dict[str, list[Change]] = {}
    for change in changes:
        group = by_resource.get(change.resource)
        if group is None:
            by_resource[change.resource] = [change]
        else:
            group.append(change)
    stored: dict[tuple[str, RecordId], StoredState] = {}
    for resource, group in by_resource.items():
        states = store.mirror_states(resource, [c.id for c in group])
        if not states:
            continue
        # Only a same-version change compares content; a tombstoned copy is restored anyway.
        same_version = [
            c.id
            for c in group
            if (s := states.get(c.id)) is not None and s.version == c.version and not s.deleted
        ]
        if same_version:
            for rid, content in store.mirror_contents(resource, same_version).items():
                s = states[rid]
                states[rid] = StoredState(s.version, s.deleted, s.source, content, s.authority)
        for rid, state in states.items():
            stored[(resource, rid)] = state
    plan = plan_batch(changes, stored)
    outcomes = plan.outcomes
    synced_at = utc_iso()
    writes: dict[str, list[tuple[Mapping[str, Any], int, str]]] = {}
    sources: list[str] = []
    for i in plan.writes:
        change = changes[i]
        writes.setdefault(change.resource, []).append((change.data, change.version, change.source))
        sources.append(change.source)
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
    confirms: dict[str, list[tuple[int, RecordId]]] = {}
    for i in plan.confirms:
        change = changes[i]
        confirms.setdefault(change.resource, []).append((AUTHORITY.get(change.source, 0), change.id))
    for resource, rows in confirms.items():
        store.raise_authority(resource, rows)
    if listed is not None:
        for resource, group in by_resource.items():
            store.mark_listed(resource, [c.id for c in group], listed)
    # Counted once per batch: Counter increments per change cost more than the decisions.
    counts = Counter(outcomes)
    return BatchResult(outcomes, Counter({o.value: n for o, n in counts.items()}), Counter(sources))
