"""The admin listener's live status page.

- `GET /`: one HTML page that redraws itself every 2 s from the two documents below, without
  reloading. Every script, style and the charting library (uPlot, MIT, in `static/`) is
  served from the package, so the page works on a host with no network, and the
  Content-Security-Policy allows nothing else.
- `GET /status.json`: the `syncd status --json` document (`syncd.ops.status.STATUS_SCHEMA`),
  built by the same `collect_status` the CLI calls, from the store, in a thread (it reads
  SQLite).
- `GET /history.json`: the daemon's in-memory last 15 minutes (`syncd.history.History`):
  webhook deliveries per second and event-to-mirror latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from syncd.config import Config
from syncd.errors import StoreError
from syncd.history import History
from syncd.ops.status import collect_status
from syncd.timefmt import format_epoch

STATIC = Path(__file__).with_name("static")

#: The page loads only what syncd serves; no inline script, no other origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: Documents that change every refresh are never served from a cache.
LIVE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def store_report(config: Callable[[], Config]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The status document for the config in force now (a reload may change it)."""

    async def report() -> dict[str, Any]:
        return await asyncio.to_thread(collect_status, config())

    return report


def status_routes(
    report: Callable[[], Awaitable[dict[str, Any]]],
    history: History,
    *,
    clock: Callable[[], float] = time.time,
) -> list[BaseRoute]:
    """The page, its two documents and its assets, to mount on the admin app."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "status.html", media_type="text/html", headers=PAGE_HEADERS)

    async def status_json(request: Request) -> Response:
        try:
            body = await report()
        except StoreError as exc:
            # The page says why instead of going blank; status.json's schema is for a store
            # that can be read.
            return JSONResponse({"error": str(exc)}, status_code=503, headers=LIVE_HEADERS)
        return JSONResponse(body, headers=LIVE_HEADERS)

    async def history_json(request: Request) -> Response:
        now = clock()
        return JSONResponse({"generated_at": format_epoch(now), **history.series(now)}, headers=LIVE_HEADERS)

    return [
        Route("/", page, methods=["GET"]),
        Route("/status.json", status_json, methods=["GET"]),
        Route("/history.json", history_json, methods=["GET"]),
        Mount("/assets", StaticFiles(directory=STATIC), name="assets"),
    ]
