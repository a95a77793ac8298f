"""The store under a running `syncd run`, as real processes: one daemon per store (a second
exits 1 naming the first), a store removed or replaced under the daemon is noticed (503,
then exit 1 for the service manager to restart it), a store that cannot be used ends `run`
with one line and exit 1, and a config file that is not UTF-8 on SIGHUP is rejected like
any invalid config."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from syncd.store.db import Store
from tests.e2e.conftest import (
    API_KEY,
    START_TIMEOUT,
    WEBHOOK_SECRET,
    DaemonProcess,
    NotifySocket,
    SimProcess,
    order_created,
    to_toml,
    wait_until,
)

pytestmark = pytest.mark.slow

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]
ENV = {"PETSTORE_API_KEY": API_KEY, "PETSTORE_WEBHOOK_SECRET": WEBHOOK_SECRET}


def delivery(n: int) -> tuple[bytes, dict[str, str]]:
    return order_created(f"evt_guard_{n:04d}", 800_000 + n, customer="guard@example.com")


def post(url: str, n: int) -> int:
    body, headers = delivery(n)
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def stored_orders(db: Path) -> set[int]:
    """Every order row, tombstoned or not: whether a delivery reached the mirror at all."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {int(r[0]) for r in conn.execute("SELECT id FROM orders")}
    finally:
        conn.close()


def run_once(config: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", "run", "--config", str(config)],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_second_daemon_on_the_same_store_exits_1_naming_the_first(
    start_sim: StartSim, start_daemon: StartDaemon
) -> None:
    sim = start_sim("--rate", "0")
    first = start_daemon(sim)
    assert first.webhook_url is not None
    assert post(first.webhook_url, 1) == 200

    second = run_once(first.config_path)
    output = second.stdout + second.stderr
    assert second.returncode == 1, output
    assert f"pid {first.pid}" in output
    assert "Traceback" not in output

    # The first keeps serving, and its pid is still the one on record.
    assert httpx.get(first.admin_url + "/healthz", timeout=5).status_code == 200
    assert post(first.webhook_url, 2) == 200
    assert first.status()["daemon"]["pid"] == first.pid
    db = first.workdir / "mirror.db"
    wait_until(lambda: {800_001, 800_002} <= stored_orders(db), what="both deliveries mirrored")


def _restart(old: DaemonProcess) -> DaemonProcess:
    return DaemonProcess(old.workdir, old.sections)


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_store_removed_or_replaced_under_the_daemon_stops_acks_and_exits_1(
    start_sim: StartSim, start_daemon: StartDaemon, how: str
) -> None:
    sim = start_sim("--rate", "0")
    daemon = start_daemon(sim)
    assert daemon.webhook_url is not None
    db = daemon.workdir / "mirror.db"
    for n in (1, 2, 3):
        assert post(daemon.webhook_url, n) == 200
    wait_until(lambda: {800_001, 800_002, 800_003} <= stored_orders(db), what="first deliveries mirrored")

    if how == "removed":
        db.unlink()
    else:
        # A copy taken through SQLite (as a restore from backup would be) moved over the path.
        copy = daemon.workdir / "copy.db"
        src, dst = sqlite3.connect(db), sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        copy.replace(db)

    # Not one acknowledgement into the file nobody will open again: the check runs before
    # every inbox commit, so the very next delivery is refused.
    assert post(daemon.webhook_url, 4) == 503
    assert daemon.wait_exit(START_TIMEOUT) == 1
    lost = [r for r in daemon.logs() if f"was {how}" in str(r.get("msg", ""))]
    assert lost, daemon.log_path.read_text()[-2000:]
    assert lost[0]["level"] == "ERROR"
    assert "Traceback" not in daemon.log_path.read_text()

    restarted = _restart(daemon)
    try:
        assert restarted.webhook_url is not None
        # The provider retries the refused delivery; it lands in the store at the path now.
        assert post(restarted.webhook_url, 4) == 200
        expected = {800_004} if how == "removed" else {800_001, 800_002, 800_003, 800_004}
        wait_until(lambda: expected <= stored_orders(db), what="deliveries in the current store")
        if how == "removed":
            # What the API has comes back by polling into the new store.
            truth = sim.truth()["orders"]
            wait_until(lambda: {int(i) for i in truth} <= stored_orders(db), 30, what="orders relisted")
    finally:
        restarted.stop()


def test_sighup_with_a_config_that_is_not_utf8_keeps_the_running_one(
    start_sim: StartSim, start_daemon: StartDaemon, notify_socket: NotifySocket
) -> None:
    sim = start_sim("--rate", "0")
    daemon = start_daemon(sim, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    assert daemon.webhook_url is not None
    notify_socket.wait_for("READY=1")
    assert post(daemon.webhook_url, 1) == 200
    mark = len(notify_socket.received())
    good = daemon.config_path.read_bytes()
    daemon.config_path.write_bytes(good.replace(b'level = "info"', b'level = "\xff\xfe"'))
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_log(lambda r: "config reload rejected" in str(r.get("msg", "")), 15)
    assert "not UTF-8" in rejected["msg"]
    notify_socket.wait_for("RELOADING=1", 5, after=mark)
    notify_socket.wait_for("READY=1", 5, after=mark)

    # Still serving with the old config: a later SIGHUP with the good file is taken again.
    assert post(daemon.webhook_url, 2) == 200
    assert httpx.get(daemon.admin_url + "/healthz", timeout=5).status_code == 200
    daemon.config_path.write_bytes(good)
    mark = len(notify_socket.received())
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(lambda r: str(r.get("msg", "")).startswith("config reloaded"), 15)
    notify_socket.wait_for("READY=1", 5, after=mark)
    db = daemon.workdir / "mirror.db"
    wait_until(lambda: {800_001, 800_002} <= stored_orders(db), what="deliveries mirrored")
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.log_path.read_text()


def _newer_schema(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE _meta SET value='999' WHERE key='schema_version'")
    conn.close()


@contextlib.contextmanager
def read_only(db: Path) -> Iterator[None]:
    """The store file made unwritable for real: a mode bit, or for root (whom modes do not
    stop) the immutable attribute."""
    if os.geteuid() != 0:
        db.chmod(0o444)
        try:
            yield
        finally:
            db.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root on a filesystem without the immutable attribute")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


def _read_only_store(db: Path) -> None:
    store = Store(db)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("corrupt", "cannot open store"),
        ("newer", "newer than this syncd"),
        ("read-only", "readonly database"),
    ],
)
def test_run_on_an_unusable_store_exits_1_with_one_clear_line(
    tmp_path: Path, start_sim: StartSim, kind: str, needle: str
) -> None:
    sim = start_sim("--rate", "0")
    db = tmp_path / "mirror.db"
    if kind == "corrupt":
        db.write_bytes(b"this is not a database\n" * 512)
    elif kind == "newer":
        _newer_schema(db)
    else:
        _read_only_store(db)
    before = db.read_bytes()
    config = tmp_path / "syncd.toml"
    config.write_text(
        to_toml(
            {
                "api": {"base_url": sim.url},
                "store": {"path": str(db)},
                "webhook": {"listen": "127.0.0.1:0"},
                "admin": {"listen": "127.0.0.1:0"},
            }
        )
    )
    with read_only(db) if kind == "read-only" else contextlib.nullcontext():
        result = run_once(config)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert needle in output
    assert "Traceback" not in output
    assert db.read_bytes() == before
