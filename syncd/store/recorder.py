"""Recording the change log: the `_changes` rows of the mirror writes that cause them.

`apply_batch` and the relist's tombstoning call a `ChangeRecorder` inside their own
transaction, so a change commits with its mirror write or not at all, and a rolled-back
write gives its seqs back. What a change says (kind, event, `changed`) is decided against
the record's previous change in the log: its exact JSON. A record with no usable previous
change (mirrored before the log, created by an initial sync the log leaves out, pruned) is
compared with the mirror's row instead (`syncd.core.changes.state_from_mirror`).

The writer thread owns the recorder. After a job that appended changes commits, the writer
calls the recorder's listeners (`syncd.store.writer`), which is how sink runners learn of
new changes without polling the log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncd.core.changes import ChangeKind, ChangeSource, NewChange, new_change, state_from_mirror
from syncd.core.reconcile import BatchPlan
from syncd.core.records import Change as RecordChange
from syncd.core.records import RecordId
from syncd.core.values import StoredState
from syncd.store import changelog
from syncd.store.sql import chunks

if TYPE_CHECKING:
    # The mirror half of `Store` is all a recorder reads (not `Store`, which holds one).
    from syncd.store.mirror import MirrorTables as Store

_KEY = tuple[str, Any]


class ChangeRecorder:
    """Builds and appends the changes of one store's mirror writes.

    `include_initial` logs the records an initial sync creates (marked `initial`); off, the
    first full sync of an empty mirror is not replayed to the sinks as a flood of creates."""

    def __init__(self, mirror_id: str, *, include_initial: bool = False) -> None:
        self.mirror_id = mirror_id
        self.include_initial = include_initial
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        #: Set when rows were appended since the writer last told the listeners.
        self.appended = False

    # -- listeners (any thread) -----------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` on the writer thread after each commit that appended changes;
        it must be quick and thread-safe (e.g. `ChangeNotifier.notify_threadsafe`)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def committed(self) -> None:
        """The writer's call after a job's transaction ended: wake the listeners once."""
        self.appended = False
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    # -- building changes (writer thread, inside the write's transaction) ------------------

    def for_writes(
        self,
        store: Store,
        changes: Sequence[RecordChange],
        plan: BatchPlan,
        stored: Mapping[_KEY, StoredState],
        *,
        at: str,
        initial: bool = False,
    ) -> list[NewChange]:
        """The changes of the records `plan` writes, in its order; read before the writes
        (the mirror's rows are the fallback previous states). `initial`: the batch is part
        of the first full sync of an empty mirror."""
        picked: list[tuple[RecordChange, ChangeKind, StoredState | None]] = []
        earlier: dict[str, list[RecordId]] = {}
        for i in plan.writes:
            change = changes[i]
            state = stored.get((change.resource, change.id))
            if state is None:
                if initial and not self.include_initial:
                    continue
                kind = ChangeKind.CREATED
            else:
                kind = ChangeKind.RESTORED if state.deleted else ChangeKind.UPDATED
                earlier.setdefault(change.resource, []).append(change.id)
            picked.append((change, kind, state))
        if not picked:
            return []
        previous = self._previous_states(store, earlier, stored)
        out: list[NewChange] = []
        for change, kind, state in picked:
            prior = None if state is None else previous.get((change.resource, change.id))
            out.append(
                new_change(
                    mirror=self.mirror_id,
                    resource=change.resource,
                    record_id=change.id,
                    kind=kind,
                    source=ChangeSource(change.source),
                    data=change.data,
                    version=change.version,
                    previous=None if prior is None else prior.state(change.data),
                    previous_version=None if state is None else state.version,
                    at=at,
                    initial=initial and kind is ChangeKind.CREATED,
                )
            )
        return out

    def for_tombstones(self, store: Store, resource: str, ids: Sequence[Any], *, at: str) -> list[NewChange]:
        """The `deleted` changes of records a relist just tombstoned: each carries the record's
        last known data and version (`version == previous_version`)."""
        out: list[NewChange] = []
        for chunk in chunks(ids, 500):
            states = {(resource, rid): s for rid, s in store.mirror_states(resource, chunk).items()}
            previous = self._previous_states(store, {resource: list(chunk)}, states, deleted_ok=True)
            for rid in chunk:
                state = states.get((resource, rid))
                prior = previous.get((resource, rid))
                if state is None or prior is None:
                    continue
                data = prior.state(None)
                out.append(
                    new_change(
                        mirror=self.mirror_id,
                        resource=resource,
                        record_id=rid,
                        kind=ChangeKind.DELETED,
                        source=ChangeSource.RELIST,
                        data=data,
                        version=state.version,
                        previous=data,
                        previous_version=state.version,
                        at=at,
                    )
                )
        return out

    def append(self, store: Store, new: Sequence[NewChange]) -> None:
        if new:
            changelog.append(store.conn, new)
            self.appended = True

    # -- previous states --------------------------------------------------------------------

    def _previous_states(
        self,
        store: Store,
        ids_by_resource: Mapping[str, Iterable[Any]],
        stored: Mapping[_KEY, StoredState],
        *,
        deleted_ok: bool = False,
    ) -> dict[_KEY, _Previous]:
        """Each record's state before this write: the data of its last change when that
        change is the stored state (same version, same deletedness), else the mirror's row.
        `deleted_ok`: the row was tombstoned in this transaction, its last change is not."""
        out: dict[_KEY, _Previous] = {}
        for resource, id_iter in ids_by_resource.items():
            ids = list(id_iter)
            logged = changelog.last_states_of(store.conn, resource, ids)
            from_mirror: list[Any] = []
            for rid in ids:
                state = stored[(resource, rid)]
                last = logged.get(rid)
                if (
                    last is not None
                    and last.version == state.version
                    and (deleted_ok or last.deleted == state.deleted)
                ):
                    out[(resource, rid)] = _Previous(last.data, from_mirror=False)
                else:
                    from_mirror.append(rid)
            if from_mirror:
                for rid, content in store.mirror_contents(resource, from_mirror).items():
                    out[(resource, rid)] = _Previous(content, from_mirror=True)
        return out


@dataclass(frozen=True, slots=True)
class _Previous:
    """A record's state before a write: the exact data of its last change, or the mirror
    row's column values, decoded once the new state is known (`state_from_mirror`)."""

    data: Mapping[str, Any]
    from_mirror: bool

    def state(self, current: Mapping[str, Any] | None) -> Mapping[str, Any]:
        return state_from_mirror(self.data, current) if self.from_mirror else self.data
