"""The admin listener: /healthz, /readyz, /metrics. Loopback by default, never the public one.

- /healthz: the process and its event loop answer (200).
- /readyz: the store is open and takes commits, and the mirror is fresh: the last successful poll is within
  `READY_FACTOR` times the current poll interval (plus slack); in push mode a recent webhook
  counts as well, since healthy push polls only at the long safety interval. 200, or 503 with
  a JSON reason.
- /metrics: Prometheus text exposition of the daemon's `Metrics` registry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from syncd.metrics import Metrics

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


def judge_readiness(
    inputs: ReadinessInputs, now: float, *, factor: float = READY_FACTOR, slack: float = READY_SLACK
) -> tuple[bool, str]:
    """(ready, reason). Pure, so the bounds are tested without waiting."""
    if not inputs.store_open:
        return False, "store is not open"
    if inputs.store_problem is not None:
        return False, inputs.store_problem
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
) -> Starlette:
    """`readiness` gathers the inputs of /readyz; `refresh`, when given, updates gauges that
    are sampled rather than counted (cursor lag, inbox depth) just before a scrape."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        inputs = await readiness()
        ready, reason = judge_readiness(inputs, clock(), slack=slack)
        body = {"ready": ready, "reason": reason, "mode": inputs.mode}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        if refresh is not None:
            await refresh()
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
