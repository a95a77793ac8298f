"""The simulator's HTTP face: the Pet Store API of petstore-api.md, plus /_sim/* for tests.

API faults (hang, 429, 5xx, 403 scope) apply to the resource routes only: GET /{resource} and
GET /{resource}/{id}. Webhook management and /_sim/* always behave, so a test or the demo can
set up and inspect the shop whatever faults it injects. /_sim/* needs no API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from syncd.contract import EVENTS, RESOURCES
from syncd.errors import ConfigError
from syncd.sim.clock import now_ms, parse_rfc3339_ms
from syncd.sim.config import FIVE_XX
from syncd.sim.cursor import Cursor, CursorError
from syncd.sim.simulator import Simulator

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CODES = {
    400: "invalid_parameters",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
_JSON = "application/json"
Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")).encode(), status, media_type=_JSON)


def error(status: int, message: str, code: str | None = None, **headers: str) -> Response:
    body = {"error": {"code": code or _CODES[status], "message": message}}
    response = json_response(body, status)
    response.headers.update(headers)
    return response


class _BadRequest(ValueError):
    def __init__(self, message: str, code: str = "invalid_parameters") -> None:
        super().__init__(message)
        self.code = code


def create_app(sim: Simulator) -> Starlette:
    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {sim.api_key}".encode())

    async def faults_for(request: Request, resource: str) -> Response | None:
        faults = sim.faults
        rng = sim.fault_rng
        if faults.api_hang_rate and rng.random() < faults.api_hang_rate:
            sim.stats.api_faults["hang"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sim.shutting_down.wait(), faults.hang_seconds)
        if resource in faults.forbidden_resources:
            return error(403, f"the API key lacks the scope to read {resource}")
        if faults.api_429_rate and rng.random() < faults.api_429_rate:
            sim.stats.api_faults["429"] += 1
            return error(429, "too many requests, slow down", **{"Retry-After": str(faults.retry_after)})
        if faults.api_5xx_rate and rng.random() < faults.api_5xx_rate:
            status = rng.choice(FIVE_XX)
            sim.stats.api_faults["5xx"] += 1
            return error(status, f"transient upstream failure ({status})")
        return None

    def api(route: str, *, resource_route: bool) -> Callable[[Endpoint], Endpoint]:
        """Auth, faults (resource routes) and request counting around an API endpoint."""

        def wrap(handler: Endpoint) -> Endpoint:
            async def endpoint(request: Request) -> Response:
                label = route
                resource = request.path_params.get("resource", "")
                if resource in RESOURCES:
                    label = route.replace("{resource}", resource)
                response: Response | None = None
                if resource_route and resource in RESOURCES:
                    response = await faults_for(request, resource)
                if response is None and not authorized(request):
                    response = error(401, "missing or invalid API key")
                    response.headers["WWW-Authenticate"] = "Bearer"
                if response is None:
                    try:
                        response = await handler(request)
                    except _BadRequest as exc:
                        response = error(400, str(exc), exc.code)
                sim.stats.request(label, response.status_code, len(response.body))
                return response

            return endpoint

        return wrap

    @api("GET /{resource}", resource_route=True)
    async def list_records(request: Request) -> Response:
        resource = request.path_params["resource"]
        if resource not in RESOURCES:
            return error(404, f"unknown resource {resource!r}")
        params = request.query_params
        limit_text = params.get("limit")
        limit = _parse_limit(limit_text)
        since_text = params.get("since")
        since_ms = _parse_since(since_text) if since_text is not None else None
        after: tuple[int, Any] | None = None
        now = now_ms(sim.clock)
        cursor_text = params.get("cursor")
        if cursor_text:
            given_limit = None if limit_text is None else limit
            cursor = _check_cursor(sim, cursor_text, resource, since_ms, given_limit, now)
            since_ms, limit = cursor.since_ms, cursor.limit
            after = (cursor.last_ms, cursor.last_id)
        table = sim.tables[resource]
        table.promote(sim.clock.now())
        size = limit
        faults = sim.faults
        if limit > 1 and faults.short_page_rate and sim.fault_rng.random() < faults.short_page_rate:
            size = sim.fault_rng.randint(1, limit - 1)
            sim.stats.api_faults["short_page"] += 1
        page = table.page(since_ms=since_ms, after=after, limit=size)
        next_cursor = b"null"
        if page.has_more and page.last is not None:
            token = sim.cursors.encode(Cursor(resource, *page.last, since_ms, limit, now))
            next_cursor = b'"' + token.encode() + b'"'
        body = b"".join(
            (
                b'{"data":[',
                b",".join(page.bodies),
                b'],"has_more":',
                b"true" if page.has_more else b"false",
                b',"next_cursor":',
                next_cursor,
                b"}",
            )
        )
        return Response(body, 200, media_type=_JSON)

    @api("GET /{resource}/{id}", resource_route=True)
    async def get_record(request: Request) -> Response:
        resource = request.path_params["resource"]
        if resource not in RESOURCES:
            return error(404, f"unknown resource {resource!r}")
        table = sim.tables[resource]
        raw_id = request.path_params["id"]
        rid = table.parse_id(raw_id)
        body = None if rid is None else table.get(rid)
        if body is None:
            return error(404, f"{resource} {raw_id!r} does not exist")
        return Response(body, 200, media_type=_JSON)

    @api("POST /webhooks", resource_route=False)
    async def create_webhook(request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
        except ValueError:
            raise _BadRequest("the body is not JSON") from None
        if not isinstance(payload, dict):
            raise _BadRequest("the body must be a JSON object")
        url = payload.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _BadRequest(f"url must be an http(s) URL, got {url!r}")
        events = payload.get("events")
        if not isinstance(events, list) or not events:
            raise _BadRequest("events must be a non-empty list of event names")
        unknown = [e for e in events if e not in EVENTS and e != "*"]
        if unknown:
            raise _BadRequest(f"unknown events {unknown}; valid: {', '.join(EVENTS)}")
        secret = payload.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise _BadRequest("secret must be a non-empty string")
        endpoint = sim.webhooks.register(
            url, tuple(events), secret=secret, thin=bool(payload.get("thin", False))
        )
        return json_response({**endpoint.public(), "secret": endpoint.secret}, 201)

    @api("GET /webhooks", resource_route=False)
    async def list_webhooks(request: Request) -> Response:
        return json_response({"data": [e.public() for e in sim.webhooks.endpoints.values()]})

    @api("DELETE /webhooks/{id}", resource_route=False)
    async def delete_webhook(request: Request) -> Response:
        wid = request.path_params["id"]
        if not sim.webhooks.unregister(wid):
            return error(404, f"webhook endpoint {wid!r} does not exist")
        return Response(status_code=204)

    async def sim_state(request: Request) -> Response:
        resource = request.query_params.get("resource")
        if resource is not None and resource not in RESOURCES:
            return error(404, f"unknown resource {resource!r}")
        return json_response(sim.truth(resource))

    async def sim_stats(request: Request) -> Response:
        return json_response(sim.stats.snapshot())

    async def sim_acked(request: Request) -> Response:
        return json_response(sim.stats.acked_ids())

    async def sim_idle(request: Request) -> Response:
        return json_response(sim.idle_status())

    async def sim_control(request: Request) -> Response:
        try:
            command = json.loads(await request.body())
            if not isinstance(command, dict):
                raise ValueError("the body must be a JSON object")
            return json_response(await sim.control(command))
        except (ValueError, TypeError) as exc:
            message = str(exc) if isinstance(exc, ConfigError) else f"bad control request: {exc}"
            return error(400, message)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    routes = [
        Route("/_sim/state", sim_state, methods=["GET"]),
        Route("/_sim/stats", sim_stats, methods=["GET"]),
        Route("/_sim/idle", sim_idle, methods=["GET"]),
        Route("/_sim/acked", sim_acked, methods=["GET"]),
        Route("/_sim/control", sim_control, methods=["POST"]),
        Route("/webhooks", list_webhooks, methods=["GET"]),
        Route("/webhooks", create_webhook, methods=["POST"]),
        Route("/webhooks/{id}", delete_webhook, methods=["DELETE"]),
        Route("/{resource}", list_records, methods=["GET"]),
        Route("/{resource}/{id}", get_record, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise _BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def _parse_since(text: str) -> int:
    try:
        return parse_rfc3339_ms(text)
    except ValueError:
        raise _BadRequest(
            f"since must be an RFC 3339 timestamp like 2024-01-15T10:30:00.123Z, got {text!r}"
        ) from None


def _check_cursor(
    sim: Simulator,
    text: str,
    resource: str,
    since_ms: int | None,
    limit: int | None,
    now: int,
) -> Cursor:
    """Decode a cursor and check it belongs to this listing and is still alive.

    `since` and `limit` may be repeated (as the contract asks) or left out (the cursor
    remembers them); repeated with other values they are an error.
    """
    try:
        cursor = sim.cursors.decode(text)
    except (CursorError, ValueError, TypeError):
        raise _BadRequest(f"cursor {text[:40]!r} is malformed") from None
    if cursor.resource != resource:
        raise _BadRequest(f"cursor was issued for {cursor.resource}, not {resource}")
    if since_ms is not None and since_ms != cursor.since_ms:
        raise _BadRequest("since differs from the listing the cursor belongs to")
    if limit is not None and limit != cursor.limit:
        raise _BadRequest("limit differs from the listing the cursor belongs to")
    ttl_ms = sim.config.cursor_ttl * 1000
    rate = sim.faults.cursor_expire_rate
    if ttl_ms and now - cursor.issued_ms > ttl_ms:
        raise _BadRequest("the cursor has expired; start the listing again", "cursor_expired")
    if rate and sim.fault_rng.random() < rate:
        sim.stats.api_faults["cursor_expired"] += 1
        raise _BadRequest("the cursor has expired; start the listing again", "cursor_expired")
    return cursor
