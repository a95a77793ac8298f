"""The webhook event tables: `_inbox` (deliveries acknowledged, not yet applied) and `_events`
(every event id applied, with its outcome). Every statement on either table is here.

An event id is known (its repeats are duplicates) while it is in either table: in `_inbox`
until the worker applies it, then in `_events` for `webhook.dedupe_retention`. The worker
moves it from one to the other in the transaction that applies it, so acknowledging a new
delivery writes one row.

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

#: (event_id, received_at, client, headers as JSON, body, event_type, resource) of a new delivery.
InboxRow = tuple[str, float, str, str, bytes, str | None, str | None]
#: (outcome, event_type, resource, record_id, version, processed_at, event_id).
OutcomeRow = tuple[str | None, str | None, str | None, str | None, int | None, float, str]
#: (event_type, resource, record_id, version, outcome, processed_at, seq) of an applied inbox row.
AppliedRow = tuple[str | None, str | None, str | None, int | None, str | None, float, int]


def known_events(conn: sqlite3.Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of `event_ids` are known: waiting in `_inbox` or applied in `_events`."""
    found: set[str] = set()
    for chunk in chunks(event_ids, 450):
        marks = ",".join("?" * len(chunk))
        found.update(
            r[0]
            for r in conn.execute(
                f"SELECT event_id FROM _events WHERE event_id IN ({marks})"
                f" UNION ALL SELECT event_id FROM _inbox WHERE event_id IN ({marks})",
                [*chunk, *chunk],
            )
        )
    return found


def add_deliveries(
    conn: sqlite3.Connection, inbox_rows: Sequence[InboxRow], repeats: Sequence[tuple[float, str]]
) -> None:
    """New deliveries into `_inbox` (one row each, the dedupe key until applied), and
    repeats (received_at, event_id) of known events counted wherever the event is. Call
    inside the caller's transaction."""
    insert_values(
        conn,
        "INSERT INTO _inbox (event_id, received_at, client, headers, body, event_type, resource, last_seen)",
        [(*row, row[1]) for row in inbox_rows],
    )
    if repeats:
        for table in ("_inbox", "_events"):
            conn.executemany(
                f"UPDATE {table} SET deliveries = deliveries + 1, last_seen = MAX(last_seen, ?)"
                " WHERE event_id = ?",
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
    """Replayed dead letters' outcomes; a type or resource learnt only now fills a NULL one."""
    conn.executemany(
        "UPDATE _events SET outcome=?, event_type=COALESCE(?, event_type), resource=COALESCE(?, resource),"
        " record_id=?, version=?, processed_at=? WHERE event_id=?",
        rows,
    )


def settle_inbox(conn: sqlite3.Connection, rows: Sequence[AppliedRow]) -> None:
    """Applied inbox rows: each one's `_events` row (the dedupe key for the retention from
    now on, with the deliveries counted while it waited), then the inbox rows deleted. Call
    inside the transaction that applied them. A type or resource learnt only now fills a
    NULL one."""
    # `WHERE true`: SQLite's parser needs it between an INSERT's SELECT and ON CONFLICT.
    conn.executemany(
        "INSERT INTO _events (event_id, event_type, resource, record_id, version, outcome,"
        " processed_at, first_seen, last_seen, deliveries)"
        " SELECT event_id, COALESCE(?, event_type), COALESCE(?, resource), ?, ?, ?, ?,"
        " received_at, last_seen, deliveries FROM _inbox WHERE seq = ? AND true"
        " ON CONFLICT (event_id) DO UPDATE SET outcome=excluded.outcome,"
        " event_type=excluded.event_type, resource=excluded.resource, record_id=excluded.record_id,"
        " version=excluded.version, processed_at=excluded.processed_at,"
        " last_seen=MAX(last_seen, excluded.last_seen), deliveries=deliveries + excluded.deliveries",
        rows,
    )
    conn.executemany("DELETE FROM _inbox WHERE seq=?", [(row[-1],) for row in rows])


def inbox_backlog(conn: sqlite3.Connection) -> tuple[int, int]:
    """Deliveries stored but not yet applied, and their bodies' bytes."""
    depth, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM _inbox").fetchone()
    return int(depth), int(size)


def inbox_depth(conn: sqlite3.Connection) -> int:
    """Deliveries stored but not yet applied."""
    return int(conn.execute("SELECT COUNT(*) FROM _inbox").fetchone()[0])


def outcome_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Events by outcome; those still in the inbox (not applied yet) are `pending`."""
    counts = {str(k): int(v) for k, v in conn.execute("SELECT outcome, COUNT(*) FROM _events GROUP BY 1")}
    pending = inbox_depth(conn)
    if pending:
        counts[EventOutcome.PENDING.value] = counts.get(EventOutcome.PENDING.value, 0) + pending
    return counts


def last_delivery_at(conn: sqlite3.Connection) -> float | None:
    """When any webhook delivery was last received (epoch seconds), or None."""
    row: Any = conn.execute(
        "SELECT MAX(t) FROM (SELECT MAX(last_seen) AS t FROM _events"
        " UNION ALL SELECT MAX(last_seen) FROM _inbox)"
    ).fetchone()
    return None if row[0] is None else float(row[0])


def first_event_of_type(conn: sqlite3.Connection, event_type: str, since: float) -> str | None:
    """The id of the first event of `event_type` first seen at or after `since`, applied or not."""
    row = conn.execute(
        "SELECT event_id FROM (SELECT event_id, first_seen AS t FROM _events WHERE event_type=? AND first_seen>=?"
        " UNION ALL SELECT event_id, received_at FROM _inbox WHERE event_type=? AND received_at>=?)"
        " ORDER BY t LIMIT 1",
        (event_type, since, event_type, since),
    ).fetchone()
    return None if row is None else str(row[0])


def prune(store: Store, now: float, *, dedupe_retention: float, audit_retention: float) -> tuple[int, int]:
    """Forget applied event ids and audit rows past their retention, in one transaction
    (events still in the inbox are not in `_events` yet). Returns (events, audit rows) deleted."""
    with store.db.atomic():
        events = store.conn.execute(
            "DELETE FROM _events WHERE last_seen < ?", (now - dedupe_retention,)
        ).rowcount
        audit = prune_audit(store.conn, now - audit_retention)
    return events, audit
