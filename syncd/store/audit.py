"""The request audit table `_audit`: one row per webhook request the receiver answered."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from syncd.store.sql import insert_values

#: (at, client, method, path, status, reason, event_id, body_size) per request.
AuditValues = tuple[float, str, str, str, int, str, str | None, int]


def add_audit(conn: sqlite3.Connection, rows: Sequence[AuditValues]) -> None:
    insert_values(
        conn, "INSERT INTO _audit (at, client, method, path, status, reason, event_id, body_size)", rows
    )


def prune_audit(conn: sqlite3.Connection, before: float) -> int:
    """Delete audit rows older than `before`; returns how many."""
    return conn.execute("DELETE FROM _audit WHERE at < ?", (before,)).rowcount
