"""Chaos: `syncd run` killed with SIGKILL at random moments, twenty times, while webhooks are
delivered and polls run; restarted each time. Every delivery it acknowledged must survive, the
poll cursor must never be ahead of committed data, and the mirror must end with zero drift."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.sim.server import free_port
from syncd.timefmt import to_epoch as parse_iso
from tests.e2e.conftest import API_KEY, DaemonProcess, SimProcess, wait_until

KILLS = int(os.environ.get("SYNCD_CHAOS_KILLS", "20"))
LOOKBACK = 2.0

pytestmark = pytest.mark.slow


def listing(sim: SimProcess, resource: str) -> list[dict[str, Any]]:
    """A full listing through the public API, as any client would page it."""
    records: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as http:
        while True:
            response = http.get(f"/{resource}", params=params)
            if response.status_code in (429, 500, 502, 503, 504):
                # The upstream's injected faults hit this reader too; it retries like syncd.
                continue
            page = response.raise_for_status().json()
            records.extend(page["data"])
            if not page["has_more"]:
                return records
            params = {"limit": 1000, "cursor": page["next_cursor"]}


def check_cursor_not_ahead(db: Path, sim: SimProcess) -> int:
    """Right after a kill: every record the API lists with updatedAt at or before the committed
    cursor minus the lookback (older than the visibility lag, so surely listed by the poll that
    moved the cursor there) is in the mirror at that version or newer. Returns records checked."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    checked = 0
    try:
        cursors = dict(conn.execute("SELECT resource, cursor FROM _cursors WHERE cursor IS NOT NULL"))
        for resource, cursor in cursors.items():
            horizon = parse_iso(cursor) - LOOKBACK
            mirror = {str(rid): v for rid, v in conn.execute(f"SELECT id, _version FROM {resource}")}
            for record in listing(sim, resource):
                if parse_iso(record["updatedAt"]) <= horizon:
                    checked += 1
                    have = mirror.get(str(record["id"]))
                    assert (have or 0) >= record["version"], (
                        f"cursor {cursor} of {resource} is ahead of committed data: "
                        f"{record['id']} v{record['version']} listed, mirror has {have}"
                    )
    finally:
        conn.close()
    return checked


def test_sigkill_twenty_times_loses_nothing(
    start_sim: Callable[..., SimProcess], start_daemon: Callable[..., DaemonProcess]
) -> None:
    sim = start_sim(
        "--faults", "default",
        "--max-lag", "1s",
        "--time-scale", "0.005",
        "--rate", "40",
        "--seed", "11",
        "--preload-customers", "20",
        "--preload-orders", "300",
    )  # fmt: skip
    # A fixed webhook port, so the provider's retries reach the restarted daemon.
    port = free_port()
    daemon = start_daemon(
        sim,
        webhook={"listen": f"127.0.0.1:{port}"},
        # The simulator's --max-lag, so relists need not wait out the real API's 10 s.
        api={"visibility_lag": "1s"},
        poll={
            "interval": "1s",
            "safety_interval": "2s",
            "lookback": f"{LOOKBACK:g}s",
            "page_size": 50,
            "full_relist_interval": "5s",
            # Relists cut short by the kills let a fifth of the customers' erasures pile up:
            # this test is about kills, not the mass-delete guard (test_poll_hostile's).
            "max_tombstone_ratio": 1.0,
        },
        fallback={"silence": "2s"},
    )
    assert daemon.webhook_url is not None
    sim.register_webhook(daemon.webhook_url)
    workdir, sections = daemon.workdir, daemon.sections
    try:
        db = workdir / "mirror.db"
        rng = random.Random(20261127)
        checked = 0
        acked_before = 0
        for _ in range(KILLS):
            # A random moment: mid-delivery, mid-poll, mid-commit, or during startup itself.
            time.sleep(rng.uniform(0.1, 1.5))
            daemon.proc.kill()
            daemon.proc.wait()
            checked += check_cursor_not_ahead(db, sim)
            acked_before = len(sim.http.get("/_sim/acked").json()["event_ids"])
            daemon.stop()
            daemon = DaemonProcess(workdir, sections)
        assert checked > 0, "no kill happened after a cursor was committed"
        assert acked_before > 0, "no delivery was acknowledged during the chaos"

        sim.control(action="quiesce", timeout=30, drop_retries=True)
        wait_until(
            lambda: daemon.mirror() == sim.truth(), 90, interval=0.5, what="zero drift after the last restart"
        )

        acked = sim.http.get("/_sim/acked").json()
        assert acked["complete"]
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            stored = {row[0] for row in conn.execute("SELECT event_id FROM _events")}
        finally:
            conn.close()
        lost = [eid for eid in acked["event_ids"] if eid not in stored]
        assert not lost, f"{len(lost)} acknowledged deliveries are not in _events, e.g. {lost[:5]}"

        verify = daemon.verify()
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        # Restarted daemons are this test's own, not the fixture's: stop the last one here.
        daemon.stop()
