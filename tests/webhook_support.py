"""Shared pieces for the push-path tests: signed bodies and a real receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from syncd.config import WebhookConfig
from syncd.metrics import Metrics
from syncd.push.audit import AuditLog
from syncd.push.backlog import Backlog
from syncd.push.inbox import Inbox
from syncd.push.receiver_app import ReceiverApp, create_receiver_app, uvicorn_config
from syncd.signatures import sign
from syncd.store.db import Store
from syncd.store.writer import Writer

SECRET = "s3cret-current"
PATH = "/webhooks/petstore"


#: Every event id the store knows: acknowledged and waiting in the inbox, or applied.
KNOWN_EVENT_IDS = "SELECT event_id FROM _events UNION ALL SELECT event_id FROM _inbox"


def order(order_id: int = 1, version: int = 1, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": order_id,
        "customer": "john@example.com",
        "status": "placed",
        "total": 59.99,
        "currency": "USD",
        "items": [{"product": "Dog Food", "quantity": 2, "unitPrice": 29.995}],
        "createdAt": "2024-01-15T10:30:00.000Z",
        "updatedAt": "2024-01-15T10:30:00.000Z",
        "version": version,
    }
    record.update(extra)
    return record


def envelope(event_id: str, event: str = "order.created", data: Any = None) -> bytes:
    payload = {
        "eventId": event_id,
        "event": event,
        "timestamp": "2024-01-15T10:30:00.123Z",
        "data": order() if data is None else data,
    }
    return json.dumps(payload).encode()


def signed_headers(body: bytes, secret: str = SECRET, event_id: str = "evt") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        **sign("petstore", secret, body, msg_id=event_id, timestamp=0),
    }


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass
class RunningReceiver:
    url: str
    host: str
    port: int
    db_path: Path
    writer: Writer
    inbox: Inbox
    app: ReceiverApp
    metrics: Metrics

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the store through its own connection, as status/verify would."""
        conn = Store.open_reader(self.db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    async def flush_audit(self) -> None:
        await self.app.audit.flush()


@asynccontextmanager
async def serve_app(app: ReceiverApp, cfg: WebhookConfig) -> AsyncIterator[tuple[str, int]]:
    """Run `app` on a real uvicorn server bound to a free loopback port, as a task."""
    sock = free_socket()
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn_config(app, cfg))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield host, port
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def running_receiver(
    tmp_path: Path,
    *,
    secrets: tuple[str, ...] = (SECRET,),
    clock: Callable[[], float] | None = None,
    max_waiting: int = 4096,
    **webhook: Any,
) -> AsyncIterator[RunningReceiver]:
    db_path = tmp_path / "mirror.db"
    cfg = WebhookConfig.model_validate({"path": PATH, "rate_limit": "100000/s", **webhook})
    writer = Writer(lambda: Store(db_path))
    writer.start()
    metrics = Metrics()
    backlog = Backlog(cfg.max_backlog, cfg.max_backlog_bytes, metrics=metrics)
    inbox = Inbox(writer, max_waiting=max_waiting, metrics=metrics, backlog=backlog)
    await inbox.start()
    extra = {"clock": clock} if clock is not None else {}
    app = create_receiver_app(
        cfg, secrets, inbox, AuditLog(writer, metrics=metrics), metrics=metrics, **extra
    )
    try:
        async with serve_app(app, cfg) as (host, port):
            yield RunningReceiver(
                f"http://{host}:{port}{PATH}", host, port, db_path, writer, inbox, app, metrics
            )
    finally:
        await inbox.stop()
        writer.stop()


def read_db(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
