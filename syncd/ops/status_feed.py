"""The change feed's part of `syncd status`: the change log and each sink.

Offsets and dead letters come from the store, so they are exact whether or not the daemon
runs. A sink's delivery state (ok / retrying / blocked, attempts, last error) lives in the
daemon's memory; the daemon saves it to `_meta` when it changes (syncd.service.feed), and
status shows it marked `state_stale` when no daemon is running to keep it current.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from syncd.config import Config
from syncd.store import changelog
from syncd.store.sinkstore import sink_states

_TS = {"type": ["string", "null"], "format": "date-time"}
_COUNT = {"type": "integer", "minimum": 0}
_SEQ = {"type": ["integer", "null"], "minimum": 0}

CHANGES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["enabled", "head_seq", "oldest_seq", "entries"],
    "properties": {
        "enabled": {"type": "boolean", "description": "changes.enabled in the config"},
        "head_seq": {**_COUNT, "description": "the last seq ever assigned (0: nothing logged yet)"},
        "oldest_seq": {**_SEQ, "description": "the smallest seq still in the log; null when empty"},
        "entries": {**_COUNT, "description": "changes the log holds (pruned ones are gone)"},
    },
}

SINK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "type",
        "configured",
        "delivered_seq",
        "lag",
        "state",
        "attempts",
        "last_error",
        "last_error_at",
        "next_attempt_at",
        "state_updated_at",
        "state_stale",
        "dead_letters",
    ],
    "properties": {
        "type": {"enum": ["http", "exec", None], "description": "null for a sink no longer configured"},
        "configured": {
            "type": "boolean",
            "description": "in the config file; an unconfigured sink's offset goes at the next start or reload",
        },
        "delivered_seq": {**_SEQ, "description": "the sink's offset: the last seq it has taken"},
        "lag": {**_SEQ, "description": "head_seq minus delivered_seq"},
        "state": {"enum": ["ok", "retrying", "blocked", None], "description": "null before a daemon ran it"},
        "attempts": {**_COUNT, "description": "failed attempts of the change it is stuck on"},
        "last_error": {"type": ["string", "null"]},
        "last_error_at": _TS,
        "next_attempt_at": _TS,
        "state_updated_at": {**_TS, "description": "when the daemon last saved the state"},
        "state_stale": {
            "type": "boolean",
            "description": "no daemon is running: state, attempts and errors are as it left them",
        },
        "dead_letters": {
            **_COUNT,
            "description": "changes the sink gave up on that no replay has delivered yet (never replayed, or the last replay failed)",
        },
    },
}

SINKS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "by sink name: the configured sinks and any whose offset is still stored",
    "additionalProperties": SINK_SCHEMA,
}


def collect_feed(conn: sqlite3.Connection, cfg: Config, *, daemon_running: bool) -> dict[str, Any]:
    """`{"changes": ..., "sinks": ...}` of the status report (CHANGES_SCHEMA, SINKS_SCHEMA)."""
    if not changelog.has_log(conn):
        head, oldest, entries, offsets, dead = 0, None, 0, {}, {}
    else:
        head = changelog.head(conn)
        oldest = changelog.oldest(conn)
        entries = changelog.entries(conn)
        offsets = changelog.offsets(conn)
        dead = changelog.open_sink_dead_letter_counts(conn)
    states = sink_states(conn)
    types = {sink.name: sink.type for sink in cfg.sinks}
    names = [*types, *sorted(n for n in offsets if n not in types)]
    sinks: dict[str, Any] = {}
    for name in names:
        delivered = offsets.get(name)
        state = states.get(name, {})
        sinks[name] = {
            "type": types.get(name),
            "configured": name in types,
            "delivered_seq": delivered,
            "lag": None if delivered is None else max(0, head - delivered),
            "state": state.get("state"),
            "attempts": int(state.get("attempts") or 0),
            "last_error": state.get("last_error"),
            "last_error_at": state.get("last_error_at"),
            "next_attempt_at": state.get("next_attempt_at"),
            "state_updated_at": state.get("updated_at"),
            "state_stale": not daemon_running,
            "dead_letters": dead.get(name, 0),
        }
    return {
        "changes": {
            "enabled": cfg.changes.enabled,
            "head_seq": head,
            "oldest_seq": oldest,
            "entries": entries,
        },
        "sinks": sinks,
    }
