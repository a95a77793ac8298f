"""`syncd browse` as a real process: Datasette on a mirror built from the simulator by
`syncd resync`, answering a canned query's JSON over loopback, and never writing."""

from __future__ import annotations

import collections
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import API_KEY, DaemonProcess, SimProcess, mirror_covers, wait_until

pytest.importorskip("datasette", reason="syncd browse needs the browse extra (datasette)")
pytestmark = pytest.mark.slow

ORDERS = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _syncd(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PETSTORE_API_KEY": API_KEY}
    return subprocess.Popen([sys.executable, "-m", "syncd", *args], env=env, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def test_browse_serves_canned_queries_on_a_mirror_of_the_simulator(
    start_sim: Callable[..., SimProcess], start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    sim = start_sim("--rate", "0", "--preload-orders", str(ORDERS), "--preload-customers", "5")
    # Browsed while the daemon runs: read-only, and live through the WAL.
    # The first sync is logged too, so "recent changes" has something to show.
    daemon = start_daemon(sim, mode="poll", changes={"include_initial": True})
    truth = sim.truth()
    assert len(truth["orders"]) == ORDERS
    wait_until(lambda: mirror_covers(truth, daemon.mirror()), 60, what="the first poll")
    store = daemon.workdir / "mirror.db"
    config = daemon.config_path
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        by_status = collections.Counter(
            s for (s,) in conn.execute("SELECT status FROM orders WHERE _deleted=0")
        )

    port = _free_port()
    log = (tmp_path / "browse.log").open("w")
    browse = _syncd(
        "browse", "--config", str(config), "--port", str(port), stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if browse.poll() is not None:
                raise AssertionError(
                    f"syncd browse exited {browse.returncode}: {(tmp_path / 'browse.log').read_text()}"
                )
            try:
                return httpx.get(base + "/-/versions.json", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 60, what="syncd browse to answer")
        with httpx.Client(base_url=base, timeout=10) as client:
            rows = (
                client.get("/mirror/orders-by-status.json", params={"_shape": "array"})
                .raise_for_status()
                .json()
            )
            assert {r["status"]: r["orders"] for r in rows} == dict(by_status)
            assert sum(r["orders"] for r in rows) == ORDERS
            assert set(rows[0]) == {"status", "currency", "orders", "total"}

            recent = client.get("/mirror/changed-last-hour.json", params={"_shape": "array"}).json()
            assert {r["resource"] for r in recent} == {"orders", "customers", "inventory"}
            assert len([r for r in recent if r["resource"] == "orders"]) == ORDERS
            assert client.get("/mirror/dead-letters.json", params={"_shape": "array"}).json() == []
            changes = client.get("/mirror/recent-changes.json", params={"_shape": "array"}).json()
            assert len(changes) == 100  # of the 117 the first sync logged: the query keeps the last 100
            assert changes[0]["seq"] > changes[-1]["seq"]
            assert {c["event"] for c in changes} <= {
                "order.created",
                "customer.registered",
                "inventory.created",
            }

            # Bookkeeping tables are hidden from the database page, mirror tables are not.
            database = client.get("/mirror.json").json()
            hidden = {t["name"]: t["hidden"] for t in database["tables"]}
            assert hidden["orders"] is False
            assert hidden["_inbox"] is True
            assert hidden["_changes"] is True
            # The orders table comes faceted by status and described.
            orders = client.get("/mirror/orders.json", params={"_size": "1"}).json()
            assert "status" in orders["facet_results"]
            metadata = client.get("/-/metadata.json").json()
            columns = metadata["databases"]["mirror"]["tables"]["orders"]["columns"]
            assert columns["_deleted"].startswith("1 once a full listing")

            # Read-only: a write through SQL is refused and nothing changes.
            write = client.get("/mirror.json", params={"sql": "DELETE FROM orders"})
            assert write.status_code == 400
            assert "read-only" in write.text or "Statement must be a SELECT" in write.text
    finally:
        browse.send_signal(signal.SIGINT)
        try:
            browse.wait(15)
        except subprocess.TimeoutExpired:
            browse.kill()
            browse.wait()
        log.close()
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (ORDERS,)
