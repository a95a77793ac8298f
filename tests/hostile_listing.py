"""A small listing API over loopback that follows the contract except for one chosen fault.

Records are held with the instant the server orders them by, given by the test and not
derived from their `updatedAt` (which may be no instant at all), so the server never shares
syncd's timestamp parser. Faults: a `Date` header of any value or none, a next_cursor that
repeats from a given page on, and whatever records the test puts in.
"""

from __future__ import annotations

import contextlib
import email.utils
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from syncd.sim.server import ThreadedServer

API_KEY = "hostile-key"


@dataclass
class Listing:
    """What the server lists, per resource: (instant it orders by, record as sent)."""

    records: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    #: Epoch seconds sent as the Date header; None sends no Date header at all.
    date: float | None = None
    #: From this page index on (0 = first page), next_cursor is the cursor that fetched the
    #: page: the listing loops on one page forever.
    loop_at: int | None = None
    #: Most records per page whatever the limit (the contract lets a page hold fewer).
    page_cap: int | None = None
    #: (resource, query parameters) of every listing request.
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, resource: str, at: float, record: dict[str, Any]) -> None:
        with self.lock:
            rows = [r for r in self.records.get(resource, []) if r[1]["id"] != record["id"]]
            rows.append((at, record))
            self.records[resource] = rows

    def remove(self, resource: str, ids: set[Any]) -> None:
        with self.lock:
            self.records[resource] = [r for r in self.records.get(resource, []) if r[1]["id"] not in ids]


def _since(text: str) -> float:
    # The client sends its own normalized form (UTC, milliseconds, Z); anything else is a 400.
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def create_app(listing: Listing) -> Starlette:
    async def list_records(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"code": "unauthorized", "message": "bad key"}}, 401)
        resource = request.path_params["resource"]
        params = dict(request.query_params)
        limit = int(params.get("limit", "100"))
        if listing.page_cap is not None:
            limit = min(limit, listing.page_cap)
        try:
            since = _since(params["since"]) if "since" in params else None
        except ValueError:
            return JSONResponse({"error": {"code": "invalid_parameters", "message": "since"}}, 400)
        cursor = params.get("cursor")
        offset = int(cursor.removeprefix("c_")) if cursor else 0
        with listing.lock:
            listing.requests.append((resource, params))
            rows = sorted(listing.records.get(resource, []), key=lambda r: (r[0], str(r[1]["id"])))
            loop_at = listing.loop_at
            date = listing.date
        if since is not None:
            rows = [r for r in rows if r[0] >= since]
        page = rows[offset : offset + limit]
        has_more = offset + limit < len(rows)
        next_cursor = f"c_{offset + limit}" if has_more else None
        if has_more and loop_at is not None and offset >= loop_at * limit:
            next_cursor = f"c_{offset}"
        body = {"data": [r[1] for r in page], "has_more": has_more, "next_cursor": next_cursor}
        headers = {} if date is None else {"Date": email.utils.formatdate(date, usegmt=True)}
        return JSONResponse(body, headers=headers)

    return Starlette(routes=[Route("/{resource}", list_records)])


@contextlib.contextmanager
def running_hostile_api(listing: Listing) -> Iterator[str]:
    """Serve `listing` on 127.0.0.1; yields the base URL."""
    server = ThreadedServer(create_app(listing))
    # The Date header is the test's to set or leave out, not the server's own clock.
    server._server.config.date_header = False
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()
