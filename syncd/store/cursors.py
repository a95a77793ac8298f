"""The poll cursor table `_cursors`: per resource, the committed since-cursor and what the
last polls did. `CursorTable` is a part of `Store`."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CursorState:
    resource: str
    cursor: str | None
    last_poll_at: float | None
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    last_full_relist_at: float | None
    relist_generation: int
    last_changes: int


class CursorTable:
    """The cursor half of `Store`: its methods run on the store's connection."""

    conn: sqlite3.Connection

    def cursor_state(self, resource: str) -> CursorState:
        row = self.conn.execute(
            "SELECT cursor, last_poll_at, last_success_at, last_error, last_error_at,"
            " last_full_relist_at, relist_generation, last_changes FROM _cursors WHERE resource=?",
            (resource,),
        ).fetchone()
        if row is None:
            return CursorState(resource, None, None, None, None, None, None, 0, 0)
        return CursorState(resource, *row)

    def set_cursor(self, resource: str, cursor: str | None) -> None:
        self.conn.execute(
            "INSERT INTO _cursors (resource, cursor) VALUES (?, ?)"
            " ON CONFLICT(resource) DO UPDATE SET cursor=excluded.cursor",
            (resource, cursor),
        )

    def update_cursor_meta(self, resource: str, **fields: Any) -> None:
        allowed = {
            "last_poll_at",
            "last_success_at",
            "last_error",
            "last_error_at",
            "last_full_relist_at",
            "relist_generation",
            "last_changes",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown cursor fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        self.conn.execute("INSERT OR IGNORE INTO _cursors (resource) VALUES (?)", (resource,))
        sets = ", ".join(f"{k}=?" for k in fields)
        self.conn.execute(f"UPDATE _cursors SET {sets} WHERE resource=?", (*fields.values(), resource))


def cursor_rows(conn: sqlite3.Connection) -> dict[str, tuple[Any, ...]]:
    """resource -> (cursor, last_poll_at, last_success_at, last_error, last_error_at,
    last_full_relist_at, last_changes) of every resource polled; works on a reader connection."""
    return {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT resource, cursor, last_poll_at, last_success_at, last_error, last_error_at,"
            " last_full_relist_at, last_changes FROM _cursors"
        )
    }
