"""The change feed across a crash: `syncd run` killed with SIGKILL while its http sink's
receiver holds a delivery open, then started again on the same store. The change in flight
is delivered again with the same seq and webhook-id, nothing is skipped, and every change
reaches the receiver at least once, in seq order."""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    DaemonProcess,
    SimProcess,
    daemon_sections,
    order_created,
    wait_until,
)
from tests.sink_receiver import SinkReceiver

pytestmark = pytest.mark.slow

SINK_SECRET = "whsec_" + base64.b64encode(b"e2e-feed-sink-secret-32-bytes!!!").decode()
#: The change whose first delivery the receiver holds open until the daemon is killed.
HELD_SEQ = 3


class _Receiver(SinkReceiver):
    """Holds the first delivery of HELD_SEQ open (until the test has killed the daemon: its
    connection dies with it); `held` is set when that request arrived."""

    def __init__(self) -> None:
        self.held = threading.Event()
        super().__init__(SINK_SECRET, self._answer_or_hold)

    def _answer_or_hold(self, seq: int, verified: bool) -> int | None:
        if seq == HELD_SEQ and not self.held.is_set():
            self.held.set()
            return None
        return 200 if verified else 401


@pytest.fixture
def sink_receiver() -> Iterator[_Receiver]:
    receiver = _Receiver()
    yield receiver
    receiver.close()


def _post_order(url: str, order_id: int) -> None:
    body, headers = order_created(
        f"evt_kill_{order_id}",
        order_id,
        customer="kill@example.com",
        stamp="2026-12-01T10:00:00.000Z",
        timestamp=0,
    )
    assert httpx.post(url, content=body, headers=headers, timeout=10).status_code == 200


def _store(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_sigkill_mid_delivery_redelivers_the_same_change_and_skips_nothing(
    tmp_path: Path, start_sim: Callable[..., SimProcess], sink_receiver: _Receiver
) -> None:
    sim = start_sim("--seed", "5", "--rate", "0", "--max-lag", "0s")
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    sections: dict[str, Any] = daemon_sections(sim.url, workdir)
    sections["sinks"] = [
        {
            "name": "app",
            "type": "http",
            "url": sink_receiver.url,
            "secret_env": "SINK_SECRET",
            "timeout": "60s",
        }
    ]
    env = {"SINK_SECRET": SINK_SECRET}
    db = workdir / "mirror.db"
    daemon = DaemonProcess(workdir, sections, env=env)
    try:
        assert daemon.webhook_url is not None
        wait_until(
            lambda: all(r["last_success_at"] for r in daemon.status()["resources"].values()),
            30,
            what="the first polls",
        )
        for order_id in range(1, 6):
            _post_order(daemon.webhook_url, 800000 + order_id)
        assert sink_receiver.held.wait(30), "the held delivery never came"
        daemon.proc.kill()
        daemon.proc.wait()
        # Delivered before the kill: the changes before the held one, and its offset says so.
        assert _store(db, "SELECT delivered_seq FROM _sink_offsets WHERE sink = 'app'") == [(HELD_SEQ - 1,)]
        daemon.stop()

        daemon = DaemonProcess(workdir, sections, env=env)
        assert daemon.webhook_url is not None
        for order_id in range(6, 8):
            _post_order(daemon.webhook_url, 800000 + order_id)
        head = 7
        wait_until(lambda: head in sink_receiver.delivered, 30, what="the last change delivered")
        mirror = _store(db, "SELECT value FROM _meta WHERE key = 'mirror_id'")[0][0]
        assert _store(db, "SELECT MAX(seq) FROM _changes") == [(head,)]
    finally:
        daemon.stop()

    requests = sink_receiver.requests
    held = [(seq, wid) for seq, wid, _ in requests if seq == HELD_SEQ]
    assert len(held) >= 2, "the change in flight at the kill was not delivered again"
    assert {wid for _, wid in held} == {f"{mirror}-{HELD_SEQ}"}
    assert all(verified for _, _, verified in requests)
    assert all(wid == f"{mirror}-{seq}" for seq, wid, _ in requests)
    # Nothing skipped: every seq reached the receiver, and each request is at most one past
    # the highest seq seen before it (a redelivery goes back, never forward over a gap).
    assert set(sink_receiver.delivered) == set(range(1, head + 1))
    highest = 0
    for seq, _, _ in requests:
        assert seq <= highest + 1, f"seq {seq} came before seq {highest + 1}"
        highest = max(highest, seq)
    firsts = list(dict.fromkeys(seq for seq, _, _ in requests))
    assert firsts == sorted(firsts)
