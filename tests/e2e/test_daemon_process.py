"""`syncd run` as a real process: systemd notifications, signals, reload, graceful stop."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import signal
import socket
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    API_KEY,
    START_TIMEOUT,
    DaemonProcess,
    NotifySocket,
    SimProcess,
    mirror_covers,
    order_created,
    wait_until,
)

pytestmark = pytest.mark.slow

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]


def test_systemd_notifications_over_the_lifecycle(
    start_sim: StartSim, start_daemon: StartDaemon, notify_socket: NotifySocket
) -> None:
    sim = start_sim("--rate", "0")
    daemon = start_daemon(sim, env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"})
    ready = notify_socket.wait_for("READY=1")
    assert "STATUS=mode push" in ready
    # The listeners answer by the time READY=1 is sent.
    assert httpx.get(daemon.admin_url + "/healthz", timeout=5).status_code == 200

    # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.2 s, from the event loop.
    wait_until(lambda: len(notify_socket.times_of("WATCHDOG=1")) >= 6, 10, what="6 watchdog pings")
    times = notify_socket.times_of("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.1 < statistics.median(gaps) < 0.35, gaps

    # SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again.
    mark = len(notify_socket.received())
    daemon.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", 15, after=mark)
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
    after_reload = notify_socket.received().index(reloading) + 1
    notify_socket.wait_for("READY=1", 15, after=after_reload)

    # SIGTERM: STOPPING=1 and a clean exit.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    notify_socket.wait_for("STOPPING=1", 5, after=mark)
    assert any(r.get("msg") == "syncd stopped" for r in daemon.logs())


def _delivery(n: int) -> tuple[str, bytes, dict[str, str]]:
    event_id = f"evt_e2e_{n:06d}"
    body, headers = order_created(event_id, 900_000 + n)
    return event_id, body, headers


def test_sigterm_with_deliveries_in_flight_loses_nothing_acknowledged(
    start_sim: StartSim, start_daemon: StartDaemon
) -> None:
    sim = start_sim("--rate", "0")
    daemon = start_daemon(sim)
    assert daemon.webhook_url is not None
    url = daemon.webhook_url
    acked: list[str] = []
    refused = threading.Event()
    lock = threading.Lock()
    counter = iter(range(1_000_000))

    def sender() -> None:
        with httpx.Client(timeout=10) as client:
            while not refused.is_set():
                with lock:
                    n = next(counter)
                event_id, body, headers = _delivery(n)
                try:
                    response = client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    # The listener closed: a provider would retry this one later.
                    refused.set()
                    return
                if 200 <= response.status_code < 300:
                    with lock:
                        acked.append(event_id)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(sender) for _ in range(8)]
        wait_until(lambda: len(acked) >= 100, 20, what="100 acknowledged deliveries")
        stop_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait_exit(10)
        assert time.monotonic() - stop_at < 10
        refused.set()
        for future in futures:
            future.result()
    assert code == 0

    conn = sqlite3.connect(f"file:{daemon.workdir / 'mirror.db'}?mode=ro", uri=True)
    try:
        stored = {row[0] for row in conn.execute("SELECT event_id FROM _events")}
    finally:
        conn.close()
    missing = sorted(set(acked) - stored)
    assert not missing, f"{len(missing)} acknowledged deliveries lost, e.g. {missing[:5]}"
    assert len(acked) >= 100


def _poll_times(daemon: DaemonProcess) -> list[str]:
    return sorted(
        r["last_poll_at"] for r in daemon.status()["resources"].values() if r["last_poll_at"] is not None
    )


def test_sighup_applies_a_new_poll_interval(start_sim: StartSim, start_daemon: StartDaemon) -> None:
    sim = start_sim("--rate", "5", "--max-lag", "0s")
    daemon = start_daemon(sim, mode="poll", poll={"interval": "60s"})
    first = wait_until(lambda: daemon.status()["resources"]["orders"]["last_poll_at"], 15, what="first poll")

    sections: dict[str, dict[str, Any]] = json.loads(json.dumps(daemon.sections))
    sections["poll"]["interval"] = "500ms"
    sections["admin"]["listen"] = "127.0.0.1:1"  # cannot change live
    daemon.write_config(sections)
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_log(lambda r: str(r.get("msg", "")).startswith("config reloaded"), 15)
    assert "poll.interval" in reloaded["changed"]
    assert "admin.listen" not in reloaded["changed"]
    daemon.wait_log(lambda r: "admin.listen changed" in str(r.get("msg", "")), 5)

    # Polls now come every half second, not once a minute.
    def polled_twice_more() -> bool:
        orders = daemon.status()["resources"]["orders"]
        return orders["last_poll_at"] is not None and orders["last_poll_at"] > first

    wait_until(polled_twice_more, 10, what="a poll after the reload")
    second = daemon.status()["resources"]["orders"]["last_poll_at"]
    wait_until(
        lambda: daemon.status()["resources"]["orders"]["last_poll_at"] > second, 10, what="another poll"
    )
    wait_until(lambda: mirror_covers(sim.truth(), daemon.mirror()) or None, 20, what="mirror converges")
    # The admin listener stayed where it was.
    assert httpx.get(daemon.admin_url + "/healthz", timeout=5).status_code == 200


def test_sighup_applies_a_rotated_api_key_and_resumes_polling(
    start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    sim = start_sim("--rate", "5", "--max-lag", "0s")
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY)
    daemon = start_daemon(sim, mode="poll", poll={"interval": "500ms"}, api={"api_key_file": str(key_file)})
    wait_until(lambda: daemon.status()["resources"]["orders"]["last_poll_at"], 15, what="first poll")

    # The provider rotates the key: the old one is refused and polling stops, no retry storm.
    rotated = "rotated-e2e-api-key-0123456789"
    sim.control(api_key=rotated)
    daemon.wait_log(lambda r: "polling stopped until the API key is fixed" in str(r.get("msg", "")), 15)

    key_file.write_text(rotated + "\n")
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_log(lambda r: str(r.get("msg", "")).startswith("config reloaded"), 15)
    assert "secrets.api_key" in reloaded["changed"]
    daemon.wait_log(lambda r: str(r.get("msg", "")).startswith("polling resumed for"), 5)
    assert not any("api_key changed" in str(r.get("msg", "")) for r in daemon.logs())
    # Polling runs again with the new key and the mirror catches up.
    wait_until(lambda: mirror_covers(sim.truth(), daemon.mirror()) or None, 30, what="mirror converges")
    wait_until(
        lambda: all(r["last_error"] is None for r in daemon.status()["resources"].values()) or None,
        15,
        what="every resource polled without error",
    )
    assert rotated not in daemon.log_path.read_text()


def test_sighup_with_a_broken_config_keeps_the_running_one(
    start_sim: StartSim, start_daemon: StartDaemon, notify_socket: NotifySocket
) -> None:
    sim = start_sim("--rate", "5", "--max-lag", "0s")
    daemon = start_daemon(
        sim, mode="poll", poll={"interval": "500ms"}, env={"NOTIFY_SOCKET": str(notify_socket.path)}
    )
    notify_socket.wait_for("READY=1")
    mark = len(notify_socket.received())
    daemon.write_config("[poll]\ninterval = 'soon'\n")
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_log(lambda r: "config reload rejected" in str(r.get("msg", "")), 15)
    assert "poll.interval" in rejected["msg"]
    assert rejected["level"] == "ERROR"
    notify_socket.wait_for("RELOADING=1", 5, after=mark)
    notify_socket.wait_for("READY=1", 5, after=mark)

    # Still serving, still polling with the old config.
    assert httpx.get(daemon.admin_url + "/healthz", timeout=5).status_code == 200
    before = daemon.status()["resources"]["orders"]["last_poll_at"] or ""
    wait_until(
        lambda: (daemon.status()["resources"]["orders"]["last_poll_at"] or "") > before,
        10,
        what="a poll after the rejected reload",
    )
    assert daemon.proc.poll() is None


def test_a_listener_that_cannot_bind_fails_startup_with_exit_1(
    start_sim: StartSim, start_daemon: StartDaemon, notify_socket: NotifySocket
) -> None:
    sim = start_sim("--rate", "0")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        daemon = start_daemon(
            sim,
            wait_ready=False,
            admin={"listen": f"127.0.0.1:{port}"},
            env={"NOTIFY_SOCKET": str(notify_socket.path)},
        )
        assert daemon.wait_exit(START_TIMEOUT) == 1
    failure = daemon.wait_log(lambda r: "could not start" in str(r.get("msg", "")), 5)
    assert f"127.0.0.1:{port}" in failure["msg"]
    assert "READY=1" not in "\n".join(notify_socket.received())
