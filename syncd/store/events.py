"""The webhook event tables: `_inbox` (deliveries not yet applied) and `_events` (every event
id seen, with its outcome: the dedupe key). Every statement on either table is here.

Writers take the writer's connection (`store.conn`); the readers also work on a reader
connection (`Store.open_reader`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from syncd.core.records import EventOutcome
from syncd.store.audit import prune_audit
from syncd.store.db import Store
from syncd.store.sql import chunks, insert_values

#: (event_id, received_at, client, headers as JSON, body) of a new delivery.
InboxRow = tuple[str, float, str, str, bytes]
#: (event_id, event_type, resource, received_at) of a new event.
NewEvent = tuple[str, str | None, str | None, float]
#: (outcome, event_type, resource, record_id, version, processed_at, event_id).
OutcomeRow = tuple[str | None, str | None, str | None, str | None, int | None, float, str]


def known_events(conn: sqlite3.Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of `event_ids` are in `_events` already."""
    found: set[str] = set()
    for chunk in chunks(event_ids, 900):
        marks = ",".join("?" * len(chunk))
        found.update(
            r[0] for r in conn.execute(f"SELECT event_id FROM _events WHERE event_id IN ({marks})", chunk)
        )
    return found


def add_deliveries(
    conn: sqlite3.Connection,
    inbox_rows: Sequence[InboxRow],
    new_events: Sequence[NewEvent],
    repeats: Sequence[tuple[float, str]],
) -> None:
    """New deliveries into `_inbox` with their `_events` rows (outcome pending), and repeats
    (received_at, event_id) of known events counted. Call inside the caller's transaction:
    a delivery and its dedupe key are committed together or not at all."""
    insert_values(conn, "INSERT INTO _inbox (event_id, received_at, client, headers, body)", inbox_rows)
    insert_values(
        conn,
        "INSERT INTO _events (event_id, event_type, resource, first_seen, last_seen, outcome)",
        [(eid, etype, res, at, at, EventOutcome.PENDING.value) for eid, etype, res, at in new_events],
    )
    conn.executemany(
        "UPDATE _events SET deliveries = deliveries + 1, last_seen = MAX(last_seen, ?) WHERE event_id = ?",
        repeats,
    )


def load_inbox(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[tuple[int, str, float, bytes]]:
    """(seq, event_id, received_at, body) of the next `limit` deliveries after `after_seq`."""
    rows = conn.execute(
        "SELECT seq, event_id, received_at, body FROM _inbox WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [(seq, event_id, received_at, bytes(body)) for seq, event_id, received_at, body in rows]


def record_outcomes(conn: sqlite3.Connection, rows: Sequence[OutcomeRow]) -> None:
    """Processed events' outcomes; a type or resource learnt only now fills a NULL one."""
    conn.executemany(
        "UPDATE _events SET outcome=?, event_type=COALESCE(?, event_type), resource=COALESCE(?, resource),"
        " record_id=?, version=?, processed_at=? WHERE event_id=?",
        rows,
    )


def dequeue(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Delete processed deliveries from `_inbox`."""
    conn.executemany("DELETE FROM _inbox WHERE seq=?", [(seq,) for seq in seqs])


def inbox_depth(conn: sqlite3.Connection) -> int:
    """Deliveries stored but not yet applied."""
    return int(conn.execute("SELECT COUNT(*) FROM _inbox").fetchone()[0])


def outcome_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Events by outcome."""
    return {str(k): int(v) for k, v in conn.execute("SELECT outcome, COUNT(*) FROM _events GROUP BY 1")}


def last_delivery_at(conn: sqlite3.Connection) -> float | None:
    """When any webhook delivery was last received (epoch seconds), or None."""
    row: Any = conn.execute(
        "SELECT MAX(t) FROM (SELECT MAX(last_seen) AS t FROM _events"
        " UNION ALL SELECT MAX(received_at) FROM _inbox)"
    ).fetchone()
    return None if row[0] is None else float(row[0])


def first_event_of_type(conn: sqlite3.Connection, event_type: str, since: float) -> str | None:
    """The id of the first event of `event_type` first seen at or after `since`."""
    row = conn.execute(
        "SELECT event_id FROM _events WHERE event_type=? AND first_seen>=? ORDER BY first_seen LIMIT 1",
        (event_type, since),
    ).fetchone()
    return None if row is None else str(row[0])


def prune(store: Store, now: float, *, dedupe_retention: float, audit_retention: float) -> tuple[int, int]:
    """Forget event ids and audit rows past their retention, in one transaction. Pending
    events are kept. Returns (events, audit rows) deleted."""
    with store.db.atomic():
        events = store.conn.execute(
            "DELETE FROM _events WHERE last_seen < ? AND outcome != ?",
            (now - dedupe_retention, EventOutcome.PENDING.value),
        ).rowcount
        audit = prune_audit(store.conn, now - audit_retention)
    return events, audit
