"""The change log (`_changes`), the sinks' durable offsets and their dead letters: all of the
feed's SQL, on a plain `sqlite3.Connection`.

None of these functions opens or commits a transaction: the store's writer calls them
inside its own, so a change row commits with the mirror write that caused it and an offset
with the delivery bookkeeping around it. Readers may call the read functions on their own
connection (WAL lets them read while the writer writes).

`seq` is an `INTEGER PRIMARY KEY AUTOINCREMENT`: SQLite then never hands out a rowid it has
handed out before, even after the rows holding the largest ones were pruned, so a consumer
that remembers the last seq it saw never mistakes a new change for an old one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from syncd.core.changes import ROW_FIELDS, Change, NewChange, RecordId, load_json

_COLUMNS: Final = ", ".join(ROW_FIELDS)
_SELECT: Final = f"SELECT seq, {_COLUMNS} FROM _changes"
_INSERT_HEAD: Final = f"INSERT INTO _changes ({_COLUMNS}) VALUES "
_ROW_MARKS: Final = "(" + ",".join("?" * len(ROW_FIELDS)) + ")"
#: Rows per INSERT at most; batches are cut into powers of two so only a few statement
#: shapes reach the statement cache.
_MAX_ROWS: Final = 64
#: Ids per `IN (...)` list, within the parameter limit of every SQLite build (999).
_MAX_IDS: Final = 500

DDL: Final = (
    # record_id has no declared type: it keeps what the API gives, an integer for orders and
    # text for customers and inventory. `at` is text in the store's fixed-width UTC format,
    # so comparing strings compares times.
    "CREATE TABLE IF NOT EXISTS _changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " mirror TEXT NOT NULL, event TEXT NOT NULL, kind TEXT NOT NULL, resource TEXT NOT NULL,"
    " record_id NOT NULL, version INTEGER NOT NULL, previous_version INTEGER,"
    " source TEXT NOT NULL, changed TEXT, data TEXT NOT NULL, at TEXT NOT NULL,"
    " initial INTEGER NOT NULL DEFAULT 0)",
    # Chaining a record's next change (previous_version, changed) looks up its last one.
    "CREATE INDEX IF NOT EXISTS _changes_record ON _changes (resource, record_id, seq)",
    "CREATE TABLE IF NOT EXISTS _sink_offsets (sink TEXT PRIMARY KEY,"
    " delivered_seq INTEGER NOT NULL, updated_at REAL NOT NULL)",
    # A dead letter keeps the whole change as JSON: the log may prune the row it came from.
    "CREATE TABLE IF NOT EXISTS _sink_dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " sink TEXT NOT NULL, seq INTEGER NOT NULL, event TEXT NOT NULL, change TEXT NOT NULL,"
    " reason TEXT NOT NULL, at REAL NOT NULL, replayed_at REAL, replay_outcome TEXT)",
    "CREATE INDEX IF NOT EXISTS _sink_dead_letters_sink ON _sink_dead_letters (sink, id)",
)


def create_tables(conn: sqlite3.Connection) -> None:
    """Create the feed's tables and indexes if they do not exist (for a schema migration)."""
    for statement in DDL:
        conn.execute(statement)


def append(conn: sqlite3.Connection, changes: Sequence[NewChange]) -> list[int]:
    """Insert `changes` in order and return the seqs they were given, increasing."""
    return append_rows(conn, [change.to_row() for change in changes])


