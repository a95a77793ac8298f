"""What the daemon's change feed tests share: a config with `[[sinks]]` pointed at real
receivers on loopback, signed webhooks of orders in any state, and reads of the store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from syncd.config import Config, load_config
from syncd.sim.server import SimHandle
from syncd.store import changelog
from syncd.store.db import Store
from tests.feed.support import SECRET as SINK_SECRET
from tests.feed.support import Action, Receiver, Request
from tests.service.daemon_support import write_config
from tests.webhook_support import SECRET, order, signed_headers

SINK_SECRET_ENV = "SYNCD_TEST_SINK_SECRET"


def sink_tables(sinks: dict[str, tuple[str, dict[str, Any]]]) -> str:
    """`[[sinks]]` tables: name -> (url, extra keys); every sink is http, signed with
    SINK_SECRET."""
    out = []
    for name, (url, extra) in sinks.items():
        lines = ["[[sinks]]", f'name = "{name}"', 'type = "http"', f'url = "{url}"']
        lines.append(f'secret_env = "{SINK_SECRET_ENV}"')
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in extra.items())
        out.append("\n".join(lines))
    return "\n".join(out) + "\n"


def feed_config(
    tmp_path: Path,
    sim: SimHandle,
    sinks: dict[str, tuple[str, dict[str, Any]]],
    *,
    mode: str = "push",
    changes: str = "",
) -> Path:
    """The daemon tests' config plus `[changes]` lines and the sinks; returns its path."""
    path = write_config(tmp_path, sim, mode=mode)
    rewrite(path, sinks, changes=changes)
    return path


def rewrite(path: Path, sinks: dict[str, tuple[str, dict[str, Any]]], *, changes: str = "") -> None:
    """Replace the feed's part of the config at `path` (before a reload)."""
    text = path.read_text().split("\n# -- feed\n")[0]
    path.write_text(f"{text}\n# -- feed\n[changes]\n{changes}\n{sink_tables(sinks)}")


def load(path: Path, sim: SimHandle) -> Config:
    env = {"PETSTORE_API_KEY": sim.api_key, "PETSTORE_WEBHOOK_SECRET": SECRET, SINK_SECRET_ENV: SINK_SECRET}
    return load_config(path, env=env)


def loader(path: Path, sim: SimHandle) -> Callable[[], Config]:
    """What the daemon reloads from (a real file, the test's environment)."""
    return lambda: load(path, sim)


@asynccontextmanager
async def receiver(decide: Callable[[Request, int], Action] | None = None) -> AsyncIterator[Receiver]:
    """A Standard Webhooks receiver on 127.0.0.1; `decide` scripts its answers."""
    r = Receiver() if decide is None else Receiver(decide=decide)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def send_order(
    http: httpx.AsyncClient, url: str, event_id: str, order_id: int, version: int, status: str, event: str
) -> None:
    """One signed webhook with the order in that state, acknowledged."""
    stamp = f"2026-12-01T10:00:{version:02d}.000Z"
    data = order(order_id, version, status=status, updatedAt=stamp)
    body = json.dumps({"eventId": event_id, "event": event, "timestamp": stamp, "data": data}).encode()
    response = await http.post(url, content=body, headers=signed_headers(body, event_id=event_id))
    assert response.status_code == 200, response.text


def read(db: Path, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    conn = Store.open_reader(db)
    try:
        return fn(conn)
    finally:
        conn.close()


def offsets(db: Path) -> dict[str, int]:
    return dict(read(db, changelog.offsets))


def mirror_id(db: Path) -> str:
    return str(read(db, lambda conn: Store.read_meta(conn)["mirror_id"]))


def seqs(requests: list[Request]) -> list[int]:
    return [r.seq for r in requests]
