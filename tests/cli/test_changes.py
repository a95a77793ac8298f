"""`syncd changes` without --follow, and the reader under it, on real store files: the
changes after a seq in order, filters by resource and event, --limit, JSON Lines in the
documented shape, and clear errors for a store without a log."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from syncd.core.changes import Change
from syncd.ops.change_reader import ChangeQuery, open_change_log, pruned_gap, read_changes
from syncd.store import changelog
from syncd.store.db import Store

from .feed_support import customer, invoke, json_lines, open_store, order, store_path, write, write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    # seq 1-3: order 1 created, approved, shipped; seq 4: a customer; seq 5: order 2.
    write(tmp_path, [order(1, 1)])
    write(tmp_path, [order(1, 2, "approved")])
    write(tmp_path, [order(1, 3, "shipped")])
    write(tmp_path, [customer("c-1", 1)])
    write(tmp_path, [order(2, 1)])
    return write_config(tmp_path)


def test_json_lines_are_the_changes_after_since_in_order(config: Path) -> None:
    result = invoke(config, "changes", "--json", "--since", "1")
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert [line["seq"] for line in lines] == [2, 3, 4, 5]
    assert [line["event"] for line in lines] == [
        "order.updated",
        "order.shipped",
        "customer.registered",
        "order.created",
    ]
    # The documented shape, key for key, and the same bytes sinks get.
    assert list(lines[1]) == [
        "seq", "mirror", "event", "kind", "resource", "record_id", "version",
        "previous_version", "source", "changed", "data", "at", "initial",
    ]  # fmt: skip
    assert lines[1]["changed"] == {"status": {"from": "approved", "to": "shipped"}}
    with open_store(config.parent) as store:
        stored = changelog.read_after(store.conn, 2, 1)[0]
    assert result.stdout.splitlines()[1].encode() == stored.to_json()


def test_filters_by_resource_and_event_patterns(config: Path) -> None:
    by_resource = invoke(config, "changes", "--json", "--resource", "customers")
    assert [line["seq"] for line in json_lines(by_resource.stdout)] == [4]
    by_event = invoke(config, "changes", "--json", "--event", "order.created", "--event", "*.shipped")
    assert [line["seq"] for line in json_lines(by_event.stdout)] == [1, 3, 5]
    both = invoke(config, "changes", "--json", "--resource", "orders", "--event", "customer.*")
    assert both.exit_code == 0
    assert json_lines(both.stdout) == []


def test_an_unknown_resource_is_a_usage_error(config: Path) -> None:
    result = invoke(config, "changes", "--resource", "pets")
    assert result.exit_code == 2
    assert "orders" in result.output


def test_limit_stops_after_n(config: Path) -> None:
    result = invoke(config, "changes", "--json", "--limit", "2", "--since", "2")
    assert [line["seq"] for line in json_lines(result.stdout)] == [3, 4]


def test_the_table_has_a_row_per_change_and_what_changed(config: Path) -> None:
    result = invoke(config, "changes", "--since", "1")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["SEQ", "AT", "EVENT", "RESOURCE", "RECORD", "VERSION", "SOURCE", "CHANGED"]
    assert len(rows) == 4
    assert rows[1].split()[:7] == [
        "3",
        "2026-12-01T10:00:00.123Z",
        "order.shipped",
        "orders",
        "1",
        "3",
        "poll",
    ]
    assert 'status: "approved"→"shipped"' in rows[1]
    assert "(new record)" in rows[2]


def test_control_characters_from_records_never_reach_the_terminal(tmp_path: Path) -> None:
    write(tmp_path, [customer("c-1", 1, name="Ada")])
    write(tmp_path, [customer("c-1", 2, name="\x1b[2Jgotcha")])
    result = invoke(write_config(tmp_path), "changes")
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout
    assert "\\u001b[2Jgotcha" in result.stdout


def test_an_empty_log_prints_only_the_header(tmp_path: Path) -> None:
    Store(store_path(tmp_path)).close()
    result = invoke(write_config(tmp_path), "changes")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1
    assert invoke(write_config(tmp_path), "changes", "--json").stdout == ""


def test_no_store_is_a_runtime_error(tmp_path: Path) -> None:
    result = invoke(write_config(tmp_path), "changes")
    assert result.exit_code == 1
    assert "no store at" in result.stderr
    assert not store_path(tmp_path).exists()


def test_a_store_from_before_the_log_says_so(tmp_path: Path) -> None:
    Store(store_path(tmp_path), migrate_to=5).close()
    result = invoke(write_config(tmp_path), "changes", "--follow")
    assert result.exit_code == 1
    assert "has no change log (schema version 5)" in result.stderr
    assert "Traceback" not in result.output


def test_pruned_changes_after_since_are_reported_on_stderr(config: Path) -> None:
    with open_store(config.parent) as store, store.db.atomic():
        changelog.prune(store.conn, before_at="9999", keep_after_seq=3)
    result = invoke(config, "changes", "--json", "--since", "1")
    assert result.exit_code == 0
    assert [line["seq"] for line in json_lines(result.stdout)] == [4, 5]
    assert "changes 2 to 3 were pruned" in result.stderr
    assert "the first available is 4" in result.stderr
    # Nothing was lost after seq 3: no note.
    assert "pruned" not in invoke(config, "changes", "--since", "3").stderr


def test_a_log_pruned_empty_still_knows_its_head(tmp_path: Path) -> None:
    write(tmp_path, [order(1, 1)])
    with open_store(tmp_path) as store, store.db.atomic():
        changelog.prune(store.conn, before_at="9999", keep_after_seq=1)
    conn = open_change_log(store_path(tmp_path))
    try:
        gap = pruned_gap(conn, 0)
    finally:
        conn.close()
    assert gap is not None
    assert gap.first_available is None
    assert "changes 1 to 1 were pruned" in gap.describe()


# -- the reader -------------------------------------------------------------------------


class CountingConnection:
    """A reader connection that records the LIMIT of every change-log query."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.limits: list[int] = []

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if "FROM _changes WHERE seq >" in sql:
            self.limits.append(int(str(params[-1])))
        return self.conn.execute(sql, params)


