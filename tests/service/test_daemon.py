"""The real daemon in-process, a task of the test's event loop, against the simulator over
loopback: it serves, reloads (by a real SIGHUP and by `reload()`), stops on request and on a
real SIGTERM with everything it started stopped, and a startup that fails half-way stops
what it had started. The process tests in tests/e2e run the same daemon as `syncd run`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from syncd.errors import StoreClosedError
from syncd.ops import status as status_keys
from syncd.service.daemon import EXIT_FAILURE, EXIT_OK, Daemon
from syncd.service.systemd import Notifier
from syncd.sim.server import SimHandle
from syncd.store.db import Store
from syncd.store.guard import StoreLock
from tests.service.daemon_support import (
    WAIT,
    deliver,
    make_config,
    mirrored,
    polled_since,
    read_config,
    running,
    until,
    write_config,
)
from tests.webhook_support import PATH


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "syncd-store-writer" and t.is_alive()]


def _meta(db: Path) -> dict[str, str]:
    conn = Store.open_reader(db)
    try:
        return dict(conn.execute("SELECT key, value FROM _meta").fetchall())
    finally:
        conn.close()


def _store_unlocked(db: Path) -> bool:
    lock = StoreLock(str(db))
    lock.acquire()
    lock.release()
    return True


def _the_daemon_handles(sig: signal.Signals) -> None:
    # The default action of SIGHUP and SIGTERM ends the test process: send one only to
    # a daemon that installed its own handler.
    assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None), sig


async def test_it_serves_both_paths_then_stops_everything_it_started(tmp_path: Path, sim: SimHandle) -> None:
    cfg = make_config(tmp_path, sim)
    db = tmp_path / "mirror.db"
    started = time.time()
    async with running(cfg) as (daemon, task), httpx.AsyncClient(timeout=10) as http:
        parts = daemon.running
        assert parts is not None
        assert parts.push is not None
        assert len(_writer_threads()) == 1
        await until(lambda: polled_since(db, cfg.sync.resources, started), "the first polls")
        assert (await http.get(parts.admin.url + "/healthz")).status_code == 200
        ready = await http.get(parts.admin.url + "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["mode"] == "push"
        assert await deliver(http, parts.push.listener.url + PATH, "evt_served", 700_100) == 200
        await until(lambda: 700_100 in mirrored(db), "the delivery mirrored")
        assert daemon.mode == "push"
        assert daemon.status_text().startswith("mode push (started); poll every 3600s")

        daemon.request_stop()
        assert await asyncio.wait_for(task, WAIT) == EXIT_OK

    assert not parts.push.listener.serving
    assert not parts.admin.serving
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(parts.admin.url + "/healthz")
    with pytest.raises(StoreClosedError):
        await parts.writer.run(_meta_count)
    assert _writer_threads() == []
    assert _store_unlocked(db)
    meta = _meta(db)
    assert meta[status_keys.META_MODE] == "push"
    assert meta[status_keys.META_DAEMON_PID] == str(os.getpid())


def _meta_count(store: Store) -> int:
    (count,) = store.conn.execute("SELECT count(*) FROM _meta").fetchone()
    return int(count)


async def test_sighup_reloads_the_poll_interval_and_the_request_rate(tmp_path: Path, sim: SimHandle) -> None:
    path = write_config(tmp_path, sim, mode="poll", interval="1h")
    cfg = read_config(path, sim)
    async with running(cfg, load=lambda: read_config(path, sim)) as (daemon, _):
        parts = daemon.running
        assert parts is not None
        assert parts.scheduler.interval == 3600.0
        assert parts.client.budget.rate is None
        _the_daemon_handles(signal.SIGHUP)

        write_config(tmp_path, sim, mode="poll", interval="2s", api='rate_limit = "5/s"')
        os.kill(os.getpid(), signal.SIGHUP)
        # The scheduler takes the interval before the reload has finished (the change feed is
        # reconfigured after it), and the daemon's config is swapped only at the end.
        await until(
            lambda: parts.scheduler.interval == 2.0 and daemon.cfg.poll.interval == 2.0,
            "the reloaded poll interval",
        )
        assert parts.modes.interval == 2.0
        assert parts.client.budget.rate == 5.0
        next_poll = parts.scheduler.next_run("poll", "orders")
        assert next_poll is not None
        assert (next_poll - datetime.now(UTC)).total_seconds() <= 2.0
        # The new interval is in use, not only recorded: the next polls come within it.
        since = time.time()
        await until(lambda: polled_since(tmp_path / "mirror.db", cfg.sync.resources, since), "the next polls")


async def test_reload_rejects_a_broken_file_and_takes_the_next_good_one(
    tmp_path: Path, sim: SimHandle
) -> None:
    path = write_config(tmp_path, sim, mode="poll")
    cfg = read_config(path, sim)
    async with running(cfg, load=lambda: read_config(path, sim)) as (daemon, _):
        parts = daemon.running
        assert parts is not None
        path.write_text("[poll]\ninterval = 'soon'\n")
        assert not await daemon.reload()
        assert daemon.cfg is cfg
        assert parts.scheduler.interval == 1.0

        # A restart-only key is kept as started; the live ones change.
        write_config(tmp_path, sim, mode="push", interval="3s")
        assert await daemon.reload()
        assert daemon.cfg.sync.mode == "poll"
        assert daemon.cfg.poll.interval == 3.0
        assert parts.scheduler.interval == 3.0
        assert daemon.mode == "poll"


async def test_sigterm_stops_the_daemon_gracefully(tmp_path: Path, sim: SimHandle) -> None:
    cfg = make_config(tmp_path, sim)
    db = tmp_path / "mirror.db"
    started = time.time()
    async with running(cfg) as (daemon, task):
        await until(lambda: polled_since(db, cfg.sync.resources, started), "the first polls")
        _the_daemon_handles(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, WAIT) == EXIT_OK
    assert daemon.running is not None
    assert not daemon.running.admin.serving
    assert _writer_threads() == []
    assert _store_unlocked(db)
    # The handlers are the daemon's only while it runs.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_a_startup_that_fails_half_way_stops_what_it_started(
    tmp_path: Path, sim: SimHandle, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        cfg = read_config(write_config(tmp_path, sim, webhook_listen=f"127.0.0.1:{port}"), sim)
        daemon = Daemon(cfg, notifier=Notifier({}))
        assert await asyncio.wait_for(daemon.serve(), WAIT) == EXIT_FAILURE
    assert daemon.running is None
    assert "cannot listen on" in caplog.text
    assert _writer_threads() == []
    assert _store_unlocked(tmp_path / "mirror.db")
    # The store was opened and written before the listener failed, and closed after.
    conn = sqlite3.connect(tmp_path / "mirror.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
    finally:
        conn.close()
