"""The drift check's SQL (`syncd verify`): one full listing's (id, version) pairs in a
temporary table of a read-only connection, compared with a mirror table.

The temp table lives in SQLite's temp file, not in Python, so memory stays bounded however
large the resource.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from syncd.store.schema import quote


def start_listing(conn: sqlite3.Connection) -> None:
    """An empty `temp.listed`, dropping one a previous attempt left."""
    conn.execute("DROP TABLE IF EXISTS temp.listed")
    conn.execute("CREATE TEMP TABLE listed (id PRIMARY KEY, version INTEGER NOT NULL)")


def add_listed(conn: sqlite3.Connection, rows: Sequence[tuple[Any, int]]) -> None:
    """(id, version) of one page. A record changed during the listing can be listed twice;
    its newer version counts."""
    conn.executemany(
        "INSERT INTO temp.listed (id, version) VALUES (?, ?)"
        " ON CONFLICT(id) DO UPDATE SET version=MAX(version, excluded.version)",
        rows,
    )


def end_listing(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS temp.listed")


def _drift(conn: sqlite3.Connection, where_sql: str, sample: int) -> tuple[int, list[Any]]:
    count = conn.execute(f"SELECT COUNT(*) FROM {where_sql}").fetchone()[0]
    ids = [row[0] for row in conn.execute(f"SELECT id FROM {where_sql} ORDER BY id LIMIT ?", (sample,))]
    return int(count), ids


def compare_listing(conn: sqlite3.Connection, resource: str, sample: int) -> dict[str, Any]:
    """The listing in `temp.listed` against the mirror table of `resource`: how many were
    listed and are live, and per kind of drift (count, the first `sample` ids by id)."""
    t = quote(resource)
    joined = f"temp.listed AS l LEFT JOIN {t} AS m ON m.id = l.id"
    return {
        "listed": conn.execute("SELECT COUNT(*) FROM temp.listed").fetchone()[0],
        "mirror_live": conn.execute(f"SELECT COUNT(*) FROM {t} WHERE _deleted = 0").fetchone()[0],
        "missing": _drift(conn, f"(SELECT l.id FROM {joined} WHERE m.id IS NULL OR m._deleted = 1)", sample),
        "stale": _drift(
            conn, f"(SELECT l.id FROM {joined} WHERE m._deleted = 0 AND m._version < l.version)", sample
        ),
        "ahead": _drift(
            conn, f"(SELECT l.id FROM {joined} WHERE m._deleted = 0 AND m._version > l.version)", sample
        ),
        "extra": _drift(
            conn,
            f"(SELECT m.id FROM {t} AS m WHERE m._deleted = 0"
            " AND NOT EXISTS (SELECT 1 FROM temp.listed AS l WHERE l.id = m.id))",
            sample,
        ),
    }
