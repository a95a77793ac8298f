import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.contract import RESOURCES
from syncd.core.records import parse_record
from syncd.core.values import to_column_value, to_json_text
from syncd.errors import StoreClosedError, StoreError
from syncd.store.apply import apply_batch
from syncd.store.audit import add_audit
from syncd.store.db import Store
from syncd.store.dead_letters import add_dead_letter
from syncd.store.events import known_events, prune
from syncd.store.mirror import mirror_counts
from syncd.store.schema import BOOKKEEPING_COLUMNS, SCHEMA_VERSION
from syncd.store.sql import insert_values
from syncd.store.writer import Writer, running_writer
from syncd.timefmt import format_epoch
from syncd.timefmt import format_epoch as utc_iso
from syncd.timefmt import to_epoch as parse_iso

SYNCED = "2024-01-15T10:30:00.000Z"


def order(rid: int, version: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "customer": f"c{rid}@example.com",
        "status": "placed",
        "total": 10.5,
        "updatedAt": f"2024-01-15T10:{version:02d}:00.000Z",
        "version": version,
        **extra,
    }


def row(store: Store, resource: str, rid: Any) -> dict[str, Any]:
    cur = store.conn.execute(f"SELECT * FROM {resource} WHERE id=?", (rid,))
    names = [d[0] for d in cur.description]
    found = cur.fetchone()
    assert found is not None, f"{resource} {rid!r} not in the mirror"
    return dict(zip(names, found, strict=True))


def test_insert_values_keeps_within_the_connections_parameter_limit() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER, b TEXT, c REAL)")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20)  # older SQLite builds allow 999
    rows = [(i, str(i), i / 2) for i in range(100)]
    insert_values(conn, "INSERT INTO t (a, b, c)", rows)
    assert conn.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == rows


# -- durability settings and schema ----------------------------------------------------------


@given(st.integers(min_value=0, max_value=700))
def test_insert_values_stores_every_row_in_order_whatever_the_count(count: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, a INTEGER, b TEXT, c BLOB)")
    rows = [(i, f"v{i}", bytes([i % 256])) for i in range(count)]
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    insert_values(conn, "INSERT INTO t (a, b, c)", rows)
    conn.set_trace_callback(None)
    assert conn.execute("SELECT a, b, c FROM t ORDER BY seq").fetchall() == rows
    # A few statements per batch (powers of two, at most 256 rows each), not one per row.
    assert len(statements) <= 9 + count // 256
    assert (count == 0) == (not statements)


def test_store_uses_wal_and_full_sync(store: Store, tmp_path: Path) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert (tmp_path / "mirror.db-wal").exists()


def test_new_store_is_at_the_current_schema_with_every_table(store: Store) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    tables = set(store.db.table_names())
    assert {*RESOURCES, "_meta", "_cursors", "_events", "_inbox", "_dead_letters", "_audit"} <= tables
    for resource in RESOURCES:
        assert {"id", "_version", "_source", "_synced_at", "_deleted", "_deleted_at", "_listed"} <= (
            store.columns(resource)
        )


def test_store_creates_missing_parent_directories(tmp_path: Path) -> None:
    s = Store(tmp_path / "a" / "b" / "mirror.db")
    s.close()
    assert (tmp_path / "a" / "b" / "mirror.db").is_file()


def test_unusable_file_is_a_store_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreError, match=r"garbage\.db"):
        Store(path)


