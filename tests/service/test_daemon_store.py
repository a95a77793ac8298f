"""The daemon in-process against the simulator over loopback, on a real SQLite file:
readiness and webhook health count only committed deliveries (commits made to fail for real
with SQLITE_FULL), the first poll after a restart is not taken as webhooks missing, and a
store removed under the daemon ends it with exit 1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.config import Config, load_config
from syncd.service.daemon import EXIT_FAILURE, Daemon
from syncd.service.systemd import Notifier
from syncd.sim.config import SimConfig
from syncd.sim.server import SimHandle, running_simulator
from syncd.store.db import Store
from syncd.timefmt import format_epoch as utc_iso
from tests.webhook_support import PATH, SECRET, signed_headers

WAIT = 30.0


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with running_simulator(SimConfig(rate=0, max_lag=0)) as handle:
        yield handle


def make_config(tmp_path: Path, sim: SimHandle, **poll: str) -> Config:
    poll_lines = "\n".join(
        f'{k} = "{v}"' for k, v in {"interval": "1s", "safety_interval": "1h", **poll}.items()
    )
    path = tmp_path / "syncd.toml"
    path.write_text(
        f'[api]\nbase_url = "{sim.base_url}"\n'
        f'[store]\npath = "{tmp_path / "mirror.db"}"\n'
        f'[poll]\n{poll_lines}\nlookback = "1s"\njitter = "0s"\n'
        f'[webhook]\nlisten = "127.0.0.1:0"\npath = "{PATH}"\n'
        '[fallback]\nsilence = "1h"\nmissed_ratio = 0.1\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'
    )
    return load_config(path, env={"PETSTORE_API_KEY": sim.api_key, "PETSTORE_WEBHOOK_SECRET": SECRET})


async def until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Wait on a condition (never a fixed sleep), failing with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


@asynccontextmanager
async def running(cfg: Config, **kwargs: Any) -> AsyncIterator[tuple[Daemon, asyncio.Task[int]]]:
    daemon = Daemon(cfg, notifier=Notifier({}), **kwargs)
    task = asyncio.create_task(daemon.serve())
    await until(lambda: daemon.scheduler is not None or task.done(), "the daemon to start")
    assert not task.done(), "the daemon did not start"
    try:
        yield daemon, task
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, WAIT)


def polled_since(db: Path, resources: tuple[str, ...], since: float) -> bool:
    conn = Store.open_reader(db)
    try:
        rows = dict(conn.execute("SELECT resource, last_success_at FROM _cursors").fetchall())
    finally:
        conn.close()
    return all((rows.get(r) or 0) > since for r in resources)


def envelope(event_id: str, order_id: int, padding: int = 0) -> bytes:
    now = utc_iso()
    data = {
        "id": order_id,
        "customer": "ready@example.com",
        "status": "placed",
        "total": 1.0,
        "currency": "USD",
        "items": [],
        "note": "x" * padding,
        "createdAt": now,
        "updatedAt": now,
        "version": 1,
    }
    return json.dumps(
        {"eventId": event_id, "event": "order.created", "timestamp": now, "data": data}
    ).encode()


async def deliver(http: httpx.AsyncClient, url: str, event_id: str, order_id: int, padding: int = 0) -> int:
    body = envelope(event_id, order_id, padding)
    response = await http.post(url, content=body, headers=signed_headers(body, event_id=event_id))
    return response.status_code


def mirrored(db: Path) -> set[int]:
    conn = Store.open_reader(db)
    try:
        return {int(r[0]) for r in conn.execute("SELECT id FROM orders")}
    finally:
        conn.close()


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
        assert daemon.receiver is not None
        assert daemon.admin is not None
        assert daemon.writer is not None
        assert daemon.health is not None
        assert daemon.inbox is not None
        url, readyz = daemon.receiver.url + PATH, daemon.admin.url + "/readyz"
        # The start's polls are done before the disk fills, so no later poll can clear it.
        await until(lambda: polled_since(db, cfg.sync.resources, started), "the first polls")
        assert await deliver(http, url, "evt_before", 700_001) == 200
        ready = await http.get(readyz)
        assert ready.status_code == 200, ready.text
        committed_at = daemon.inbox.last_delivery_at
        await daemon.tick()
        heard_at = daemon.health.last_webhook_at
        assert heard_at is not None

        await daemon.writer.run(_cap_pages)
        for attempt in range(3):
            assert await deliver(http, url, "evt_full", 700_002, padding=200_000) == 503, attempt
        ready = await http.get(readyz)
        assert ready.status_code == 503, ready.text
        assert "cannot be committed" in ready.json()["reason"]
        assert "full" in ready.json()["reason"]
        # Refused deliveries are not webhooks arriving, for readiness or for fallback health.
        assert daemon.inbox.last_delivery_at == committed_at
        await daemon.tick()
        assert daemon.health.last_webhook_at == heard_at

        await daemon.writer.run(_uncap_pages)
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
        assert daemon.health is not None
        assert daemon.scheduler is not None
        await until(lambda: polled_since(db, cfg.sync.resources, restarted), "the catch-up polls")
        assert daemon.mode == "push", daemon.health.reason
        assert daemon.health.switches == 0
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
        daemon.scheduler.trigger_now()
        await until(lambda: polled_since(db, cfg.sync.resources, judged), "the next polls")
        await until(lambda: daemon.mode == "fallback", "the switch to fallback")
        assert "missed" in daemon.health.reason


async def test_a_store_removed_under_the_daemon_ends_it_with_exit_1(tmp_path: Path, sim: SimHandle) -> None:
    cfg = make_config(tmp_path, sim)
    db = tmp_path / "mirror.db"
    async with running(cfg, store_check_period=0.05) as (daemon, task), httpx.AsyncClient(timeout=10) as http:
        assert daemon.receiver is not None
        url = daemon.receiver.url + PATH
        assert await deliver(http, url, "evt_kept", 700_010) == 200
        db.unlink()
        code = await asyncio.wait_for(task, WAIT)
        assert code == EXIT_FAILURE
        assert daemon.store_lost is not None
        assert "was removed" in daemon.store_lost
