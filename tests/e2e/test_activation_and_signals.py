"""systemd socket activation of both listeners, and a second stop signal ending a slow
graceful stop at once."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from syncd.signatures import sign
from syncd.sim.server import free_port
from tests.e2e.conftest import (
    API_KEY,
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
    DaemonProcess,
    SimProcess,
    daemon_sections,
    to_toml,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate")
def test_listeners_come_from_systemd_socket_activation(
    start_sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = start_sim("--rate", "0")
    webhook_port, admin_port = free_port(), free_port()
    sections = daemon_sections(sim.url, tmp_path)
    # The config names other ports: the sockets systemd passes must win over them.
    sections["webhook"]["listen"] = "127.0.0.1:1"
    sections["admin"]["listen"] = "127.0.0.1:2"
    config = tmp_path / "syncd.toml"
    config.write_text(to_toml(sections))
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l", f"127.0.0.1:{webhook_port}",
            "-l", f"127.0.0.1:{admin_port}",
            "--fdname=webhook:admin",
            "-E", f"PETSTORE_API_KEY={API_KEY}",
            "-E", f"PETSTORE_WEBHOOK_SECRET={WEBHOOK_SECRET}",
            "-E", "PYTHONUNBUFFERED=1",
            sys.executable, "-m", "syncd", "run", "--config", str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # The first connection starts the daemon; it waits in the passed socket's backlog.
        health = wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=10).status_code == 200,
            60,
            what="healthz on the activated admin socket",
        )
        assert health
        body = b'{"eventId":"evt_activation_1","event":"webhook.test","data":{}}'
        headers = sign(
            "petstore", WEBHOOK_SECRET, body, msg_id="evt_activation_1", timestamp=int(time.time())
        )
        headers["Content-Type"] = "application/json"
        answer = httpx.post(f"http://127.0.0.1:{webhook_port}{WEBHOOK_PATH}", content=body, headers=headers)
        assert answer.status_code == 200
        # Only the webhook path is public; health lives on the admin socket alone.
        assert httpx.get(f"http://127.0.0.1:{webhook_port}/healthz").status_code == 404
        text = (tmp_path / "daemon.log").read_text()
        assert "using the webhook socket passed by systemd" in text
        assert "using the admin socket passed by systemd" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        log.close()
    assert code == 0


def test_second_signal_ends_a_slow_graceful_stop_at_once(
    start_sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    # Every listing hangs for 30 s, so a poll is always in flight and the graceful stop
    # has to wait for it; the second SIGTERM must not.
    sim = start_sim("--rate", "0", "--hang-rate", "1", "--hang-seconds", "30s")
    workdir = tmp_path / "d"
    workdir.mkdir()
    sections = daemon_sections(sim.url, workdir, mode="poll")
    sections["api"]["timeout"] = "60s"
    daemon = DaemonProcess(workdir, sections)
    try:
        wait_until(lambda: sim.stats()["api_faults"].get("hang", 0) > 0, 30, what="a poll held by a hang")
        daemon.signal(signal.SIGTERM)
        daemon.wait_log(lambda r: "stopping" in str(r.get("msg", "")), 10, what="the graceful stop")
        assert daemon.proc.poll() is None, "the hung poll should still be holding the graceful stop"
        second = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait_exit(5)
        assert time.monotonic() - second < 3
        assert code != 0, "an interrupted stop must not report success"
    finally:
        daemon.stop()