def test_migration_to_version_5_maps_the_columns_fields_already_have(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    record = {
        "id": 1,
        "status": "placed",
        "note": "added at runtime",
        "updatedAt": "2024-01-15T10:30:00.000Z",
        "version": 3,
    }
    old = Store(path, migrate_to=4)
    with old.db.atomic():
        old.conn.execute('ALTER TABLE orders ADD COLUMN "note"')
        old.conn.execute(
            "INSERT INTO orders (id, status, note, updatedAt, version, _version, _source, _synced_at)"
            " VALUES (1, 'placed', 'added at runtime', '2024-01-15T10:30:00.000Z', 3, 3, 'poll', ?)",
            (SYNCED,),
        )
    old.close()

    new = Store(path)
    try:
        mapping = new.field_columns("orders")
        assert mapping["note"] == "note"
        assert mapping["id"] == "id"
        assert all(field == col for field, col in mapping.items())
        assert not set(mapping) & set(BOOKKEEPING_COLUMNS)
        # Stored before the migration, the record is still a duplicate of itself.
        assert apply_batch(
            new, [parse_record("orders", record, "poll")], synced_at=format_epoch()
        ).counts == {"duplicate": 1}
        # A bookkeeping name arriving now gets a mapped column next to the old ones.
        apply_batch(
            new,
            [parse_record("orders", {**record, "version": 4, "_source": "x"}, "poll")],
            synced_at=format_epoch(),
        )
        assert new.field_columns("orders")["_source"] == "_source~2"
        assert row(new, "orders", 1)["_source"] == "poll"
    finally:
        new.close()


def test_migration_from_version_1_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Store(path, migrate_to=1)
    assert old.schema_version() == 1
    assert "_audit" not in old.db.table_names()
    with old.db.atomic():
        old.conn.execute(
            "INSERT INTO orders (id, status, total, _version, _source, _synced_at, _deleted)"
            " VALUES (1, 'placed', 9.5, 3, 'poll', ?, 0), (2, 'cancelled', 1.0, 1, 'webhook', ?, 1)",
            (SYNCED, SYNCED),
        )
        old.conn.execute(
            "INSERT INTO _events (event_id, event_type, resource, record_id, version, outcome,"
            " first_seen, last_seen) VALUES ('evt_1', 'order.created', 'orders', '1', 1, 'applied', 1, 2)"
        )
        old.conn.execute("INSERT INTO _cursors (resource, cursor) VALUES ('orders', ?)", (SYNCED,))
    old.close()

    new = Store(path)
    try:
        assert new.schema_version() == SCHEMA_VERSION
        assert row(new, "orders", 1) == {
            **{c: None for c in new.columns("orders")},
            "id": 1,
            "status": "placed",
            "total": 9.5,
            "_version": 3,
            "_source": "poll",
            # Backfilled from the source: an API read.
            "_authority": 2,
            "_synced_at": SYNCED,
            "_deleted": 0,
            "_listed": 0,
        }
        assert mirror_counts(new.conn, "orders") == (1, 1)
        assert known_events(new.conn, ["evt_1", "evt_2"]) == {"evt_1"}
        cursor = new.cursor_state("orders")
        assert (cursor.cursor, cursor.relist_generation, cursor.last_changes) == (SYNCED, 0, 0)
        # The upgraded tables take new writes.
        new.write_records("orders", [(order(1, 4), 4, "poll")], synced_at=SYNCED, listed=1)
        assert row(new, "orders", 1)["_version"] == 4
    finally:
        new.close()


def test_migration_to_version_7_moves_pending_events_into_their_inbox_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Store(path, migrate_to=6)
    with old.db.atomic():
        # A v6 store: every acknowledged delivery has an inbox row and a pending `_events`
        # row; applied ones only the `_events` row.
        old.conn.executemany(
            "INSERT INTO _inbox (event_id, received_at, client, headers, body) VALUES (?, ?, 'c', '{}', ?)",
            [("evt_wait", 100.0, b'{"a":1}'), ("evt_wait2", 110.0, b"{}")],
        )
        old.conn.executemany(
            "INSERT INTO _events (event_id, event_type, resource, outcome, first_seen, last_seen, deliveries)"
            " VALUES (?, 'order.created', 'orders', ?, ?, ?, ?)",
            [
                ("evt_wait", "pending", 100.0, 150.0, 3),
                ("evt_wait2", "pending", 110.0, 110.0, 1),
                ("evt_done", "applied", 50.0, 60.0, 1),
            ],
        )
    old.close()

    new = Store(path)
    try:
        assert new.schema_version() == SCHEMA_VERSION
        assert new.conn.execute(
            "SELECT event_id, event_type, resource, received_at, last_seen, deliveries FROM _inbox ORDER BY seq"
        ).fetchall() == [
            ("evt_wait", "order.created", "orders", 100.0, 150.0, 3),
            ("evt_wait2", "order.created", "orders", 110.0, 110.0, 1),
        ]
        assert new.conn.execute("SELECT event_id, outcome FROM _events").fetchall() == [
            ("evt_done", "applied")
        ]
        # Every id is still known, wherever it now lives, and the inbox takes no second copy.
        assert known_events(new.conn, ["evt_wait", "evt_wait2", "evt_done", "evt_new"]) == {
            "evt_wait",
            "evt_wait2",
            "evt_done",
        }
        with pytest.raises(sqlite3.IntegrityError):
            new.conn.execute(
                "INSERT INTO _inbox (event_id, received_at, client, headers, body) VALUES ('evt_wait', 1, '', '{}', x'')"
            )
    finally:
        new.close()


def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    Store(tmp_path / "m.db").close()
    again = Store(tmp_path / "m.db")
    assert again.schema_version() == SCHEMA_VERSION
    again.close()


def test_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    s = Store(path)
    s.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    s.conn.commit()
    s.close()
    with pytest.raises(StoreError) as info:
        Store(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"schema version {SCHEMA_VERSION + 1}" in msg
    assert "upgrade syncd" in msg


# -- mirror rows -----------------------------------------------------------------------------


def test_new_api_fields_add_columns_instead_of_failing(store: Store) -> None:
    store.write_records("orders", [(order(1, giftWrap=True, note="fragile"), 1, "poll")], synced_at=SYNCED)
    assert {"giftWrap", "note"} <= store.columns("orders")
    stored = row(store, "orders", 1)
    assert (stored["giftWrap"], stored["note"]) == (1, "fragile")
    # A later record without the field stores NULL there, not a stale value.
    store.write_records("orders", [(order(1, 2), 2, "poll")], synced_at=SYNCED)
    assert row(store, "orders", 1)["note"] is None


def test_columns_added_by_another_connection_are_seen_after_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    s.write_records(
        "inventory", [({"id": "sku", "colour": "red", "version": 1}, 1, "poll")], synced_at=SYNCED
    )
    s.conn.commit()
    s.close()
    again = Store(tmp_path / "c.db")
    assert "colour" in again.columns("inventory")
    again.close()


def test_nested_values_are_json_text_and_big_ints_keep_their_digits(store: Store) -> None:
    items = [{"product": "Dog Food", "quantity": 2, "unitPrice": 29.995}]
    big = 2**70
    store.write_records(
        "orders",
        [(order(1, items=items, meta={"b": 1, "a": [None]}, big=big, neg=-(2**63), edge=2**63), 1, "poll")],
        synced_at=SYNCED,
    )
    stored = row(store, "orders", 1)
    assert json.loads(stored["items"]) == items
    assert stored["meta"] == '{"a":[null],"b":1}'
    assert stored["big"] == str(big)
    assert stored["neg"] == -(2**63)
    assert stored["edge"] == str(2**63)


def test_an_integer_past_64_bits_in_a_batch_converts_only_where_needed(store: Store) -> None:
    # Integers are bound as they are; the one that cannot bind sends the whole batch through
    # the converting path again, and the rows written before it must come out the same.
    store.write_records("orders", [(order(1, qty=5), 1, "poll")], synced_at=SYNCED)
    store.write_records(
        "orders",
        [(order(1, 2, qty=7), 2, "poll"), (order(2, qty=2**64), 1, "poll"), (order(3, qty=-3), 1, "poll")],
        synced_at=SYNCED,
    )
    assert [row(store, "orders", i)["qty"] for i in (1, 2, 3)] == [7, str(2**64), -3]
    assert row(store, "orders", 1)["_version"] == 2
    assert store.conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 3


def test_mirror_states_and_contents(store: Store) -> None:
    store.write_records(
        "customers",
        [({"id": "cus_1", "email": "a@x", "tags": ["x"], "version": 2}, 2, "webhook")],
        synced_at=SYNCED,
    )
    states = store.mirror_states("customers", ["cus_1", "cus_missing"])
    assert set(states) == {"cus_1"}
    assert (states["cus_1"].version, states["cus_1"].deleted, states["cus_1"].source) == (2, False, "webhook")
    assert states["cus_1"].content is None
    contents = store.mirror_contents("customers", ["cus_1"])
    # Bookkeeping columns and NULL columns are not content.
    assert contents == {"cus_1": {"id": "cus_1", "email": "a@x", "tags": '["x"]', "version": 2}}


def test_mirror_lookups_chunk_past_the_sqlite_variable_limit(store: Store) -> None:
    records = [(order(i), 1, "poll") for i in range(2500)]
    store.write_records("orders", records, synced_at=SYNCED)
    ids = list(range(-10, 2510))
    assert len(store.mirror_states("orders", ids)) == 2500
    assert len(store.mirror_contents("orders", ids)) == 2500
    store.mark_listed("orders", ids, 5)
    assert store.conn.execute("SELECT COUNT(*) FROM orders WHERE _listed=5").fetchone()[0] == 2500


def test_unknown_resource_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="'pets'"):
        store.columns("pets")


def test_mirror_counts_live_and_tombstoned(store: Store) -> None:
    store.write_records("orders", [(order(i, i), i, "poll") for i in (1, 2, 3)], synced_at=SYNCED)
    store.conn.execute("UPDATE orders SET _deleted=1 WHERE id=2")
    assert store.conn.execute("SELECT id, _version, _deleted FROM orders ORDER BY id").fetchall() == [
        (1, 1, 0),
        (2, 2, 1),
        (3, 3, 0),
    ]
    assert mirror_counts(store.conn, "orders") == (2, 1)
    assert mirror_counts(store.conn, "customers") == (0, 0)


# -- tombstones ------------------------------------------------------------------------------


def test_tombstone_unlisted_marks_only_old_unlisted_records(store: Store) -> None:
    old = "2024-01-15T10:00:00.000Z"
    spare_since = "2024-01-15T11:00:00.000Z"
    now = "2024-01-15T12:00:00.000Z"
    records = [
        ({"id": "listed", "updatedAt": old, "version": 1}, 1, "poll"),
        ({"id": "gone", "updatedAt": old, "version": 1}, 1, "poll"),
        # Changed after spare_since: the listing may not show it yet.
        ({"id": "recent", "updatedAt": "2024-01-15T11:00:05.000Z", "version": 1}, 1, "webhook"),
    ]
    store.write_records("customers", records, synced_at=old)
    # Synced recently although its updatedAt is old (e.g. a delayed webhook).
    store.write_records(
        "customers", [({"id": "fresh-sync", "updatedAt": old, "version": 1}, 1, "webhook")], synced_at=now
    )
    store.mark_listed("customers", ["listed"], 1)
    assert len(store.tombstone_unlisted("customers", 1, spare_since=spare_since, now=now)) == 1
    deleted = {
        r[0]: (r[1], r[2]) for r in store.conn.execute("SELECT id, _deleted, _deleted_at FROM customers")
    }
    assert deleted == {
        "listed": (0, None),
        "gone": (1, now),
        "recent": (0, None),
        "fresh-sync": (0, None),
    }
    # Already tombstoned records are not counted again.
    assert store.tombstone_unlisted("customers", 1, spare_since=spare_since, now=now) == []


def test_writing_a_tombstoned_record_restores_it(store: Store) -> None:
    store.write_records("orders", [(order(1), 1, "poll")], synced_at="2024-01-01T00:00:00.000Z")
    store.tombstone_unlisted("orders", 1, spare_since="2024-02-01T00:00:00.000Z", now=SYNCED)
    assert store.mirror_states("orders", [1])[1].deleted
    store.write_records("orders", [(order(1), 1, "webhook")], synced_at=SYNCED)
    stored = row(store, "orders", 1)
    assert (stored["_deleted"], stored["_deleted_at"], stored["_source"]) == (0, None, "webhook")


def test_write_keeps_the_highest_relist_mark(store: Store) -> None:
    store.write_records("orders", [(order(1), 1, "poll")], synced_at=SYNCED, listed=4)
    store.write_records("orders", [(order(1, 2), 2, "webhook")], synced_at=SYNCED)
    assert row(store, "orders", 1)["_listed"] == 4


# -- cursors, meta, events, audit ------------------------------------------------------------


def test_cursor_state_round_trip(store: Store) -> None:
    empty = store.cursor_state("orders")
    assert (empty.cursor, empty.relist_generation, empty.last_poll_at) == (None, 0, None)
    store.set_cursor("orders", SYNCED)
    store.update_cursor_meta("orders", last_poll_at=5.0, relist_generation=2, last_error="boom")
    store.set_cursor("orders", "2024-01-16T00:00:00.000Z")
    state = store.cursor_state("orders")
    assert (state.cursor, state.last_poll_at, state.relist_generation, state.last_error) == (
        "2024-01-16T00:00:00.000Z",
        5.0,
        2,
        "boom",
    )
    store.update_cursor_meta("inventory", last_changes=7)
    assert store.cursor_state("inventory").last_changes == 7


def test_update_cursor_meta_rejects_unknown_fields(store: Store) -> None:
    with pytest.raises(ValueError, match="'cursor_typo'"):
        store.update_cursor_meta("orders", cursor_typo=1)


def test_meta_round_trip(store: Store) -> None:
    assert store.get_meta("mode") is None
    store.set_meta("mode", "push")
    store.set_meta("mode", "fallback")
    assert store.get_meta("mode") == "fallback"


def _event(event_id: str, last_seen: float, outcome: str) -> tuple[Any, ...]:
    return (event_id, "order.created", "orders", "1", 1, outcome, last_seen, last_seen)


def test_prune_forgets_old_events_and_audit_rows_but_never_pending_ones(store: Store) -> None:
    now = 1_000_000.0
    day = 86400.0
    store.conn.executemany(
        "INSERT INTO _events (event_id, event_type, resource, record_id, version, outcome, first_seen,"
        " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            _event("old-applied", now - 8 * day, "applied"),
            _event("old-stale", now - 8 * day, "stale"),
            _event("recent", now - day, "applied"),
        ],
    )
    # Not applied yet: it lives in the inbox, whose rows no retention touches.
    store.conn.execute(
        "INSERT INTO _inbox (event_id, received_at, client, headers, body, last_seen)"
        " VALUES ('old-pending', ?, '127.0.0.1', '{}', x'7b7d', ?)",
        (now - 30 * day, now - 30 * day),
    )
    add_audit(
        store.conn,
        [
            (now - 8 * day, "127.0.0.1", "POST", "/webhooks/petstore", 401, "bad signature", None, 10),
            (now - 60, "127.0.0.1", "POST", "/webhooks/petstore", 200, "accepted", "recent", 99),
        ],
    )
    assert prune(store, now, dedupe_retention=7 * day, audit_retention=7 * day) == (2, 1)
    assert known_events(store.conn, ["old-applied", "old-stale", "old-pending", "recent"]) == {
        "old-pending",
        "recent",
    }
    assert [r[0] for r in store.conn.execute("SELECT event_id FROM _audit")] == ["recent"]


