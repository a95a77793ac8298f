"""The daemon's bookkeeping of its sinks in the store, as writer jobs (`writer.run(fn, ...)`):
offsets of sinks no longer configured, the bound pruning may not pass, pending offset resets
(META_SINK_RESET), and each sink's delivery state in `_meta` (META_SINK_STATE) for `syncd
status`, which reads it back with `sink_states` on a reader connection."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from syncd.store import changelog
from syncd.store.db import Store
from syncd.store.schema import META_SINK_RESET, META_SINK_STATE


def forget(store: Store, sink: str) -> None:
    changelog.drop_offset(store.conn, sink)
    store.delete_meta(META_SINK_STATE + sink)


def drop_unconfigured(store: Store, keep: frozenset[str]) -> list[str]:
    """Drop the offsets (and saved states) of sinks not in `keep`; returns their names."""
    with store.db.atomic():
        gone = sorted(s for s in changelog.offsets(store.conn) if s not in keep)
        for sink in gone:
            forget(store, sink)
    return gone


def drop_sink(store: Store, sink: str) -> None:
    with store.db.atomic():
        forget(store, sink)


def prune_bound(store: Store, sinks: frozenset[str]) -> int:
    """The last seq every configured sink has taken; the head when there are none. A
    configured sink without an offset yet (about to start, perhaps from the beginning)
    holds everything back."""
    if not sinks:
        return changelog.head(store.conn)
    offsets = changelog.offsets(store.conn)
    return min(offsets.get(sink, 0) for sink in sinks)


def prune_chunk(store: Store, before_at: str, keep_after_seq: int, limit: int) -> int:
    with store.db.atomic():
        return changelog.prune(store.conn, before_at=before_at, keep_after_seq=keep_after_seq, limit=limit)


def pending_resets(store: Store) -> dict[str, str]:
    meta = Store.read_meta(store.conn)
    return {k[len(META_SINK_RESET) :]: v for k, v in meta.items() if k.startswith(META_SINK_RESET)}


def reset(store: Store, sink: str, seq: int | None) -> None:
    with store.db.atomic():
        if seq is not None:
            changelog.set_offset(store.conn, sink, seq)
        store.delete_meta(META_SINK_RESET + sink)


def write_states(store: Store, states: dict[str, dict[str, Any]]) -> None:
    """Save sinks' delivery states (by sink name), read back by `sink_states`."""
    with store.db.atomic():
        for sink, state in states.items():
            store.set_meta(META_SINK_STATE + sink, json.dumps(state))


def sink_states(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Each sink's saved state (a reader connection works); unreadable entries are left out."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in Store.read_meta(conn).items():
        if key.startswith(META_SINK_STATE):
            try:
                state = json.loads(value)
            except ValueError:
                continue
            if isinstance(state, dict):
                out[key[len(META_SINK_STATE) :]] = state
    return out