def append_rows(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[int]:
    """`append` of rows already in `ROW_FIELDS` order (`syncd.core.changes.change_row`).

    Must run inside the writer's transaction: the seqs are read back from
    `last_insert_rowid()`, which is only the last of a contiguous run because nothing else
    inserts into `_changes` between the rows of one statement. Multi-row INSERTs: 3.1 us a
    row against 3.8 for executemany of a one-row INSERT (fewer statement steps, one
    sqlite_sequence update per statement)."""
    seqs: list[int] = []
    start = 0
    while start < len(rows):
        size = 1 << (min(_MAX_ROWS, len(rows) - start).bit_length() - 1)
        params = [value for row in rows[start : start + size] for value in row]
        cur = conn.execute(_INSERT_HEAD + ",".join([_ROW_MARKS] * size), params)
        last = cur.lastrowid
        if last is None:  # pragma: no cover - an INSERT always sets it
            raise RuntimeError("SQLite reported no rowid for an insert into _changes")
        seqs.extend(range(last - size + 1, last + 1))
        start += size
    return seqs


def read_after(
    conn: sqlite3.Connection, seq: int, limit: int, *, resources: Iterable[str] | None = None
) -> list[Change]:
    """Up to `limit` changes with a seq greater than `seq`, in seq order; only those of
    `resources` when given."""
    if resources is None:
        rows = conn.execute(f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
    else:
        names = list(resources)
        if not names:
            return []
        marks = ",".join("?" * len(names))
        # NOT INDEXED: on its own SQLite takes the index by record for `resource IN` and sorts
        # every change of those resources to return the first `limit` after `seq`, so reading
        # a resource's changes in batches costs the square of its changes; by seq the read
        # stops at the limit (`syncd changes --resource orders` over 60,000 order changes:
        # 0.94 s CPU -> 0.50; over 180,000: 5.44 s -> 1.51).
        rows = conn.execute(
            f"{_SELECT} NOT INDEXED WHERE seq > ? AND resource IN ({marks}) ORDER BY seq LIMIT ?",
            (seq, *names, limit),
        )
    return [Change.from_row(row) for row in rows]


def head(conn: sqlite3.Connection) -> int:
    """The last seq ever assigned (0 for an empty log), even if pruning removed its row."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_changes'").fetchone()
    return 0 if row is None else int(row[0])


def oldest(conn: sqlite3.Connection) -> int | None:
    """The smallest seq still in the log, None when it is empty."""
    row = conn.execute("SELECT MIN(seq) FROM _changes").fetchone()
    return None if row[0] is None else int(row[0])


def has_log(conn: sqlite3.Connection) -> bool:
    """Whether the store has the feed's tables (a store before schema 6 has none)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_changes'").fetchone() is not None


def entries(conn: sqlite3.Connection) -> int:
    """How many changes the log holds now."""
    return int(conn.execute("SELECT COUNT(*) FROM _changes").fetchone()[0])


def counts_between(conn: sqlite3.Connection, after: int, upto: int) -> dict[tuple[str, str], int]:
    """Changes with `after < seq <= upto` by (resource, event): a range of the primary key,
    no row's data decoded (the daemon's change counter)."""
    rows = conn.execute(
        "SELECT resource, event, COUNT(*) FROM _changes WHERE seq > ? AND seq <= ? GROUP BY resource, event",
        (after, upto),
    )
    return {(str(resource), str(event)): int(n) for resource, event, n in rows}


def offset(conn: sqlite3.Connection, sink: str) -> int | None:
    """The last seq `sink` has taken (delivered or skipped), None for a sink never seen."""
    row = conn.execute("SELECT delivered_seq FROM _sink_offsets WHERE sink = ?", (sink,)).fetchone()
    return None if row is None else int(row[0])


def offsets(conn: sqlite3.Connection) -> dict[str, int]:
    """Every sink's offset, for status and for the pruning bound."""
    return {
        str(sink): int(seq) for sink, seq in conn.execute("SELECT sink, delivered_seq FROM _sink_offsets")
    }


def set_offset(conn: sqlite3.Connection, sink: str, seq: int, *, now: float | None = None) -> None:
    """Record that `sink` has taken everything up to `seq`. Moves backwards too (a reset)."""
    conn.execute(
        "INSERT INTO _sink_offsets (sink, delivered_seq, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(sink) DO UPDATE SET delivered_seq = excluded.delivered_seq,"
        " updated_at = excluded.updated_at",
        (sink, seq, time.time() if now is None else now),
    )


def drop_offset(conn: sqlite3.Connection, sink: str) -> None:
    """Forget a sink removed from the config, so it no longer holds back pruning."""
    conn.execute("DELETE FROM _sink_offsets WHERE sink = ?", (sink,))


@dataclass(frozen=True, slots=True)
class SinkDeadLetter:
    id: int
    sink: str
    seq: int
    change: Change
    reason: str
    at: float
    replayed_at: float | None
    replay_outcome: str | None


def add_sink_dead_letter(
    conn: sqlite3.Connection, sink: str, change: Change, reason: str, *, now: float | None = None
) -> int:
    """Keep a change `sink` gave up on, with why; returns the dead letter's id."""
    cur = conn.execute(
        "INSERT INTO _sink_dead_letters (sink, seq, event, change, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
        (
            sink,
            change.seq,
            change.event,
            change.to_json().decode(),
            reason,
            time.time() if now is None else now,
        ),
    )
    return int(cur.lastrowid or 0)


def sink_dead_letters(
    conn: sqlite3.Connection, sink: str, *, pending_only: bool = True, limit: int = 1000
) -> list[SinkDeadLetter]:
    """A sink's dead letters, oldest first; by default only those not replayed yet."""
    where = " AND replayed_at IS NULL" if pending_only else ""
    rows = conn.execute(
        "SELECT id, sink, seq, change, reason, at, replayed_at, replay_outcome FROM _sink_dead_letters"
        f" WHERE sink = ?{where} ORDER BY id LIMIT ?",
        (sink, limit),
    )
    return [
        SinkDeadLetter(int(r[0]), r[1], int(r[2]), Change.from_json(r[3]), r[4], r[5], r[6], r[7])
        for r in rows
    ]


def mark_dead_letter_replayed(
    conn: sqlite3.Connection, dead_letter_id: int, outcome: str, *, now: float | None = None
) -> None:
    conn.execute(
        "UPDATE _sink_dead_letters SET replayed_at = ?, replay_outcome = ? WHERE id = ?",
        (time.time() if now is None else now, outcome, dead_letter_id),
    )


def prune(conn: sqlite3.Connection, *, before_at: str, keep_after_seq: int, limit: int | None = None) -> int:
    """Delete entries every sink has taken (`seq <= keep_after_seq`, the smallest offset of
    the configured sinks, or the head when there are none) whose `at` is before `before_at`
    (now minus retention, in the store's timestamp format). `limit` bounds one call so a
    large backlog is pruned in several short transactions. Returns how many were deleted."""
    if limit is None:
        cur = conn.execute("DELETE FROM _changes WHERE seq <= ? AND at < ?", (keep_after_seq, before_at))
    else:
        cur = conn.execute(
            "DELETE FROM _changes WHERE seq IN (SELECT seq FROM _changes WHERE seq <= ? AND at < ?"
            " ORDER BY seq LIMIT ?)",
            (keep_after_seq, before_at, limit),
        )
    return cur.rowcount


def last_change_of(conn: sqlite3.Connection, resource: str, record_id: RecordId) -> Change | None:
    """The record's most recent change still in the log, None when it has none."""
    row = conn.execute(
        f"{_SELECT} WHERE resource = ? AND record_id = ? ORDER BY seq DESC LIMIT 1", (resource, record_id)
    ).fetchone()
    return None if row is None else Change.from_row(row)


def last_changes_of(
    conn: sqlite3.Connection, resource: str, record_ids: Sequence[RecordId]
) -> dict[Any, Change]:
    """`last_change_of` for many records of one resource at once (the apply path works in
    batches), keyed by record id as stored."""
    out: dict[Any, Change] = {}
    for start in range(0, len(record_ids), _MAX_IDS):
        chunk = record_ids[start : start + _MAX_IDS]
        marks = ",".join("?" * len(chunk))
        # The index on (resource, record_id, seq) answers MAX(seq) per id without a scan.
        rows = conn.execute(
            f"{_SELECT} WHERE seq IN (SELECT MAX(seq) FROM _changes WHERE resource = ?"
            f" AND record_id IN ({marks}) GROUP BY record_id)",
            (resource, *chunk),
        )
        for row in rows:
            change = Change.from_row(row)
            out[change.record_id] = change
    return out


#: A replay's outcomes (`mark_dead_letter_replayed`). A dead letter whose replay failed is
#: still open: `syncd replay --sink` tries it again, `syncd sinks list` counts it.
REPLAY_DELIVERED: Final = "delivered"
REPLAY_FAILED: Final = "failed"
_OPEN_SINK_DEAD_LETTER: Final = f"(replayed_at IS NULL OR replay_outcome = '{REPLAY_FAILED}')"


def open_sink_dead_letters(
    conn: sqlite3.Connection, sink: str, *, after_id: int = 0, limit: int = 100
) -> list[SinkDeadLetter]:
    """A sink's open dead letters (never replayed, or their last replay failed) with an id
    greater than `after_id`, oldest first: a replay pages through them by id, so one whose
    replay fails again is not read twice in the same run."""
    rows = conn.execute(
        "SELECT id, sink, seq, change, reason, at, replayed_at, replay_outcome FROM _sink_dead_letters"
        f" WHERE sink = ? AND id > ? AND {_OPEN_SINK_DEAD_LETTER} ORDER BY id LIMIT ?",
        (sink, after_id, limit),
    )
    return [
        SinkDeadLetter(int(r[0]), r[1], int(r[2]), Change.from_json(r[3]), r[4], r[5], r[6], r[7])
        for r in rows
    ]


def open_sink_dead_letter_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many open dead letters each sink has (sinks with none are left out)."""
    rows = conn.execute(
        f"SELECT sink, COUNT(*) FROM _sink_dead_letters WHERE {_OPEN_SINK_DEAD_LETTER} GROUP BY sink"
    )
    return {str(sink): int(count) for sink, count in rows}


class LastState(NamedTuple):
    """What the apply path needs of a record's last change to chain the next one: its
    version, whether it was a deletion, and its data."""

    version: int
    deleted: bool
    data: Any


def last_states_of(
    conn: sqlite3.Connection, resource: str, record_ids: Sequence[RecordId]
) -> dict[Any, LastState]:
    """`last_changes_of` reduced to `LastState`, keyed the same way. The recorder asks this
    for every record an update writes: reading three columns and parsing only `data` costs
    about a third of building whole `Change`s."""
    out: dict[Any, LastState] = {}
    for start in range(0, len(record_ids), _MAX_IDS):
        chunk = record_ids[start : start + _MAX_IDS]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT record_id, version, kind = 'deleted', CAST(data AS BLOB) FROM _changes WHERE seq IN"
            " (SELECT MAX(seq) FROM _changes WHERE resource = ?"
            f" AND record_id IN ({marks}) GROUP BY record_id)",
            (resource, *chunk),
        )
        for record_id, version, deleted, data in rows:
            out[record_id] = LastState(version, bool(deleted), load_json(data))
    return out