def test_dead_letters_keep_the_body(store: Store) -> None:
    add_dead_letter(store.conn, "evt_9", "order.created", 5.0, "version must be an integer", b'{"x":1}')
    assert store.conn.execute("SELECT event_id, reason, body, replayed_at FROM _dead_letters").fetchall() == [
        ("evt_9", "version must be an integer", b'{"x":1}', None)
    ]


def test_reader_sees_committed_data_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with running_writer(path) as writer:
        writer.call(lambda s: s.write_records("orders", [(order(1), 1, "poll")], synced_at=SYNCED))
        writer.call(lambda s: s.conn.commit())
        reader = Store.open_reader(path)
        try:
            assert reader.execute("SELECT id FROM orders").fetchall() == [(1,)]
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader.execute("DELETE FROM orders")
        finally:
            reader.close()


def test_reader_of_a_missing_store_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        Store.open_reader(tmp_path / "nope.db")


def test_utc_iso_round_trip() -> None:
    assert utc_iso(1705314600.123) == "2024-01-15T10:30:00.123Z"
    assert parse_iso("2024-01-15T10:30:00.123Z") == pytest.approx(1705314600.123)
    assert parse_iso("2024-01-15T12:30:00+02:00") == 1705314600.0


# -- writer ----------------------------------------------------------------------------------


