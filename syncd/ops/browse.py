"""What `syncd browse` tells Datasette about the mirror: a description of every table and
bookkeeping column, the bookkeeping tables hidden (one click away, under "hidden tables"),
facets on order status, and canned queries an operator asks for first.

Built from the store's own schema, so a table that exists is described and a canned query
that would name a missing table (the change log off, an older store) is left out rather
than shown broken. Times: the mirror's `_synced_at` and the change log's `at` are RFC 3339
UTC text; the bookkeeping tables' REAL columns are epoch seconds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncd.contract import RESOURCES
from syncd.store.dead_letters import OPEN_DEAD_LETTER_SQL
from syncd.store.schema import BOOKKEEPING_COLUMNS

MIRROR_TABLES: dict[str, str] = {
    "orders": "Orders as the API last showed them (never hard-deleted: cancelling is a status).",
    "customers": "Customers; a customer erased upstream stays here with _deleted = 1 once a full relist misses it.",
    "inventory": "Inventory items (stock per product).",
}

BOOKKEEPING_TABLES: dict[str, str] = {
    "_meta": "Key-value state: schema version, current mode and why, daemon pid and heartbeat, mirror id.",
    "_cursors": "Per resource: the since-cursor (the server's updatedAt), last poll, error and relist.",
    "_events": "Every webhook event id seen, with its outcome, kept webhook.dedupe_retention for deduplication.",
    "_inbox": "Webhook deliveries committed (acknowledged) but not yet applied to the mirror.",
    "_dead_letters": "Events and records that could not be stored, with the reason; `syncd replay` re-drives them.",
    "_audit": "One row per webhook request (client, status, reason), never a secret or signature.",
    "_fields": "How API field names map to column names (see the README, 'Field names and columns').",
    "_changes": "The change log: every state the mirror committed, in seq order (`syncd changes`).",
    "_sink_offsets": "Each change feed sink's offset: the last seq it has taken.",
    "_sink_dead_letters": "Changes a sink gave up on, with the reason (`syncd replay --sink NAME`).",
    "sqlite_sequence": "SQLite's own: the last id each AUTOINCREMENT table handed out.",
    "sqlite_stat1": "SQLite's own: statistics for the query planner.",
}

COLUMNS: dict[str, str] = {
    "_version": "The record's version (from the API): +1 on every change.",
    "_source": "The path that first brought this state: webhook, poll or fetch (a thin event's GET).",
    "_authority": "The highest authority that has shown this state (2 = an API read, 1 = a webhook).",
    "_synced_at": "When syncd committed this state (RFC 3339, UTC).",
    "_deleted": "1 once a full listing no longer returned the record (a tombstone).",
    "_deleted_at": "When the tombstone was set (RFC 3339, UTC).",
    "_listed": "The full-relist generation that last saw the record.",
}

#: Canned queries: (name, title, description, tables they need, SQL). `{recent}` becomes the
#: union of the mirror tables present.
_QUERIES: tuple[tuple[str, str, str, tuple[str, ...], str], ...] = (
    (
        "orders-by-status",
        "Orders by status",
        "Live orders (not tombstoned) per status and currency, with their total.",
        ("orders",),
        "SELECT status, currency, COUNT(*) AS orders, ROUND(SUM(total), 2) AS total\n"
        "FROM orders WHERE _deleted = 0\nGROUP BY status, currency\nORDER BY orders DESC, status",
    ),
    (
        "recent-changes",
        "Recent changes",
        "The last 100 entries of the change log, newest first.",
        ("_changes",),
        "SELECT seq, at, event, resource, record_id, version, previous_version, source, changed\n"
        "FROM _changes ORDER BY seq DESC LIMIT 100",
    ),
    (
        "dead-letters",
        "Dead letters",
        "Events and records that could not be stored, newest first; open ones are what"
        " `syncd replay --all` re-drives.",
        ("_dead_letters",),
        "SELECT id, strftime('%Y-%m-%dT%H:%M:%SZ', received_at, 'unixepoch') AS received,\n"
        f"  CASE WHEN {OPEN_DEAD_LETTER_SQL} THEN 'open' ELSE 'replayed' END AS state,\n"
        "  source, resource, record_id, event_id, event_type, reason\n"
        "FROM _dead_letters ORDER BY id DESC LIMIT 500",
    ),
    (
        "changed-last-hour",
        "Records changed in the last hour",
        "Every mirrored record whose state syncd committed in the last hour, newest first.",
        (),
        "{recent}",
    ),
)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _recent_sql(mirrors: Sequence[str]) -> str:
    since = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')"
    parts = [
        f"SELECT '{name}' AS resource, CAST(id AS TEXT) AS id, _version AS version, _source AS source,"
        f" _deleted AS deleted, _synced_at AS synced_at\nFROM {name} WHERE _synced_at >= {since}"
        for name in mirrors
    ]
    return "\nUNION ALL\n".join(parts) + "\nORDER BY synced_at DESC LIMIT 1000"


def datasette_metadata(conn: sqlite3.Connection, store_path: str) -> dict[str, Any]:
    """Datasette's metadata document for the store `conn` reads (a reader connection)."""
    present = _tables(conn)
    mirrors = [name for name in RESOURCES if name in present]
    tables: dict[str, Any] = {}
    for name in sorted(present):
        if name in MIRROR_TABLES:
            columns = {c: COLUMNS[c] for c in BOOKKEEPING_COLUMNS}
            tables[name] = {
                "description": MIRROR_TABLES[name]
                + " One column per top-level field; columns starting with _ are syncd's bookkeeping.",
                "columns": columns,
                "sort_desc": "_synced_at",
                **({"facets": ["status"]} if name == "orders" else {}),
            }
        elif name.startswith("_") or name.startswith("sqlite_"):
            tables[name] = {
                "description": BOOKKEEPING_TABLES.get(name, "syncd's bookkeeping."),
                "hidden": True,
            }
        else:
            tables[name] = {"description": "Not a syncd table."}
    queries: dict[str, Any] = {}
    for key, title, description, needs, sql in _QUERIES:
        if not set(needs) <= present or not mirrors:
            continue
        queries[key] = {
            "title": title,
            "description": description,
            "sql": _recent_sql(mirrors) if sql == "{recent}" else sql,
        }
    return {
        "title": "syncd mirror",
        "description": "The Pet Store API's orders, customers and inventory as syncd mirrors them,"
        " read-only. Bookkeeping tables are hidden: see 'hidden tables' at the foot of the database page.",
        "databases": {
            database_name(store_path): {
                "description": f"The mirror at {store_path}.",
                "tables": tables,
                "queries": queries,
            }
        },
    }


def database_name(store_path: str) -> str:
    """The name Datasette gives the file: its stem."""
    return Path(store_path).stem
