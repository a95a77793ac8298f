"""The SQLite schema of the store: its tables, `_meta` keys, column names and migrations.
How record values become column values is `syncd.core.values` (the reconciler compares them)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import sqlite_utils

from syncd.contract import RESOURCES
from syncd.store import changelog

SCHEMA_VERSION = 7

# -- _meta keys: written by the daemon and the poller, read by `syncd status` --------------
META_SCHEMA_VERSION = "schema_version"
META_MODE = "mode"
META_MODE_REASON = "mode_reason"
META_MODE_SINCE = "mode_since"
META_MODE_SWITCHES = "mode_switches"
META_DAEMON_PID = "daemon_pid"
META_DAEMON_STARTED = "daemon_started_at"
META_HEARTBEAT = "daemon_heartbeat_at"
#: Prefix of a resource's key: why its last full relist was held back (mass delete).
META_RELIST_HELD = "relist_held_back:"
#: The mirror's stable identity (a UUID): every change carries it, webhook-ids start with it.
META_MIRROR_ID = "mirror_id"
#: Prefix of a resource's key: its first full sync into an empty mirror is under way, so the
#: records it creates are `initial` changes (logged only with `changes.include_initial`).
META_INITIAL_SYNC = "initial_sync:"
#: Prefix of a sink's key: an offset reset `syncd sinks reset` asked the running daemon to
#: make (the seq as text); the daemon makes it on SIGHUP and deletes the key.
META_SINK_RESET = "sink_reset:"
#: Prefix of a sink's key: its delivery state as the running daemon last saw it (JSON:
#: state, attempts, last_error, ...), for `syncd status` in another process.
META_SINK_STATE = "sink_state:"
#: The daemon refreshes its heartbeat this often; status calls it stale after 3 periods.
HEARTBEAT_PERIOD = 5.0
BOOKKEEPING_COLUMNS = (
    "_version",
    "_source",
    "_authority",
    "_synced_at",
    "_deleted",
    "_deleted_at",
    "_listed",
)
#: Columns that hold bookkeeping; a record field of the same name is kept under a mapped
#: column name (see `column_for`).
RESERVED_FIELDS = frozenset(BOOKKEEPING_COLUMNS)
#: Contract fields, so the tables exist with sensible column order before the first record.
CONTRACT_FIELDS: dict[str, tuple[str, ...]] = {
    "orders": (
        "customer",
        "status",
        "total",
        "currency",
        "items",
        "createdAt",
        "updatedAt",
        "version",
    ),
    "customers": ("email", "name", "createdAt", "updatedAt", "version"),
    "inventory": ("product", "quantity", "threshold", "updatedAt", "version"),
}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def fold(name: str) -> bytes:
    """A column name as SQLite compares it: ASCII letters case-insensitively, everything else
    byte for byte (lone surrogates kept, so every field name has a fold)."""
    return name.encode("utf-8", "surrogatepass").lower()


def _storable_name(name: str) -> bool:
    if "\x00" in name:
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def column_for(field: str, taken: set[bytes]) -> str:
    """The column a field not mapped before gets, given the folds of the table's columns.

    A field keeps its own name unless SQLite could not tell it from a column the table
    already has (case-insensitive: `Total` after `total`, `ID` after `id`, `_version` after
    the bookkeeping column) or could not hold it (a NUL, a lone surrogate). Then its name,
    with NULs written `\\x00` and lone surrogates `\\udXXX`, gets the suffix `~2`, or `~3`
    and up when that is taken too. First seen keeps its name, so the mapping depends only on
    the order fields arrive in, and `_fields` keeps it for good."""
    if fold(field) not in taken and _storable_name(field):
        return field
    base = field.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    n = 2
    while fold(f"{base}~{n}") in taken:
        n += 1
    return f"{base}~{n}"


def field_key(field: str) -> str:
    """How `_fields` stores a field name: a JSON string, which holds NULs and lone
    surrogates that SQLite's text cannot."""
    return json.dumps(field)


# -- migrations ---------------------------------------------------------------------------
# Each step takes a database at version N-1 to N inside one transaction. Never edit a
# released step: add a new one.


def _migrate_1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE _meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute(
        "CREATE TABLE _cursors (resource TEXT PRIMARY KEY, cursor TEXT, last_poll_at REAL,"
        " last_error TEXT, last_error_at REAL)"
    )
    db.execute(
        "CREATE TABLE _events (event_id TEXT PRIMARY KEY, event_type TEXT, resource TEXT,"
        " record_id TEXT, version INTEGER, outcome TEXT, first_seen REAL, last_seen REAL,"
        " deliveries INTEGER NOT NULL DEFAULT 1)"
    )
    db.execute(
        "CREATE TABLE _inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT,"
        " received_at REAL, client TEXT, headers TEXT, body BLOB)"
    )
    db.execute(
        "CREATE TABLE _dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT,"
        " event_type TEXT, received_at REAL, reason TEXT, body BLOB)"
    )
    for resource, fields in CONTRACT_FIELDS.items():
        cols = ", ".join(quote(f) for f in fields)
        db.execute(
            f"CREATE TABLE {resource} (id PRIMARY KEY, {cols}, _version INTEGER NOT NULL,"
            " _source TEXT, _synced_at TEXT, _deleted INTEGER NOT NULL DEFAULT 0)"
        )


