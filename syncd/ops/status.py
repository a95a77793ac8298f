"""`syncd status`: what the daemon is doing and how far the mirror is, read from the store
(its text form for people is syncd.cli.status_view; the admin status page reads the same
report).

Reads through a read-only SQLite connection (WAL lets it read while the daemon writes), so it
works while the daemon runs, as another user, and without the API key. The JSON form follows
`STATUS_SCHEMA` (JSON Schema, draft 2020-12); timestamps are RFC 3339 UTC strings or null,
durations are seconds.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from syncd.config import Config
from syncd.contract import RESOURCES
from syncd.errors import StoreError
from syncd.ops.status_feed import CHANGES_SCHEMA, SINKS_SCHEMA, collect_feed
from syncd.poll.cursor import cursor_problem
from syncd.store import events
from syncd.store.cursors import cursor_rows
from syncd.store.db import Store
from syncd.store.dead_letters import dead_letter_counts, latest_open
from syncd.store.mirror import mirror_counts
from syncd.store.schema import (
    HEARTBEAT_PERIOD,
    META_DAEMON_PID,
    META_DAEMON_STARTED,
    META_HEARTBEAT,
    META_MODE,
    META_MODE_REASON,
    META_MODE_SINCE,
    META_MODE_SWITCHES,
    META_RELIST_HELD,
)
from syncd.timefmt import format_epoch as utc_iso
from syncd.timefmt import try_epoch

_TS = {"type": ["string", "null"], "format": "date-time"}
_SECONDS = {"type": ["number", "null"], "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}

_RESOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "cursor",
        "lag_seconds",
        "last_poll_at",
        "last_success_at",
        "last_error",
        "last_error_at",
        "last_full_relist_at",
        "last_changes",
        "live",
        "tombstoned",
        "cursor_problem",
        "relist_held_back",
    ],
    "properties": {
        "cursor": {
            "type": ["string", "null"],
            "description": "committed since-cursor (the server's updatedAt); see cursor_problem",
        },
        "lag_seconds": {**_SECONDS, "description": "now minus the cursor; null when it cannot be trusted"},
        "cursor_problem": {
            "type": ["string", "null"],
            "description": "why the stored cursor cannot be trusted; the next poll drops it and lists everything",
        },
        "relist_held_back": {
            "type": ["string", "null"],
            "description": "a full relist that would have tombstoned too much, until resync --allow-mass-delete",
        },
        "last_poll_at": _TS,
        "last_success_at": _TS,
        "last_error": {"type": ["string", "null"]},
        "last_error_at": _TS,
        "last_full_relist_at": _TS,
        "last_changes": {**_COUNT, "description": "records the last poll wrote"},
        "live": {**_COUNT, "description": "mirrored records not tombstoned"},
        "tombstoned": {**_COUNT, "description": "records a full listing no longer returned"},
    },
}

#: Open dead letters listed by `syncd status`; the counts cover all of them.
LATEST_DEAD_LETTERS = 10


STATUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "syncd status",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "generated_at",
        "store",
        "configured_mode",
        "mode",
        "daemon",
        "resources",
        "last_webhook_at",
        "events",
        "inbox_depth",
        "inbox_backlog",
        "dead_letters",
        "fallback_switches",
        "changes",
        "sinks",
    ],
    "properties": {
        "generated_at": _TS,
        "store": {"type": "string", "description": "path of the SQLite file"},
        "configured_mode": {"enum": ["push", "poll"], "description": "sync.mode in the config"},
        "mode": {
            "type": "object",
            "additionalProperties": False,
            "required": ["current", "reason", "since"],
            "properties": {
                "current": {
                    "enum": ["push", "fallback", "poll", None],
                    "description": "null until a daemon has run on this store",
                },
                "reason": {"type": ["string", "null"], "description": "why the daemon is in this mode"},
                "since": _TS,
            },
        },
        "daemon": {
            "type": "object",
            "additionalProperties": False,
            "required": ["pid", "started_at", "heartbeat_at", "running"],
            "properties": {
                "pid": {"type": ["integer", "null"]},
                "started_at": _TS,
                "heartbeat_at": _TS,
                "running": {
                    "type": "boolean",
                    "description": "heartbeat fresh and the pid alive on this host",
                },
            },
        },
        "resources": {
            "type": "object",
            "propertyNames": {"enum": list(RESOURCES)},
            "additionalProperties": _RESOURCE_SCHEMA,
        },
        "last_webhook_at": {**_TS, "description": "latest delivery of any webhook event"},
        "events": {
            "type": "object",
            "description": "webhook events by outcome (applied, stale, duplicate, pending, ...)",
            "additionalProperties": _COUNT,
        },
        "inbox_depth": {**_COUNT, "description": "deliveries stored but not yet applied"},
        "inbox_backlog": {
            "type": "object",
            "additionalProperties": False,
            "required": ["deliveries", "bytes", "max_deliveries", "max_bytes", "full"],
            "properties": {
                "deliveries": {**_COUNT, "description": "deliveries acknowledged, not yet applied"},
                "bytes": {**_COUNT, "description": "their bodies' bytes"},
                "max_deliveries": {**_COUNT, "description": "webhook.max_backlog"},
                "max_bytes": {**_COUNT, "description": "webhook.max_backlog_bytes"},
                "full": {
                    "type": "boolean",
                    "description": "at either bound: new deliveries are answered 503 with Retry-After",
                },
            },
        },
        "dead_letters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["total", "open", "latest"],
            "properties": {
                "total": _COUNT,
                "open": {
                    **_COUNT,
                    "description": "never replayed, or replayed and still invalid: what `replay --all` re-drives",
                },
                "latest": {
                    "type": "array",
                    "description": f"the {LATEST_DEAD_LETTERS} most recent open dead letters",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["id", "source", "resource", "record_id", "event_id", "reason"],
                        "properties": {
                            "id": _COUNT,
                            "source": {"type": ["string", "null"]},
                            "resource": {"type": ["string", "null"]},
                            "record_id": {"type": ["string", "null"]},
                            "event_id": {"type": ["string", "null"]},
                            "reason": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "fallback_switches": {**_COUNT, "description": "switches between push and fallback, ever"},
        "changes": CHANGES_SCHEMA,
        "sinks": SINKS_SCHEMA,
    },
}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else utc_iso(ts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resources(
    conn: sqlite3.Connection, names: tuple[str, ...], now: float, meta: dict[str, str], max_skew: float
) -> dict[str, Any]:
    cursors = cursor_rows(conn)
    out: dict[str, Any] = {}
    for name in names:
        cursor, last_poll, last_success, last_error, last_error_at, last_relist, changes = cursors.get(
            name, (None, None, None, None, None, None, 0)
        )
        live, tombstoned = mirror_counts(conn, name)
        # A cursor an older syncd stored may be no instant, or far in the future: say so
        # rather than crash or show a lag of 0.
        problem = cursor_problem(cursor, now, max_skew)
        cursor_at = None if problem is not None else try_epoch(cursor)
        out[name] = {
            "cursor": cursor,
            "lag_seconds": None if cursor_at is None else round(max(0.0, now - cursor_at), 3),
            "cursor_problem": problem,
            "relist_held_back": meta.get(META_RELIST_HELD + name),
            "last_poll_at": _iso(last_poll),
            "last_success_at": _iso(last_success),
            "last_error": last_error,
            "last_error_at": _iso(last_error_at),
            "last_full_relist_at": _iso(last_relist),
            "last_changes": int(changes or 0),
            "live": int(live),
            "tombstoned": int(tombstoned),
        }
    return out


def collect_status(cfg: Config, *, now: float | None = None) -> dict[str, Any]:
    """The status report (see STATUS_SCHEMA). Raises StoreError when there is no store."""
    now = time.time() if now is None else now
    conn = Store.open_reader(cfg.store.path)
    try:
        meta = Store.read_meta(conn)
        names = tuple(r for r in RESOURCES if r in cfg.sync.resources)
        by_outcome = events.outcome_counts(conn)
        last_webhook = events.last_delivery_at(conn)
        inbox_depth, inbox_bytes = events.inbox_backlog(conn)
        dead_total, dead_open = dead_letter_counts(conn)
        latest = [
            dict(zip(("id", "source", "resource", "record_id", "event_id", "reason"), row, strict=True))
            for row in latest_open(conn, LATEST_DEAD_LETTERS)
        ]
        resources = _resources(conn, names, now, meta, cfg.poll.max_clock_skew)
        pid = int(meta[META_DAEMON_PID]) if META_DAEMON_PID in meta else None
        heartbeat = meta.get(META_HEARTBEAT)
        beat = try_epoch(heartbeat)
        fresh = beat is not None and now - beat <= 3 * HEARTBEAT_PERIOD
        running = bool(fresh and pid is not None and _pid_alive(pid))
        feed = collect_feed(conn, cfg, daemon_running=running)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read store {cfg.store.path}: {exc}") from None
    finally:
        conn.close()
    return {
        "generated_at": utc_iso(now),
        "store": cfg.store.path,
        "configured_mode": cfg.sync.mode,
        "mode": {
            "current": meta.get(META_MODE),
            "reason": meta.get(META_MODE_REASON),
            "since": meta.get(META_MODE_SINCE),
        },
        "daemon": {
            "pid": pid,
            "started_at": meta.get(META_DAEMON_STARTED),
            "heartbeat_at": heartbeat,
            "running": running,
        },
        "resources": resources,
        "last_webhook_at": _iso(last_webhook),
        "events": by_outcome,
        "inbox_depth": int(inbox_depth),
        "inbox_backlog": {
            "deliveries": inbox_depth,
            "bytes": inbox_bytes,
            "max_deliveries": cfg.webhook.max_backlog,
            "max_bytes": cfg.webhook.max_backlog_bytes,
            "full": inbox_depth >= cfg.webhook.max_backlog or inbox_bytes >= cfg.webhook.max_backlog_bytes,
        },
        "dead_letters": {"total": dead_total, "open": dead_open, "latest": latest},
        "fallback_switches": int(meta.get(META_MODE_SWITCHES, "0")),
        **feed,
    }
