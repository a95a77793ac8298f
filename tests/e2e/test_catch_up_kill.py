"""Acknowledge first, apply after, under SIGKILL: `syncd run` is killed while it holds a
backlog (deliveries acknowledged, the mirror behind) and again while it is catching up.
After the last restart every acknowledged delivery reaches the mirror exactly once: one
`_events` row each, nothing left in the inbox, one logged change per record state, and no
drift against the API.

The backlog is held the way an API outage holds one: every delivery is thin (it carries
only the record's id) and every API request fails, so the worker cannot fetch the records
and leaves the events in the inbox; the outage ends before the restart that catches up."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import DaemonProcess, SimProcess, wait_until

pytestmark = pytest.mark.slow

#: Workload steps; with seed 15 nearly all of them are webhook events (2,439 of 2,500), so
#: the backlog holds some 2,400 deliveries, well past the 1,000 the test needs.
CHANGES = 2500


def inbox_depth(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        return int(conn.execute("SELECT COUNT(*) FROM _inbox").fetchone()[0])
    finally:
        conn.close()


def test_a_kill_during_catch_up_of_a_backlog_loses_nothing_and_applies_once(
    start_sim: Callable[..., SimProcess], start_daemon: Callable[..., DaemonProcess]
) -> None:
    sim = start_sim("--rate", "0", "--seed", "15", "--preload-orders", "400", "--preload-customers", "20")
    daemon = start_daemon(
        sim,
        # No poll while the backlog is built: the inbox is the only path the changes take.
        poll={"interval": "1h", "safety_interval": "1h"},
        fallback={"silence": "1h", "missed_ratio": 1.0},
        # The burst is sent as fast as the simulator can: at the default 200/s about half of
        # it was refused with 429 (never acknowledged, so no part of the backlog), which made
        # the backlog's size depend on how fast the machine sent it.
        webhook={"rate_limit": "1000000/s"},
    )
    assert daemon.webhook_url is not None
    wait_until(lambda: daemon.mirror() == sim.truth(), 60, interval=0.2, what="the initial sync")
    sim.register_webhook(daemon.webhook_url)
    workdir, sections = daemon.workdir, daemon.sections
    db = workdir / "mirror.db"
    try:
        sim.control(faults={"thin_event_rate": 1.0, "api_5xx_rate": 1.0})
        sim.control(action="step", count=CHANGES)
        # A refused delivery's retry is due 60 s later; it is not acknowledged and so not part
        # of what the test holds the daemon to, and waiting for it only waits out the timeout.
        sim.control(action="quiesce", timeout=60, drop_retries=True)
        acked = sim.http.get("/_sim/acked").json()["event_ids"]
        backlog = inbox_depth(db)
        assert backlog > 1000, f"only {backlog} deliveries held back"
        assert backlog <= len(acked)
        # Killed holding the backlog: acknowledged, none of it applied.
        daemon.proc.kill()
        daemon.proc.wait()
        daemon.stop()

        # The outage ends; the restarted daemon catches up and is killed while it does.
        sim.control(faults={"api_5xx_rate": 0.0})
        daemon = DaemonProcess(workdir, sections, wait_ready=False)
        deadline = time.monotonic() + 60
        while (depth := inbox_depth(db)) >= backlog:
            assert time.monotonic() < deadline, "the catch-up never started"
            time.sleep(0.002)
        daemon.proc.kill()
        daemon.proc.wait()
        daemon.stop()
        left = inbox_depth(db)
        assert left < backlog

        # Polls and relists again from here: the workload's hard deletes reach the mirror only
        # by a relist (a thin event of a deleted record fetches nothing to apply).
        sections["poll"].update({"interval": "1s", "safety_interval": "2s", "full_relist_interval": "3s"})
        daemon = DaemonProcess(workdir, sections)
        wait_until(lambda: inbox_depth(db) == 0, 90, interval=0.2, what="the inbox to drain")
        wait_until(lambda: daemon.mirror() == sim.truth(), 90, interval=0.5, what="zero drift")
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            stored = dict(conn.execute("SELECT event_id, outcome FROM _events"))
            per_state = conn.execute(
                "SELECT resource, record_id, version, COUNT(*) FROM _changes GROUP BY 1, 2, 3 HAVING COUNT(*) > 1"
            ).fetchall()
        finally:
            conn.close()
        lost = [eid for eid in acked if eid not in stored]
        assert not lost, f"{len(lost)} acknowledged deliveries never applied, e.g. {lost[:5]}"
        assert "pending" not in stored.values()
        assert not per_state, f"record states logged more than once: {per_state[:5]}"
        verify = daemon.verify()
        assert verify.returncode == 0, verify.stdout + verify.stderr
        print(f"backlog {backlog}, {depth} left when killed during catch-up ({left} after the kill)")
    finally:
        daemon.stop()
