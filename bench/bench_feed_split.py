"""Where an update's time goes with the change log on: CPU microseconds per update of the
log's parts, each timed alone over the same 20,000 orders bench_feed's apply phase updates.

- off / on: apply_batch of the updates (batches of 1000) with the log off / on.
- lookup: `changelog.last_states_of` for the updated records (the SQL and parsing `data`).
- lookup_by_seq: the same rows read by primary key (seq), as they would be if each mirror
  row kept its record's last seq: what that design would leave of the lookup.
- changed: `changed_fields` of each update against its previous state.
- row: `change_row` (the event, `changed` and both JSON texts; includes `changed`).
- insert: `changelog.append_rows` of the built rows, with the (resource, record_id, seq)
  index; insert_noindex: the same after dropping it.
- floor: the INSERT alone into a bare `_changes` table, rows pre-built (no index).

Both lookups start from a checkpointed file and keep the states they parse (as the recorder
does until the batch is written), and every part runs under the daemon's collector settings
(`serving_heap`), as `syncd run`'s apply does.

Prints one JSON line of medians over the rounds: {"name": "change feed split", ...}.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench_apply import BATCH, changes

from syncd.core.changes import ChangeKind, change_row, changed_fields, load_json, rule_for
from syncd.heap import serving_heap
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.timefmt import format_epoch

AT = "2026-12-02T00:00:00.000Z"


def one_round(tmp: Path, n: int, out: dict[str, list[float]]) -> None:
    def took(label: str, started: float) -> None:
        out.setdefault(label, []).append((time.process_time() - started) / n * 1e6)

    inserts, updates = changes(range(n), 1), changes(range(n), 2)
    ids = list(range(n))
    for side in ("off", "on"):
        store = Store(tmp / f"{side}.db", record_changes=side == "on")
        try:
            for start in range(0, n, BATCH):
                apply_batch(store, inserts[start : start + BATCH], synced_at=format_epoch())
            started = time.process_time()
            for start in range(0, n, BATCH):
                apply_batch(store, updates[start : start + BATCH], synced_at=format_epoch())
            took(side, started)
            if side == "off":
                continue
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            started = time.process_time()
            previous = []
            for start in range(0, n, BATCH):
                states = changelog.last_states_of(store.conn, "orders", ids[start : start + BATCH])
                previous.extend(states[i].data for i in ids[start : start + BATCH])
            took("lookup", started)
            head = changelog.head(store.conn)
            seqs = list(range(head - n + 1, head + 1))
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            kept = []
            started = time.process_time()
            for start in range(0, n, BATCH):
                chunk = seqs[start : start + BATCH]
                for _chunk in (chunk[:500], chunk[500:]):
                    marks = ",".join("?" * len(_chunk))
                    rows_read = store.conn.execute(
                        "SELECT record_id, version, kind = 'deleted', CAST(data AS BLOB) FROM _changes"
                        f" WHERE seq IN ({marks})",
                        _chunk,
                    )
                    kept.extend(changelog.LastState(v, bool(d), load_json(b)) for _, v, d, b in rows_read)
            took("lookup_by_seq", started)
            started = time.process_time()
            for prev, change in zip(previous, updates, strict=True):
                changed_fields(prev, change.data)
            took("changed", started)
            rule = rule_for("orders")
            started = time.process_time()
            rows = [
                change_row(
                    "m", rule, "orders", c.id, ChangeKind.UPDATED, "poll", c.data, 2, prev, 1, AT, False
                )
                for prev, c in zip(previous, updates, strict=True)
            ]
            took("row", started)
            for label in ("insert", "insert_noindex"):
                if label == "insert_noindex":
                    store.conn.execute("DROP INDEX _changes_record")
                started = time.process_time()
                with store.db.atomic():
                    for start in range(0, n, BATCH):
                        changelog.append_rows(store.conn, rows[start : start + BATCH])
                took(label, started)
        finally:
            store.close()
    conn = sqlite3.connect(tmp / "floor.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(changelog.DDL[0])
        started = time.process_time()
        for start in range(0, n, BATCH):
            conn.execute("BEGIN")
            changelog.append_rows(conn, rows[start : start + BATCH])
            conn.execute("COMMIT")
        took("floor", started)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-feed-split-") as tmp, serving_heap():
            one_round(Path(tmp), args.records, out)
    print(
        json.dumps(
            {
                "name": "change feed split",
                "unit": "CPU us per update",
                "medians": {k: round(statistics.median(v), 2) for k, v in out.items()},
                "rounds": {k: [round(x, 2) for x in v] for k, v in out.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
