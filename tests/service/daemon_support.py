"""The daemon as a task of the test's event loop (uvicorn's `run_server` pattern), against
the in-process simulator, with a config file the test can rewrite before a reload."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from syncd.config import Config, load_config
from syncd.service.daemon import Daemon
from syncd.service.systemd import Notifier
from syncd.sim.server import SimHandle
from syncd.store.db import Store
from syncd.timefmt import format_epoch as utc_iso
from tests.webhook_support import PATH, SECRET, signed_headers

WAIT = 30.0


def write_config(
    tmp_path: Path,
    sim: SimHandle,
    *,
    mode: str = "push",
    api: str = "",
    webhook_listen: str = "127.0.0.1:0",
    **poll: str,
) -> Path:
    """syncd.toml in `tmp_path`; `poll` overrides [poll] keys, `api` adds [api] lines."""
    poll_lines = "\n".join(
        f'{k} = "{v}"' for k, v in {"interval": "1s", "safety_interval": "1h", **poll}.items()
    )
    path = tmp_path / "syncd.toml"
    path.write_text(
        f'[api]\nbase_url = "{sim.base_url}"\n{api}\n'
        f'[store]\npath = "{tmp_path / "mirror.db"}"\n'
        f'[sync]\nmode = "{mode}"\n'
        f'[poll]\n{poll_lines}\nlookback = "1s"\njitter = "0s"\n'
        f'[webhook]\nlisten = "{webhook_listen}"\npath = "{PATH}"\n'
        '[fallback]\nsilence = "1h"\nmissed_ratio = 0.1\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'
    )
    return path


def read_config(path: Path, sim: SimHandle) -> Config:
    return load_config(path, env={"PETSTORE_API_KEY": sim.api_key, "PETSTORE_WEBHOOK_SECRET": SECRET})


def make_config(tmp_path: Path, sim: SimHandle, **poll: str) -> Config:
    return read_config(write_config(tmp_path, sim, **poll), sim)


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
    """`Daemon.serve()` as a task, yielded once startup has finished; stopped on exit."""
    kwargs.setdefault("notifier", Notifier({}))
    daemon = Daemon(cfg, **kwargs)
    task = asyncio.create_task(daemon.serve())
    await until(lambda: daemon.running is not None or task.done(), "the daemon to start")
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