def test_writer_runs_work_in_order_on_one_thread(tmp_path: Path) -> None:
    seen: list[tuple[int, str]] = []

    def work(store: Store, i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 2

    writer = Writer(lambda: Store(tmp_path / "w.db"))
    writer.start()
    try:
        futures = [writer.submit(work, i) for i in range(200)]
        assert [f.result() for f in futures] == [i * 2 for i in range(200)]
    finally:
        writer.stop()
    assert [i for i, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {"syncd-store-writer"}
    assert threading.current_thread().name != "syncd-store-writer"


def test_writer_propagates_exceptions_and_keeps_working(tmp_path: Path) -> None:
    def boom(store: Store) -> None:
        raise KeyError("record 7")

    with running_writer(tmp_path / "w.db") as writer:
        with pytest.raises(KeyError, match="record 7"):
            writer.call(boom)
        assert writer.call(lambda s: s.schema_version()) == SCHEMA_VERSION


async def test_writer_run_from_asyncio(tmp_path: Path) -> None:
    with running_writer(tmp_path / "w.db") as writer:
        assert await writer.run(lambda s, x: x + 1, 41) == 42
        with pytest.raises(ZeroDivisionError):
            await writer.run(lambda s: 1 / 0)


def test_writer_refuses_work_after_stop_and_stops_once(tmp_path: Path) -> None:
    writer = Writer(lambda: Store(tmp_path / "w.db"))
    writer.start()
    pending = writer.submit(lambda s: "done before close")
    writer.stop()
    assert pending.result() == "done before close"
    with pytest.raises(StoreClosedError, match="stopped"):
        writer.call(lambda s: None)
    writer.stop()


def test_writer_start_reports_a_store_that_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(b"not sqlite" * 500)
    writer = Writer(lambda: Store(path))
    with pytest.raises(StoreError, match=r"bad\.db"):
        writer.start()


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
        ),
        max_leaves=8,
    ).filter(lambda v: isinstance(v, list | dict))
)
def test_nested_values_become_canonical_json_text(value: Any) -> None:
    text = to_column_value(value)
    assert isinstance(text, str)
    assert json.loads(text) == value
    # Canonical: the same value, keys in any order, always gives the same text.
    if isinstance(value, dict):
        assert to_column_value(dict(reversed(list(value.items())))) == text


def test_json_text_of_values_orjson_refuses() -> None:
    assert to_json_text({"b": 2**70, "a": 1}) == '{"a":1,"b":1180591620717411303424}'
    # A lone surrogate cannot be SQLite text: its JSON escape is stored instead.
    assert to_json_text(["\ud800"]) == '["\\ud800"]'
    assert to_json_text(["\ud800", 2**70, "é"]) == '["\\ud800",1180591620717411303424,"\\u00e9"]'
    assert to_json_text({"é": [1.5, None, True]}) == '{"é":[1.5,null,true]}'
