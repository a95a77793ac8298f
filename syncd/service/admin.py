"""The admin listener: /healthz, /readyz, /metrics, and the status page (syncd.service.status_page).
Loopback by default, never the public one.

- /healthz: the process and its event loop answer (200).
- /readyz: the store is open and takes commits, and the mirror is fresh: the last successful poll is within
  `READY_FACTOR` times the current poll interval (plus slack); in push mode a recent webhook
  counts as well, since healthy push polls only at the long safety interval. 200, or 503 with
  a JSON reason.
- /metrics: Prometheus text exposition of the daemon's `Metrics` registry.

`AdminProbe` gathers the inputs of both from the running daemon.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from syncd.errors import StoreClosedError
from syncd.metrics import Metrics
from syncd.push.inbox import Inbox
from syncd.service.modes import ModeControl
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.timefmt import try_epoch

#: A sync older than this many poll intervals (plus slack) makes the daemon not ready.
READY_FACTOR = 3.0
READY_SLACK = 30.0


@dataclass(frozen=True, slots=True)
class ReadinessInputs:
    """What readiness is judged on; the daemon gathers it (timestamps are epoch seconds)."""

    store_open: bool
    mode: str
    interval: float
    last_success_at: float | None
    last_webhook_at: float | None
    #: Why the store cannot take writes right now (commits failing, file replaced), if so.
    store_problem: str | None = None
    #: The inbox's unapplied deliveries and their bytes (None: no inbox), and whether they
    #: are at `webhook.max_backlog`/`max_backlog_bytes` (new deliveries answered 503).
    inbox_depth: int | None = None
    inbox_bytes: int | None = None
    backlog_full: bool = False


def judge_readiness(
    inputs: ReadinessInputs, now: float, *, factor: float = READY_FACTOR, slack: float = READY_SLACK
) -> tuple[bool, str]:
    """(ready, reason). Pure, so the bounds are tested without waiting."""
    if not inputs.store_open:
        return False, "store is not open"
    if inputs.store_problem is not None:
        return False, inputs.store_problem
    if inputs.backlog_full:
        return False, (
            f"inbox backlog full ({inputs.inbox_depth} deliveries, {inputs.inbox_bytes} bytes not yet"
            " applied): new deliveries are answered 503"
        )
    bound = factor * inputs.interval + slack
    recent = [
        (what, at)
        for what, at in (("poll", inputs.last_success_at), ("webhook", inputs.last_webhook_at))
        if at is not None and (what == "poll" or inputs.mode == "push")
    ]
    if not recent:
        return False, "no successful sync yet"
    what, at = max(recent, key=lambda item: item[1])
    age = now - at
    if age > bound:
        return False, f"last successful {what} was {age:.1f}s ago, more than {bound:g}s"
    return True, f"last successful {what} {age:.1f}s ago"


def create_admin_app(
    metrics: Metrics,
    readiness: Callable[[], Awaitable[ReadinessInputs]],
    *,
    refresh: Callable[[], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.time,
    slack: float = READY_SLACK,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """`readiness` gathers the inputs of /readyz; `refresh`, when given, updates gauges that
    are sampled rather than counted (cursor lag, inbox depth) just before a scrape; `routes`
    are served beside them (the status page)."""

    async def ready() -> dict[str, Any]:
        inputs = await readiness()
        ready, reason = judge_readiness(inputs, clock(), slack=slack)
        body: dict[str, Any] = {"ready": ready, "reason": reason, "mode": inputs.mode}
        if inputs.inbox_depth is not None:
            body["inbox_depth"], body["inbox_bytes"] = inputs.inbox_depth, inputs.inbox_bytes
        return body

    return probe_app(metrics, ready, refresh=refresh, routes=routes)


def probe_app(
    metrics: Metrics,
    ready: Callable[[], Awaitable[dict[str, Any]]],
    *,
    refresh: Callable[[], Awaitable[None]] | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """/healthz, /readyz and /metrics of a syncd process (`syncd run`, `syncd receive`), plus
    `routes`. `ready()` gives /readyz's JSON body: 200 when its "ready" is true, else 503;
    `refresh()` runs before each scrape."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        body = await ready()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    async def metrics_endpoint(request: Request) -> Response:
        if refresh is not None:
            await refresh()
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *routes,
        ]
    )


def _cursor_snapshot(store: Store, resources: tuple[str, ...]) -> dict[str, tuple[str | None, float | None]]:
    out: dict[str, tuple[str | None, float | None]] = {}
    for name in resources:
        state = store.cursor_state(name)
        out[name] = (state.cursor, state.last_success_at)
    return out


class AdminProbe:
    """Gathers from the running parts what /readyz judges and /metrics samples."""

    def __init__(
        self,
        resources: Sequence[str],
        writer: Writer,
        modes: ModeControl,
        metrics: Metrics,
        *,
        inbox: Inbox | None,
        store_lost: Callable[[], str | None],
    ) -> None:
        """`inbox`: None in poll mode. `store_lost`: why the store file is no longer the
        one the daemon writes, once it is not."""
        self._resources = tuple(resources)
        self._writer = writer
        self._modes = modes
        self._metrics = metrics
        self._inbox = inbox
        self._store_lost = store_lost
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def add_refresh(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Another part's gauges to sample with the probe's (the change feed's)."""
        self._refreshers.append(refresh)

    async def readiness(self) -> ReadinessInputs:
        modes = self._modes
        try:
            snapshot = await self._writer.run(_cursor_snapshot, self._resources)
        except StoreClosedError:
            return ReadinessInputs(False, modes.mode, modes.interval, None, None)
        successes = [s for _, s in snapshot.values()]
        oldest = None if any(s is None for s in successes) else min(s for s in successes if s is not None)
        inbox = self._inbox
        webhook = inbox.last_delivery_at if inbox is not None else None
        backlog = inbox.backlog if inbox is not None else None
        return ReadinessInputs(
            True,
            modes.mode,
            modes.interval,
            oldest,
            webhook,
            self._store_problem(successes),
            inbox_depth=None if backlog is None else backlog.depth,
            inbox_bytes=None if backlog is None else backlog.bytes,
            backlog_full=backlog is not None and backlog.full,
        )

    def _store_problem(self, poll_successes: list[float | None]) -> str | None:
        """Why the store is not taking writes, if it is not: deliveries refused since their
        last commit failed (until a commit, a delivery's or a poll's, succeeds again)."""
        lost = self._store_lost()
        if lost is not None:
            return lost
        inbox = self._inbox
        if inbox is None or inbox.last_failure_at is None:
            return None
        failed = inbox.last_failure_at
        if any(s is not None and s > failed for s in poll_successes):
            return None
        return f"webhook deliveries cannot be committed: {inbox.last_failure}"

    async def refresh_gauges(self) -> None:
        """Cursor lag, sampled from the store, and the gauges of `add_refresh`."""
        for refresh in self._refreshers:
            await refresh()
        try:
            snapshot = await self._writer.run(_cursor_snapshot, self._resources)
        except StoreClosedError:
            return
        now = time.time()
        for name, (cursor, _) in snapshot.items():
            # A cursor that is no instant (an older syncd's) is dropped by the next poll.
            cursor_at = try_epoch(cursor)
            if cursor_at is not None:
                lag = max(0.0, now - cursor_at)
                self._modes.lags[name] = lag
                self._metrics.cursor_lag.labels(resource=name).set(lag)
