"""SQL helpers every table module of the store uses: connections, multi-row inserts, chunks."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from syncd.timefmt import try_epoch


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    # Timestamps are compared as instants, in SQL too: string order is wrong across offsets.
    conn.create_function("rfc3339_epoch", 1, try_epoch, deterministic=True)
    return conn


@contextlib.contextmanager
def unsynced_commits(conn: sqlite3.Connection) -> Iterator[None]:
    """Commits inside are made without their own fsync (synchronous=NORMAL); the level
    before is restored whatever happens. For work whose lost commit (a power cut; a process
    crash loses nothing in WAL) is simply redone or redelivered. WAL keeps commits in
    order, so the next synced commit syncs these too. Enter it outside a transaction:
    SQLite refuses to change the level inside one."""
    level = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA synchronous={level}")


#: Rows per multi-row INSERT at most.
_MAX_VALUES_ROWS = 256


def insert_values(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """`head` + `VALUES (?, ...), (?, ...)` for all `rows` in a few statements rather than one
    per row: executemany steps (and hands the GIL back and forth) once per row, which under
    load costs the event loop more than the insert itself. Batches are split into powers of
    two, so at most nine statement shapes per `head` reach the statement cache, and each
    statement stays within the connection's limit on parameters (999 in SQLite builds
    before 3.32)."""
    if not rows:
        return
    width = len(rows[0])
    row_marks = "(" + ",".join("?" * width) + ")"
    cap = min(_MAX_VALUES_ROWS, max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    start = 0
    while start < len(rows):
        size = 1 << (min(cap, len(rows) - start).bit_length() - 1)
        chunk = rows[start : start + size]
        conn.execute(f"{head} VALUES {','.join([row_marks] * size)}", [v for row in chunk for v in row])
        start += size


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
