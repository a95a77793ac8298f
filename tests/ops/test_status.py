"""`syncd status`: the report read from a real store, its JSON schema, the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from syncd.cli import main
from syncd.config import Config, load_config
from syncd.core.records import Change
from syncd.ops import status as st
from syncd.store import schema as keys
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.dead_letters import add_dead_letter
from syncd.timefmt import format_epoch
from syncd.timefmt import format_epoch as utc_iso
from syncd.timefmt import to_epoch as parse_iso

NOW = 1_800_000_000.0


def validate(report: dict[str, Any]) -> None:
    jsonschema.validate(report, st.STATUS_SCHEMA, format_checker=jsonschema.FormatChecker())


def write_config(tmp_path: Path, mode: str = "push") -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "mirror.db"}"\n[sync]\nmode = "{mode}"\n')
    return path


def config(tmp_path: Path, mode: str = "push") -> Config:
    return load_config(write_config(tmp_path, mode), env={}, require_secrets=False)


def populate(store: Store) -> None:
    with store.db.atomic():
        apply_batch(
            store,
            [
                Change("orders", 1, 3, utc_iso(NOW - 30), {"id": 1, "version": 3}, "poll"),
                Change("orders", 2, 1, utc_iso(NOW - 20), {"id": 2, "version": 1}, "webhook"),
                Change("customers", "cus_1", 1, utc_iso(NOW - 5), {"id": "cus_1", "version": 1}, "poll"),
            ],
            synced_at=format_epoch(),
        )
        store.conn.execute("UPDATE orders SET _deleted=1 WHERE id=2")
        store.set_cursor("orders", utc_iso(NOW - 30))
        store.update_cursor_meta("orders", last_poll_at=NOW - 2, last_success_at=NOW - 2, last_changes=4)
        store.update_cursor_meta(
            "customers", last_poll_at=NOW - 1, last_error="poll: 503 upstream", last_error_at=NOW - 1
        )
        store.conn.executemany(
            "INSERT INTO _events (event_id, event_type, resource, outcome, first_seen, last_seen)"
            " VALUES (?, 'order.created', 'orders', ?, ?, ?)",
            [
                ("evt_1", "applied", NOW - 50, NOW - 50),
                ("evt_2", "applied", NOW - 40, NOW - 40),
                ("evt_3", "stale", NOW - 10, NOW - 10),
            ],
        )
        store.conn.execute(
            "INSERT INTO _inbox (event_id, received_at, client, headers, body, last_seen)"
            " VALUES ('evt_4', ?, '127.0.0.1', '{}', x'7b7d', ?)",
            (NOW - 3, NOW - 3),
        )
        add_dead_letter(store.conn, "evt_5", "order.created", NOW - 60, "missing version", b"{}")
        add_dead_letter(store.conn, "evt_6", "order.created", NOW - 60, "missing version", b"{}")
        store.conn.execute(
            "UPDATE _dead_letters SET replayed_at=?, replay_outcome='applied' WHERE event_id='evt_6'", (NOW,)
        )
        for key, value in {
            keys.META_MODE: "fallback",
            keys.META_MODE_REASON: "silence: no webhook for 300s and a poll found 2 change(s)",
            keys.META_MODE_SINCE: utc_iso(NOW - 100),
            keys.META_MODE_SWITCHES: "3",
            keys.META_DAEMON_PID: str(os.getpid()),
            keys.META_DAEMON_STARTED: utc_iso(NOW - 1000),
            keys.META_HEARTBEAT: utc_iso(NOW - 1),
        }.items():
            store.set_meta(key, value)


def test_report_from_a_populated_store(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.store.path)
    populate(store)
    store.close()

    report = st.collect_status(cfg, now=NOW)
    validate(report)
    assert report["mode"] == {
        "current": "fallback",
        "reason": "silence: no webhook for 300s and a poll found 2 change(s)",
        "since": utc_iso(NOW - 100),
    }
    assert report["fallback_switches"] == 3
    assert report["daemon"]["running"] is True
    assert report["daemon"]["pid"] == os.getpid()
    orders = report["resources"]["orders"]
    assert orders["cursor"] == utc_iso(NOW - 30)
    assert orders["lag_seconds"] == pytest.approx(30.0)
    assert orders["last_success_at"] == utc_iso(NOW - 2)
    assert orders["last_changes"] == 4
    assert (orders["live"], orders["tombstoned"]) == (1, 1)
    customers = report["resources"]["customers"]
    assert customers["cursor"] is None
    assert customers["lag_seconds"] is None
    assert customers["last_error"] == "poll: 503 upstream"
    assert customers["live"] == 1
    assert report["resources"]["inventory"]["live"] == 0
    # evt_4 waits in the inbox: counted as pending, though it has no `_events` row yet.
    assert report["events"] == {"applied": 2, "stale": 1, "pending": 1}
    assert report["inbox_depth"] == 1
    assert report["inbox_backlog"] == {
        "deliveries": 1,
        "bytes": 2,
        "max_deliveries": 1_000_000,
        "max_bytes": 1024**3,
        "full": False,
    }
    assert report["last_webhook_at"] == utc_iso(NOW - 3)
    assert report["dead_letters"] == {
        "total": 2,
        "open": 1,
        "latest": [
            {
                "id": 1,
                "source": "webhook",
                "resource": None,
                "record_id": None,
                "event_id": "evt_5",
                "reason": "missing version",
            }
        ],
    }


def test_report_of_a_fresh_store_and_a_stale_heartbeat(tmp_path: Path) -> None:
    cfg = config(tmp_path, mode="poll")
    store = Store(cfg.store.path)
    store.set_meta(keys.META_DAEMON_PID, str(os.getpid()))
    store.set_meta(keys.META_HEARTBEAT, utc_iso(NOW - 10 * keys.HEARTBEAT_PERIOD))
    store.conn.commit()
    store.close()
    report = st.collect_status(cfg, now=NOW)
    validate(report)
    assert report["configured_mode"] == "poll"
    assert report["mode"]["current"] is None
    assert report["daemon"]["running"] is False
    assert report["events"] == {}
    assert report["last_webhook_at"] is None
    assert report["fallback_switches"] == 0


def test_schema_rejects_what_it_does_not_document(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    Store(cfg.store.path).close()
    report = st.collect_status(cfg, now=NOW)
    validate(report)
    with pytest.raises(jsonschema.ValidationError):
        validate({**report, "surprise": 1})
    with pytest.raises(jsonschema.ValidationError):
        validate({**report, "mode": {**report["mode"], "current": "sideways"}})
    broken = json.loads(json.dumps(report))
    broken["resources"]["orders"]["live"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_status_reads_without_write_access(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.store.path)
    populate(store)
    store.conn.commit()
    # The daemon keeps its connection (and WAL) open while status reads.
    report = st.collect_status(cfg, now=NOW)
    store.close()
    assert report["resources"]["orders"]["live"] == 1


def test_cli_json_matches_the_schema_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path)
    store = Store(tmp_path / "mirror.db")
    populate(store)
    store.close()
    monkeypatch.delenv("PETSTORE_API_KEY", raising=False)
    monkeypatch.delenv("PETSTORE_WEBHOOK_SECRET", raising=False)
    result = CliRunner().invoke(main, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    validate(report)
    assert report["mode"]["current"] == "fallback"
    assert time.time() - 60 < parse_iso(report["generated_at"]) <= time.time() + 1


def test_cli_human_output_shows_mode_resources_and_events(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    store = Store(tmp_path / "mirror.db")
    populate(store)
    store.close()
    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["status", "--config", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fallback" in out
    assert "silence: no webhook" in out
    for resource in ("orders", "customers", "inventory"):
        assert resource in out
    assert "poll: 503 upstream" in out
    assert "stale" in out


def test_cli_without_a_store_is_a_runtime_error(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = CliRunner().invoke(main, ["status", "--config", str(path)])
    assert result.exit_code == 1
    assert "no store at" in result.output
