"""Recording the change log: the `_changes` rows of the mirror writes that cause them.

`apply_batch` and the relist's tombstoning call a `ChangeRecorder` inside their own
transaction, so a change commits with its mirror write or not at all, and a rolled-back
write gives its seqs back. What a change says (kind, event, `changed`) is decided against
the record's previous change in the log: its exact JSON. A record with no usable previous
change (mirrored before the log, created by an initial sync the log leaves out, pruned) is
compared with the mirror's row instead (`syncd.core.mirror_state`).

The writer thread owns the recorder. After a job that appended changes commits, the writer
calls the recorder's listeners (`syncd.store.writer`), which is how sink runners learn of
new changes without polling the log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from syncd.core.changes import ChangeKind, ChangeSource, change_row, rule_for
from syncd.core.mirror_state import state_from_mirror
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
#: A `_changes` row in `ROW_FIELDS` order (`syncd.core.changes.change_row`).
Row = tuple[Any, ...]


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
    ) -> list[Row]:
        """The log rows of the records `plan` writes, in its order; read before the writes
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
        logged, mirrored = self._previous_states(store, earlier, stored)
        mirror, created = self.mirror_id, ChangeKind.CREATED
        # Rows straight from the record changes (`change_row`): a `NewChange` per row, its
        # keyword call and `to_row` cost more than the rest of building it.
        rows: list[Row] = []
        for change, kind, state in picked:
            resource, rid, data = change.resource, change.id, change.data
            if state is None:
                previous = None
            else:
                previous = logged.get((resource, rid))
                if previous is None and (content := mirrored.get((resource, rid))) is not None:
                    previous = state_from_mirror(content, data)
            rows.append(
                change_row(
                    mirror,
                    rule_for(resource),
                    resource,
                    rid,
                    kind,
                    _SOURCES.get(change.source) or ChangeSource(change.source).value,
                    data,
                    change.version,
                    previous,
                    None if state is None else state.version,
                    at,
                    initial and kind is created,
                )
            )
        return rows

    def for_tombstones(self, store: Store, resource: str, ids: Sequence[Any], *, at: str) -> list[Row]:
        """The `deleted` changes of records a relist just tombstoned: each carries the record's
        last known data and version (`version == previous_version`)."""
        rows: list[Row] = []
        rule = rule_for(resource)
        for chunk in chunks(ids, 500):
            states = {(resource, rid): s for rid, s in store.mirror_states(resource, chunk).items()}
            logged, mirrored = self._previous_states(store, {resource: list(chunk)}, states, deleted_ok=True)
            for rid in chunk:
                state = states.get((resource, rid))
                data = logged.get((resource, rid))
                if data is None and (content := mirrored.get((resource, rid))) is not None:
                    data = state_from_mirror(content, None)
                if state is None or data is None:
                    continue
                rows.append(
                    change_row(
                        self.mirror_id,
                        rule,
                        resource,
                        rid,
                        ChangeKind.DELETED,
                        ChangeSource.RELIST.value,
                        data,
                        state.version,
                        data,
                        state.version,
                        at,
                        False,
                    )
                )
        return rows

    def append(self, store: Store, rows: Sequence[Row]) -> None:
        if rows:
            changelog.append_rows(store.conn, rows)
            self.appended = True

    # -- previous states --------------------------------------------------------------------

    def _previous_states(
        self,
        store: Store,
        ids_by_resource: Mapping[str, Iterable[Any]],
        stored: Mapping[_KEY, StoredState],
        *,
        deleted_ok: bool = False,
    ) -> tuple[dict[_KEY, Any], dict[_KEY, dict[str, Any]]]:
        """Each record's state before this write: the data of its last change when that
        change is the stored state (same version, same deletedness), else the mirror's row
        (column values, decoded by the caller once the new state is known). Returned as
        (from the log, from the mirror).
        `deleted_ok`: the row was tombstoned in this transaction, its last change is not."""
        logged_out: dict[_KEY, Any] = {}
        mirror_out: dict[_KEY, dict[str, Any]] = {}
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
                    logged_out[(resource, rid)] = last.data
                else:
                    from_mirror.append(rid)
            if from_mirror:
                for rid, content in store.mirror_contents(resource, from_mirror).items():
                    mirror_out[(resource, rid)] = content
        return logged_out, mirror_out


#: A change's source as the log stores it, without building a `ChangeSource` per change;
#: one the feed does not know falls through to `ChangeSource(...)`, which raises.
_SOURCES: Final[Mapping[str, str]] = {source.value: source.value for source in ChangeSource}
