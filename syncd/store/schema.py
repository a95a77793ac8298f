"""The SQLite schema of the store: its tables, migrations, and how record values become
column values. Shared by the store (which writes) and the reconciler (which compares)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import sqlite_utils

SCHEMA_VERSION = 5
MIRROR_RESOURCES = ("orders", "customers", "inventory")
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


#: Values SQLite stores as they are; checked by exact type first because this runs for every
#: field of every record applied. Floats are not among them: SQLite turns NaN into NULL.
PLAIN_TYPES = frozenset({str, type(None)})
_INT_MIN, _INT_MAX = -(2**63), 2**63
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
_JSON_ASCII = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def to_json_text(value: Any) -> str:
    """Canonical JSON text of a nested value: sorted keys, compact, UTF-8. orjson is several
    times faster than the json module for the small values records nest, and this runs for
    every nested field of every record applied or compared. Values orjson refuses (integers
    past 64 bits, lone surrogates) take the json module's way; either way one value always
    gets the same text, which is what duplicate detection compares."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        text = _JSON.encode(value)
    try:
        text.encode()
    except UnicodeEncodeError:
        # A lone surrogate: SQLite's UTF-8 cannot hold it, its JSON escape can.
        return _JSON_ASCII.encode(value)
    return text


def escape_text(value: str) -> str:
    """A string SQLite's UTF-8 cannot hold (a lone surrogate) is stored as its JSON string
    literal, quotes included."""
    return json.dumps(value)


def storable_text(value: str) -> str:
    """`value`, or its escape when it holds a lone surrogate. Only for strings that failed
    or may fail to bind: the apply path binds strings as they are and comes here on error."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return escape_text(value)
    return value


def to_stored_value(value: Any) -> Any:
    """`to_column_value`, strings included: what the store holds for any top-level value."""
    return storable_text(value) if type(value) is str else to_column_value(value)


def to_column_value(value: Any) -> Any:
    """Top-level record value -> what SQLite stores. Nested values become JSON text."""
    kind = type(value)
    if kind is int:
        # Beyond 64 bits SQLite cannot hold an integer; keep its digits as text.
        return value if _INT_MIN <= value < _INT_MAX else str(value)
    if kind is float:
        return value if value == value else "NaN"
    if kind in PLAIN_TYPES:
        return value
    if kind is list or kind is dict:
        return to_json_text(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value < _INT_MAX else str(value)
    if isinstance(value, float):
        return float(value) if value == value else "NaN"
    if isinstance(value, str):
        return value
    return to_json_text(value)


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
    for resource in MIRROR_RESOURCES:
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
    for resource in MIRROR_RESOURCES:
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
    for resource in MIRROR_RESOURCES:
        for row in db.execute(f"PRAGMA table_info({quote(resource)})").fetchall():
            if row[1] not in RESERVED_FIELDS:
                db.execute(
                    "INSERT INTO _fields (resource, field, col) VALUES (?, ?, ?)",
                    (resource, field_key(row[1]), row[1]),
                )
    db.execute("ALTER TABLE _dead_letters ADD COLUMN resource TEXT")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN record_id TEXT")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN source TEXT")


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
)
assert len(MIGRATIONS) == SCHEMA_VERSION
