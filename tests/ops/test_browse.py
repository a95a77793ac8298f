"""`syncd browse`'s description of the mirror, read from a real store: every table and
bookkeeping column described, bookkeeping hidden, and every canned query runs."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncd.cli import main
from syncd.ops.browse import database_name, datasette_metadata
from syncd.store.db import Store
from syncd.store.schema import BOOKKEEPING_COLUMNS
from tests.ops.test_status import config, populate


def _store(tmp_path: Path) -> str:
    cfg = config(tmp_path)
    store = Store(cfg.store.path)
    populate(store)
    store.close()
    return cfg.store.path


def test_every_table_and_bookkeeping_column_is_described(tmp_path: Path) -> None:
    path = _store(tmp_path)
    conn = Store.open_reader(path)
    try:
        meta = datasette_metadata(conn, path)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    db = meta["databases"]["mirror"]
    assert database_name(path) == "mirror"
    assert set(db["tables"]) == names
    for name, table in db["tables"].items():
        assert table["description"], name
        assert table["description"] != "syncd's bookkeeping.", f"{name} has only the generic description"
        assert table.get("hidden", False) is (name.startswith(("_", "sqlite_"))), name
    for name in ("orders", "customers", "inventory"):
        assert set(db["tables"][name]["columns"]) == set(BOOKKEEPING_COLUMNS)
        assert all(db["tables"][name]["columns"].values())
    assert db["tables"]["orders"]["facets"] == ["status"]
    assert set(db["queries"]) == {"orders-by-status", "recent-changes", "dead-letters", "changed-last-hour"}


def test_every_canned_query_runs_on_the_store(tmp_path: Path) -> None:
    path = _store(tmp_path)
    conn = Store.open_reader(path)
    try:
        queries = datasette_metadata(conn, path)["databases"]["mirror"]["queries"]
        results = {key: conn.execute(q["sql"]).fetchall() for key, q in queries.items()}
    finally:
        conn.close()
    # populate(): order 1 live (no status), order 2 tombstoned; two dead letters, one replayed.
    assert results["orders-by-status"] == [(None, None, 1, None)]
    states = sorted(row[2] for row in results["dead-letters"])
    assert states == ["open", "replayed"]
    # populate() committed its rows just now: every one of them changed in the last hour.
    assert {(r[0], r[1]) for r in results["changed-last-hour"]} == {
        ("orders", "1"),
        ("orders", "2"),
        ("customers", "cus_1"),
    }


def test_a_query_needing_a_missing_table_is_left_out(tmp_path: Path) -> None:
    path = _store(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE _changes")
    conn = Store.open_reader(path)
    try:
        queries = datasette_metadata(conn, path)["databases"]["mirror"]["queries"]
    finally:
        conn.close()
    assert "recent-changes" not in queries
    assert "orders-by-status" in queries


def test_browse_without_a_store_says_so(tmp_path: Path) -> None:
    config(tmp_path)
    result = CliRunner().invoke(main, ["browse", "--config", str(tmp_path / "syncd.toml")])
    assert result.exit_code == 1
    assert f"no store at {tmp_path / 'mirror.db'}" in result.output


def test_browse_without_datasette_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _store(tmp_path)
    # As if the browse extra were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "datasette.cli", None)
    result = CliRunner().invoke(main, ["browse", "--config", str(tmp_path / "syncd.toml")])
    assert result.exit_code == 1
    assert "pip install 'syncd[browse]'" in result.output
    assert Path(path).exists()
