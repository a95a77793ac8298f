"""Fixtures for simulator tests: a running simulator, an API client, a webhook receiver."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from syncd.sim.clock import Clock
from syncd.sim.config import SimConfig
from syncd.sim.server import SimHandle, ThreadedServer, running_simulator

StartSim = Callable[..., SimHandle]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """start_sim(**SimConfig fields, clock=None) -> a running SimHandle, stopped after the test."""
    stack: list[AbstractContextManager[SimHandle]] = []

    def start(clock: Clock | None = None, **fields: Any) -> SimHandle:
        fields.setdefault("rate", 0)
        fields.setdefault("max_lag", 0)
        cm = running_simulator(SimConfig(**fields), clock=clock)
        handle = cm.__enter__()
        stack.append(cm)
        return handle

    yield start
    while stack:
        stack.pop().__exit__(None, None, None)


def api_client(handle: SimHandle, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=handle.base_url,
        headers={"Authorization": f"Bearer {handle.api_key}"},
        timeout=kwargs.pop("timeout", 10.0),
        **kwargs,
    )


@dataclass
class Received:
    at: float
    """time.monotonic() when the request arrived."""
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook endpoint: records every delivery; fails the first `fail_times` attempts of
    each eventId with `fail_status`."""

    fail_times: int = 0
    fail_status: int = 500
    stall: float = 0.0
    """Seconds to stall before answering a failing attempt (to provoke the sender's timeout)."""
    received: list[Received] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.base_url + "/hook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            eid = json.loads(body)["eventId"]
        except (ValueError, KeyError, TypeError):
            eid = ""
        with self._lock:
            attempt = self._seen.get(eid, 0) + 1
            self._seen[eid] = attempt
            status = self.fail_status if attempt <= self.fail_times else 200
            self.received.append(Received(time.monotonic(), dict(request.headers), body, status))
        if status != 200 and self.stall:
            await asyncio.sleep(self.stall)
        return Response(status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r.json for r in self.snapshot() if name is None or r.json["event"] == name]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.snapshot()):
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver condition not met; got {len(self.received)}")
            time.sleep(0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.server = ThreadedServer(rec.app())
    rec.server.start()
    yield rec
    rec.server.stop()


def register(client: httpx.Client, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    response = client.post("/webhooks", json={"url": url, "events": events or ["*"], **extra})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def list_all(client: httpx.Client, resource: str, **params: Any) -> list[dict[str, Any]]:
    """Every record of a listing, following cursors."""
    out: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        response = client.get(f"/{resource}", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        query = {**params, "cursor": page["next_cursor"]}
