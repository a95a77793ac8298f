"""The daemon in-process against the simulator over loopback, on a real SQLite file:
readiness and webhook health count only committed deliveries (commits made to fail for real
with SQLITE_FULL), the first poll after a restart is not taken as webhooks missing, and a
store removed under the daemon ends it with exit 1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from syncd.service.daemon import EXIT_FAILURE
from syncd.sim.server import SimHandle
from syncd.store.db import Store
from tests.service.daemon_support import WAIT, deliver, make_config, mirrored, polled_since, running, until
from tests.webhook_support import PATH


def _cap_pages(store: Store) -> None:
    # The disk is full from SQLite's point of view: no page beyond the ones it has.
    (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
    store.conn.execute(f"PRAGMA max_page_count={pages}")


def _uncap_pages(store: Store) -> None:
    store.conn.execute("PRAGMA max_page_count=4294967294")


async def test_readyz_is_503_while_commits_fail_and_recovers(tmp_path: Path, sim: SimHandle) -> None:
    cfg = make_config(tmp_path, sim)
    db = tmp_path / "mirror.db"
    started = time.time()
    async with running(cfg) as (daemon, _), httpx.AsyncClient(timeout=10) as http:
        parts = daemon.running
        assert parts is not None
        assert parts.push is not None
        health, inbox = parts.modes.health, parts.push.inbox
        assert health is not None
        url, readyz = parts.push.listener.url + PATH, parts.admin.url + "/readyz"
        # The start's polls are done before the disk fills, so no later poll can clear it.
        await until(lambda: polled_since(db, cfg.sync.resources, started), "the first polls")
        assert await deliver(http, url, "evt_before", 700_001) == 200
        ready = await http.get(readyz)
        assert ready.status_code == 200, ready.text
        committed_at = inbox.last_delivery_at
        await daemon.tick(parts)
        heard_at = health.last_webhook_at
        assert heard_at is not None

        await parts.writer.run(_cap_pages)
        for attempt in range(3):
            assert await deliver(http, url, "evt_full", 700_002, padding=200_000) == 503, attempt
        ready = await http.get(readyz)
        assert ready.status_code == 503, ready.text
        assert "cannot be committed" in ready.json()["reason"]
        assert "full" in ready.json()["reason"]
        # Refused deliveries are not webhooks arriving, for readiness or for fallback health.
        assert inbox.last_delivery_at == committed_at
        await daemon.tick(parts)
        assert health.last_webhook_at == heard_at

        await parts.writer.run(_uncap_pages)
        # The provider retries; the retry commits and the daemon is ready again.
        assert await deliver(http, url, "evt_full", 700_002, padding=200_000) == 200
        ready = await http.get(readyz)
        assert ready.status_code == 200, ready.text
        assert "webhook" in ready.json()["reason"]
        await until(lambda: {700_001, 700_002} <= mirrored(db), "both deliveries mirrored")
        assert daemon.mode == "push"


async def test_a_restart_does_not_count_the_catch_up_poll_as_webhooks_missing(
    tmp_path: Path, sim: SimHandle
) -> None:
    cfg = make_config(tmp_path, sim)
    db = tmp_path / "mirror.db"
    # Records of every resource, so each has a cursor and the restart's polls are incremental.
    sim.step(100)
    started = time.time()
    async with running(cfg) as (daemon, _):
        await until(lambda: polled_since(db, cfg.sync.resources, started), "the first polls")
        assert daemon.mode == "push"

    # Changes made while the daemon was down: no webhook will bring them before the poll.
    assert sim.step(60) == 60
    truth = sim.truth()
    restarted = time.time()
    async with running(cfg) as (daemon, _):
        assert daemon.running is not None
        health, scheduler = daemon.running.modes.health, daemon.running.scheduler
        assert health is not None
        await until(lambda: polled_since(db, cfg.sync.resources, restarted), "the catch-up polls")
        assert daemon.mode == "push", health.reason
        assert health.switches == 0
        conn = Store.open_reader(db)
        try:
            for resource, records in truth.items():
                have = {str(i): v for i, v in conn.execute(f"SELECT id, _version FROM {resource}")}
                assert all(have.get(i) == v for i, v in records.items()), resource
        finally:
            conn.close()

        # Later polls are judged as before: changes no webhook brought switch to fallback.
        sim.step(60)
        judged = time.time()
        scheduler.trigger_now()
        await until(lambda: polled_since(db, cfg.sync.resources, judged), "the next polls")
        await until(lambda: daemon.mode == "fallback", "the switch to fallback")
        assert "missed" in health.reason


async def test_a_store_removed_under_the_daemon_ends_it_with_exit_1(tmp_path: Path, sim: SimHandle) -> None:
    cfg = make_config(tmp_path, sim)
    db = tmp_path / "mirror.db"
    async with running(cfg, store_check_period=0.05) as (daemon, task), httpx.AsyncClient(timeout=10) as http:
        assert daemon.running is not None
        assert daemon.running.push is not None
        url = daemon.running.push.listener.url + PATH
        assert await deliver(http, url, "evt_kept", 700_010) == 200
        db.unlink()
        code = await asyncio.wait_for(task, WAIT)
        assert code == EXIT_FAILURE
        assert daemon.store_lost is not None
        assert "was removed" in daemon.store_lost
