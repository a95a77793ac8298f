"""`syncd status` on the change feed: the log's head, oldest and entries, and per sink its
offset, lag, saved state and dead letters, read from a real store; text and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
from click.testing import CliRunner

from syncd.cli import main
from syncd.config import Config, load_config
from syncd.ops import status as st
from syncd.store import changelog, sinkstore
from syncd.store import schema as keys
from syncd.store.db import Store
from syncd.timefmt import format_epoch as utc_iso
from tests.feed.support import append_orders_on

NOW = 1_800_000_000.0


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "mirror.db"}"\n[sync]\nmode = "poll"\n'
        '[[sinks]]\nname = "app"\ntype = "http"\nurl = "http://127.0.0.1:9/hook"\nsecret_env = "NOPE"\n'
        '[[sinks]]\nname = "script"\ntype = "exec"\ncommand = ["/bin/true"]\n'
    )
    return path


def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path), env={}, require_secrets=False)


def populate(store: Store, *, heartbeat: float) -> None:
    with store.db.atomic():
        append_orders_on(store.conn, range(1, 11))
        changelog.prune(store.conn, before_at="9999", keep_after_seq=2)
        changelog.set_offset(store.conn, "app", 7)
        changelog.set_offset(store.conn, "script", 10)
        changelog.set_offset(store.conn, "gone", 3)
        change = changelog.read_after(store.conn, 7, 1)[0]
        changelog.add_sink_dead_letter(store.conn, "app", change, "HTTP 500")
        store.set_meta(keys.META_DAEMON_PID, str(os.getpid()))
        store.set_meta(keys.META_HEARTBEAT, utc_iso(heartbeat))
    state = {
        "state": "retrying",
        "attempts": 3,
        "last_error": "seq 8: HTTP 503: [bold]busy[/bold]",
        "last_error_at": utc_iso(NOW - 2),
        "next_attempt_at": utc_iso(NOW + 4),
        "updated_at": utc_iso(NOW - 1),
    }
    sinkstore.write_states(store, {"app": state})


def test_report_shows_the_log_and_every_sink(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.store.path)
    populate(store, heartbeat=NOW - 1)
    store.close()
    report = st.collect_status(cfg, now=NOW)
    jsonschema.validate(report, st.STATUS_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert report["changes"] == {"enabled": True, "head_seq": 10, "oldest_seq": 3, "entries": 8}
    app = report["sinks"]["app"]
    assert app == {
        "type": "http",
        "configured": True,
        "delivered_seq": 7,
        "lag": 3,
        "state": "retrying",
        "attempts": 3,
        "last_error": "seq 8: HTTP 503: [bold]busy[/bold]",
        "last_error_at": utc_iso(NOW - 2),
        "next_attempt_at": utc_iso(NOW + 4),
        "state_updated_at": utc_iso(NOW - 1),
        "state_stale": False,
        "dead_letters": 1,
    }
    script = report["sinks"]["script"]
    assert (script["delivered_seq"], script["lag"], script["state"], script["dead_letters"]) == (
        10,
        0,
        None,
        0,
    )
    # A sink with an offset but no table: shown until the daemon drops it.
    assert report["sinks"]["gone"]["configured"] is False
    assert report["sinks"]["gone"]["type"] is None
    assert list(report["sinks"]) == ["app", "script", "gone"]


def test_states_are_stale_when_no_daemon_runs(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.store.path)
    populate(store, heartbeat=NOW - 10 * keys.HEARTBEAT_PERIOD)
    store.close()
    report = st.collect_status(cfg, now=NOW)
    assert report["daemon"]["running"] is False
    assert report["sinks"]["app"]["state_stale"] is True
    assert report["sinks"]["app"]["state"] == "retrying"


def test_an_empty_log_and_no_sinks(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "mirror.db"}"\n[changes]\nenabled = false\n')
    cfg = load_config(path, env={}, require_secrets=False)
    Store(cfg.store.path).close()
    report = st.collect_status(cfg, now=NOW)
    jsonschema.validate(report, st.STATUS_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert report["changes"] == {"enabled": False, "head_seq": 0, "oldest_seq": None, "entries": 0}
    assert report["sinks"] == {}


def test_cli_text_and_json_show_the_sinks(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    store = Store(tmp_path / "mirror.db")
    # A heartbeat long gone: status runs on the real clock here.
    populate(store, heartbeat=NOW - 86400 * 3650)
    store.close()
    runner = CliRunner(env={"COLUMNS": "250"})
    text = runner.invoke(main, ["status", "--config", str(path)])
    assert text.exit_code == 0, text.output
    assert "change log: head seq 10, oldest 3, 8 entries" in text.output
    sink_lines = [line.split() for line in text.output.splitlines() if line.split()[:1] == ["app"]]
    assert sink_lines, text.output
    # sink, type, delivered, lag, state, tries, dead letters
    assert sink_lines[0] == ["app", "http", "7", "3", "retrying", "3", "1"]
    # Its last error, in full under the table, never read as markup.
    assert "app: seq 8: HTTP 503: [bold]busy[/bold]" in text.output
    assert "not configured" in text.output
    # No daemon: the states are labelled as the daemon left them.
    assert "daemon not running" in text.output
    as_json = runner.invoke(main, ["status", "--config", str(path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["sinks"]["app"]["lag"] == 3
    assert report["sinks"]["app"]["state_stale"] is True
