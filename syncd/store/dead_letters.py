"""The dead-letter table `_dead_letters`: what could not be applied, with why, until a
replay applies it. Every statement on it is here."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from syncd.core.records import EventOutcome

#: The one definition of an open dead letter, shared by `syncd status` and `syncd replay
#: --all`: never replayed, or replayed and still invalid. A replay whose fetch failed leaves
#: the letter as it was; one that applied it (or found it stale, a duplicate, gone) closes it.
OPEN_DEAD_LETTER_SQL = f"(replay_outcome IS NULL OR replay_outcome = '{EventOutcome.INVALID.value}')"

#: (id, event_id, received_at, body, source, resource) of a dead letter to replay.
LetterRow = tuple[int, str | None, float, bytes, str | None, str | None]
#: (id, source, resource, record_id, event_id, reason) of an open dead letter, for status.
LetterSummary = tuple[int, str, str | None, str | None, str | None, str | None]


def _text(value: str | None) -> str | None:
    """Text SQLite's UTF-8 can hold: lone surrogates written as backslash escapes."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode()


def add_dead_letter(
    conn: sqlite3.Connection,
    event_id: str | None,
    event_type: str | None,
    received_at: float,
    reason: str,
    body: bytes,
    *,
    resource: str | None = None,
    record_id: str | None = None,
    source: str = "webhook",
) -> None:
    """Keep what could not be applied, with why. `body` is the webhook body, or for a
    record from a listing (`source="poll"`) the record as JSON."""
    conn.execute(
        "INSERT INTO _dead_letters (event_id, event_type, received_at, reason, body, resource,"
        " record_id, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (event_id, _text(event_type), received_at, _text(reason), body, resource, _text(record_id), source),
    )


def mark_replayed(
    conn: sqlite3.Connection, letter_id: int, at: float, outcome: str | None, reason: str | None
) -> None:
    """A replay's outcome; `reason`, when given, replaces why the letter is kept (a newer
    syncd may refuse it for another reason than the one that first made it a dead letter)."""
    conn.execute(
        "UPDATE _dead_letters SET replayed_at=?, replay_outcome=?, reason=COALESCE(?, reason) WHERE id=?",
        (at, outcome, reason, letter_id),
    )


def load_letters(conn: sqlite3.Connection, ids: Sequence[int] | None) -> list[LetterRow]:
    """Dead letters to replay: the given ids, or every open one, oldest first."""
    head = "SELECT id, event_id, received_at, body, source, resource FROM _dead_letters"
    if ids:
        marks = ",".join("?" * len(ids))
        sql = f"{head} WHERE id IN ({marks}) ORDER BY id"
        params: Sequence[Any] = list(ids)
    else:
        sql = f"{head} WHERE {OPEN_DEAD_LETTER_SQL} ORDER BY id"
        params = ()
    return [
        (dl_id, event_id, received_at, bytes(body), source, resource)
        for dl_id, event_id, received_at, body, source, resource in conn.execute(sql, params)
    ]


def dead_letter_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(all dead letters, open ones); works on a reader connection."""
    total, still_open = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM({OPEN_DEAD_LETTER_SQL}), 0) FROM _dead_letters"
    ).fetchone()
    return int(total), int(still_open)


def latest_open(conn: sqlite3.Connection, limit: int) -> list[LetterSummary]:
    """The `limit` most recent open dead letters, newest first."""
    return [
        (int(row[0]), str(row[1]), *row[2:])
        for row in conn.execute(
            "SELECT id, COALESCE(source, 'webhook'), resource, record_id, event_id, reason"
            f" FROM _dead_letters WHERE {OPEN_DEAD_LETTER_SQL} ORDER BY id DESC LIMIT ?",
            (limit,),
        )
    ]
