"""Batch apply: the reconciler's decisions (syncd.core.reconcile) written through the store.

Runs on the writer thread. A record that cannot be stored costs only itself (see
`apply_batch`); the time written as `_synced_at` is the caller's, so what is decided and
what is written never read a clock of their own.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from syncd.core.reconcile import BatchResult, Outcome, plan_batch
from syncd.core.records import AUTHORITY, Change, RecordId
from syncd.core.values import StoredState
from syncd.errors import ColumnLimitError, RecordError, StoreError
from syncd.store.db import Store

log = logging.getLogger(__name__)


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


def apply_batch(
    store: Store,
    changes: Sequence[Change],
    *,
    synced_at: str,
    listed: int | None = None,
    initial: bool = False,
) -> BatchResult:
    """Decide a batch against the stored versions and write the winners, stamped `synced_at`
    (RFC 3339; the caller's clock). Runs on the writer thread; call it inside `store.db.atomic()` to make it one transaction with other writes
    (the poller's cursor); on its own it opens its own transaction.

    Each state written is one change of the log (`store.recorder`), in the same
    transaction; `initial` says the batch belongs to the first full sync of an empty mirror.

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
                return _apply(store, changes, synced_at, listed, initial)
        except Exception as exc:
            if not _record_fault(exc):
                raise
            store.forget_schema()
        with store.db.atomic():
            return apply_batch(store, changes, synced_at=synced_at, listed=listed, initial=initial)
    try:
        with store.db.atomic():
            return _apply(store, changes, synced_at, listed, initial)
    except Exception as exc:
        if not _record_fault(exc):
            raise
        store.forget_schema()
        if len(changes) == 1:
            return _rejected(changes[0], exc)
    result = BatchResult([Outcome.STALE] * len(changes))
    first, second = _halves(changes, list(range(len(changes))))
    _isolate(store, changes, first, synced_at, listed, initial, result)
    _isolate(store, changes, second, synced_at, listed, initial, result)
    return result


def _halves(changes: Sequence[Change], indexes: list[int]) -> tuple[list[int], list[int]]:
    """`indexes` cut in two to isolate the records at fault. Each record's copies stay in one
    part while the part holds several records: cut apart, two copies would each be written,
    and logged as two changes, where the batch without the culprit writes (and logs) only the
    greater one."""
    groups: dict[tuple[str, RecordId], list[int]] = {}
    for i in indexes:
        groups.setdefault((changes[i].resource, changes[i].id), []).append(i)
    if len(groups) == 1:
        half = len(indexes) // 2
        return indexes[:half], indexes[half:]
    parts = list(groups.values())
    half = len(parts) // 2
    return [i for part in parts[:half] for i in part], [i for part in parts[half:] for i in part]


def _rejected(change: Change, exc: Exception) -> BatchResult:
    reason = _reason(exc)
    log.warning("%s %r: %s; kept as a dead letter", change.resource, change.id, reason)
    return BatchResult([Outcome.INVALID], Counter({Outcome.INVALID.value: 1}), reasons={0: reason})


def _isolate(
    store: Store,
    changes: Sequence[Change],
    indexes: list[int],
    synced_at: str,
    listed: int | None,
    initial: bool,
    into: BatchResult,
) -> None:
    """Apply `changes[i] for i in indexes` in a savepoint; on a record's fault, halve and
    recurse. Each part is decided against what the parts before it wrote, so a record's
    copies split across parts still leave the greatest of them (minus the rejected ones)."""
    if not indexes:
        return
    part = [changes[i] for i in indexes]
    try:
        with store.db.atomic():
            result = _apply(store, part, synced_at, listed, initial)
    except Exception as exc:
        if not _record_fault(exc):
            raise
        store.forget_schema()
        if len(indexes) == 1:
            result = _rejected(part[0], exc)
        else:
            first, second = _halves(changes, indexes)
            _isolate(store, changes, first, synced_at, listed, initial, into)
            _isolate(store, changes, second, synced_at, listed, initial, into)
            return
    for j, i in enumerate(indexes):
        into.outcomes[i] = result.outcomes[j]
        if j in result.reasons:
            into.reasons[i] = result.reasons[j]
    into.counts.update(result.counts)


def _apply(
    store: Store, changes: Sequence[Change], synced_at: str, listed: int | None, initial: bool
) -> BatchResult:
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
    recorder = store.recorder
    # Built before the writes: a record without a usable previous change is compared with
    # its row as it was.
    logged = (
        recorder.for_writes(store, changes, plan, stored, at=synced_at, initial=initial)
        if recorder is not None and plan.writes
        else ()
    )
    writes: dict[str, list[tuple[Mapping[str, Any], int, str]]] = {}
    for i in plan.writes:
        change = changes[i]
        writes.setdefault(change.resource, []).append((change.data, change.version, change.source))
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
    if logged:
        assert recorder is not None
        recorder.append(store, logged)
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
    return BatchResult(outcomes, Counter({o.value: n for o, n in counts.items()}))