def _migrate_2(db: sqlite_utils.Database) -> None:
    # Request audit, replay bookkeeping and processing time of events.
    db.execute(
        "CREATE TABLE _audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL, client TEXT,"
        " method TEXT, path TEXT, status INTEGER, reason TEXT, event_id TEXT, body_size INTEGER)"
    )
    db.execute("CREATE INDEX _audit_at ON _audit (at)")
    db.execute("ALTER TABLE _events ADD COLUMN processed_at REAL")
    db.execute("CREATE INDEX _events_last_seen ON _events (last_seen)")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN replayed_at REAL")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN replay_outcome TEXT")


def _migrate_3(db: sqlite_utils.Database) -> None:
    # Full relists sweep by generation (bounded memory, no id set in RAM); tombstones record
    # when they were set; cursors remember relists and per-resource totals.
    for resource in RESOURCES:
        db.execute(f"ALTER TABLE {resource} ADD COLUMN _deleted_at TEXT")
        db.execute(f"ALTER TABLE {resource} ADD COLUMN _listed INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE _cursors ADD COLUMN last_full_relist_at REAL")
    db.execute("ALTER TABLE _cursors ADD COLUMN relist_generation INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE _cursors ADD COLUMN last_changes INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE _cursors ADD COLUMN last_success_at REAL")


def _migrate_4(db: sqlite_utils.Database) -> None:
    # Authority of the most authoritative source that has shown the stored state. `_source`
    # keeps saying which path brought it first; a poll that confirms a webhook's copy raises
    # only the authority, so a later same-version conflict is decided as if every copy had
    # arrived in any other order.
    for resource in RESOURCES:
        db.execute(f"ALTER TABLE {resource} ADD COLUMN _authority INTEGER NOT NULL DEFAULT 0")
        db.execute(
            f"UPDATE {resource} SET _authority = CASE _source WHEN 'webhook' THEN 1"
            " WHEN 'poll' THEN 2 WHEN 'fetch' THEN 2 ELSE 0 END"
        )


def _migrate_5(db: sqlite_utils.Database) -> None:
    # Field -> column mapping (see `column_for`): fields SQLite cannot tell apart or hold
    # get columns of their own, and readers map columns back to fields. Existing columns
    # are their fields. Dead letters from listings keep the record with its resource.
    db.execute(
        "CREATE TABLE _fields (resource TEXT NOT NULL, field TEXT NOT NULL, col TEXT NOT NULL,"
        " PRIMARY KEY (resource, field), UNIQUE (resource, col))"
    )
    for resource in RESOURCES:
        for row in db.execute(f"PRAGMA table_info({quote(resource)})").fetchall():
            if row[1] not in RESERVED_FIELDS:
                db.execute(
                    "INSERT INTO _fields (resource, field, col) VALUES (?, ?, ?)",
                    (resource, field_key(row[1]), row[1]),
                )
    db.execute("ALTER TABLE _dead_letters ADD COLUMN resource TEXT")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN record_id TEXT")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN source TEXT")


def _migrate_6(db: sqlite_utils.Database) -> None:
    # The change feed: its log, the sinks' offsets and dead letters, and the identity of this
    # mirror that every change carries. A copy of the file keeps the identity; a new store
    # gets a new one.
    changelog.create_tables(db.conn)
    db.execute("INSERT OR IGNORE INTO _meta (key, value) VALUES (?, ?)", (META_MIRROR_ID, str(uuid.uuid4())))


def _migrate_7(db: sqlite_utils.Database) -> None:
    # Acknowledge first, apply after: a delivery not yet applied is one `_inbox` row, which is
    # its dedupe key (hence unique event ids) and carries what its `_events` row will start
    # with; the worker writes that row when it applies the delivery. Pending `_events` rows of
    # an older syncd move into their inbox rows.
    db.execute("ALTER TABLE _inbox ADD COLUMN event_type TEXT")
    db.execute("ALTER TABLE _inbox ADD COLUMN resource TEXT")
    db.execute("ALTER TABLE _inbox ADD COLUMN last_seen REAL")
    db.execute("ALTER TABLE _inbox ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 1")
    db.execute(
        "UPDATE _inbox SET (event_type, resource, last_seen, deliveries) ="
        " (SELECT e.event_type, e.resource, e.last_seen, e.deliveries FROM _events e"
        "  WHERE e.event_id = _inbox.event_id)"
        " WHERE event_id IN (SELECT event_id FROM _events WHERE outcome = 'pending')"
    )
    db.execute("UPDATE _inbox SET last_seen = received_at WHERE last_seen IS NULL")
    # Only a repeat of an id whose first copy was still waiting could share it; the first
    # copy is the event.
    db.execute("DELETE FROM _inbox WHERE seq NOT IN (SELECT MIN(seq) FROM _inbox GROUP BY event_id)")
    db.execute("DELETE FROM _events WHERE outcome = 'pending' AND event_id IN (SELECT event_id FROM _inbox)")
    db.execute("CREATE UNIQUE INDEX _inbox_event_id ON _inbox (event_id)")


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
    _migrate_6,
    _migrate_7,
)
assert len(MIGRATIONS) == SCHEMA_VERSION