def test_a_long_log_is_read_in_bounded_batches(tmp_path: Path) -> None:
    write(tmp_path, [order(rid, 1) for rid in range(1, 1001)])
    conn = open_change_log(store_path(tmp_path))
    counting = CountingConnection(conn)
    try:
        seqs = [c.seq for c in read_changes(counting, ChangeQuery(), batch_size=64)]  # type: ignore[arg-type]
    finally:
        conn.close()
    assert seqs == list(range(1, 1001))
    assert set(counting.limits) == {64}
    assert len(counting.limits) == 16


def test_a_resource_filter_moves_past_other_resources_changes(tmp_path: Path) -> None:
    write(tmp_path, [order(rid, 1) for rid in range(1, 11)])
    write(tmp_path, [customer("c-1", 1)])
    conn = open_change_log(store_path(tmp_path))
    try:
        only = list(read_changes(conn, ChangeQuery(resources=("customers",)), batch_size=4))
    finally:
        conn.close()
    assert [c.seq for c in only] == [11]


def test_following_yields_new_changes_and_ends_when_stopped(tmp_path: Path) -> None:
    write(tmp_path, [order(1, 1)])
    conn = open_change_log(store_path(tmp_path))
    stop = threading.Event()
    seen: list[Change] = []
    got_two = threading.Event()

    def consume() -> None:
        for change in read_changes(conn, ChangeQuery(), follow=True, stop=stop, interval=0.01):
            seen.append(change)
            if len(seen) == 2:
                got_two.set()

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        write(tmp_path, [customer("c-1", 1)])
        assert got_two.wait(10)
    finally:
        stop.set()
        reader.join(10)
        conn.close()
    assert not reader.is_alive()
    assert [c.seq for c in seen] == [1, 2]


def test_following_ends_when_the_reader_is_gone(tmp_path: Path) -> None:
    Store(store_path(tmp_path)).close()
    conn = open_change_log(store_path(tmp_path))
    try:
        assert list(read_changes(conn, ChangeQuery(), follow=True, interval=0.001, alive=lambda: False)) == []
    finally:
        conn.close()
