"""Shared pieces of the feed tests: a change log on a temp file, a fake clock, and a real
Standard Webhooks receiver on loopback (aiohttp) whose answers each test scripts."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook

from syncd.core.changes import ChangeKind, ChangeSource, new_change
from syncd.feed.log import ConnectionChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.store import changelog

SECRET = "whsec_" + base64.b64encode(b"feed-test-secret-32-bytes-long!!").decode()
MIRROR = "0b0e0c6e-mirror"


def open_log(path: Path) -> tuple[sqlite3.Connection, ConnectionChangeLog]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    changelog.create_tables(conn)
    return conn, ConnectionChangeLog(conn)


def append_orders(
    conn: sqlite3.Connection, ids: range | list[int], *, notifier: ChangeNotifier | None = None
) -> list[int]:
    """One created order per id, committed; returns the seqs."""
    conn.execute("BEGIN")
    seqs = append_orders_on(conn, ids)
    conn.execute("COMMIT")
    if notifier is not None:
        notifier.notify()
    return seqs


def append_orders_on(conn: sqlite3.Connection, ids: range | list[int]) -> list[int]:
    """One created order per id, in the caller's transaction."""
    batch = [
        new_change(
            mirror=MIRROR,
            resource="orders",
            record_id=rid,
            kind=ChangeKind.CREATED,
            source=ChangeSource.WEBHOOK,
            data={"id": rid, "status": "placed", "version": 1},
            version=1,
            previous=None,
            previous_version=None,
            at="2026-12-01T10:00:00.000Z",
        )
        for rid in ids
    ]
    return changelog.append(conn, batch)


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until `predicate()` holds, checking between turns of the event loop; `timeout`
    is only a safety net against a hang, never part of what a test asserts."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class FakeClock:
    """Time that moves only when the code under test sleeps. `on_sleep` runs at each sleep
    (after the clock moved), e.g. to append changes or bring a sink back."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.start = start
        self.delays: list[float] = []
        self.on_sleep: Callable[[float], Awaitable[None]] | None = None

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            await self.on_sleep(seconds)
        await asyncio.sleep(0)

    @property
    def elapsed(self) -> float:
        return self.now - self.start


@dataclass
class Request:
    webhook_id: str
    seq: int
    verified: bool
    content_type: str
    body: dict[str, Any]


# What the receiver does with a request: None answers 200, an int answers that status,
# "hang" never answers (until the test ends), "huge" streams an endless body with `status`.
Action = int | str | tuple[str, int] | None


@dataclass
class Receiver:
    """Records every request; `decide(request, attempt_of_this_seq)` picks the answer."""

    decide: Callable[[Request, int], Action] = lambda request, attempt: None
    requests: list[Request] = field(default_factory=list)
    delivered: list[Request] = field(default_factory=list)
    url: str = ""
    port: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            Webhook(SECRET).verify(raw, headers)
            verified = True
        except Exception:
            verified = False
        body = orjson.loads(raw)
        seen = Request(
            headers.get("webhook-id", ""), body["seq"], verified, headers.get("content-type", ""), body
        )
        attempt = sum(1 for r in self.requests if r.seq == seen.seq) + 1
        self.requests.append(seen)
        action = self.decide(seen, attempt)
        if action == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if isinstance(action, tuple) and action[0] == "huge":
            response = web.StreamResponse(status=action[1])
            await response.prepare(request)
            chunk = b"x" * 65536
            try:
                for _ in range(16384):  # 1 GiB, if anyone read it all
                    await response.write(chunk)
            except (ConnectionError, RuntimeError):
                pass
            if action[1] < 300:
                self.delivered.append(seen)
            return response
        status = 200 if action is None else int(action)
        if status < 300:
            self.delivered.append(seen)
        return web.Response(status=status, text="ok" if status < 300 else f"failed {status}")

    async def until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        await until(predicate, timeout)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
