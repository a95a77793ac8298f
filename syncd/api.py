"""Client of the Pet Store API: listing pages, one record, webhook endpoints.

Retries: timeouts, connection failures and 5xx are retried with exponential backoff and
jitter by stamina (whose test mode makes tests never sleep); 429 waits exactly the
announced `Retry-After` through an injectable sleep; 401/403 fail at once (retrying cannot
fix a key), and so does a TLS certificate that fails verification. A listing whose cursor
expired raises CursorExpiredError: only the caller knows from where to start again.
Deadlines, size caps and the request budget are syncd.api_transport's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import stamina

from syncd import jsonparse
from syncd.api_transport import DEFAULT_MAX_RESPONSE, ApiResponse, ApiTransport
from syncd.budget import RequestBudget, RequestKind
from syncd.errors import (
    ApiAuthError,
    ApiError,
    ApiNotFoundError,
    ApiTransientError,
    RateLimitedError,
    RecordError,
)

if TYPE_CHECKING:
    from syncd.config import Config
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

#: 429s in a row without a usable Retry-After wait 1, 2, 4, ... seconds, at most this long.
MAX_RATE_LIMIT_BACKOFF = 60.0


@dataclass(frozen=True, slots=True)
class Page:
    records: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None
    #: The response's `Date` header: the API's clock, to judge records stamped in the future.
    date: str | None = None


def record_path(resource: str, record_id: int | str) -> str:
    """`/{resource}/{id}` with the id as one opaque path segment: every character outside
    RFC 3986's unreserved set is percent-encoded (`/`, `?`, `#`, `%` included), and the dot
    segments `.` and `..` are encoded too, so no id can reach another path or carry a
    query. Raises RecordError for an id that is not valid Unicode text."""
    text = str(record_id)
    try:
        segment = quote(text, safe="", errors="strict")
    except UnicodeEncodeError:
        raise RecordError(f"id {text!r} cannot be sent in a URL", resource=resource) from None
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return f"/{resource}/{segment}"


def _default_kind(method: str, params: Mapping[str, Any] | None) -> RequestKind:
    # Only listings send `limit`; one with `since` is an incremental poll, one without a full
    # listing (first sync, relist, verify).
    if method == "GET" and params is not None and "limit" in params:
        return "poll" if "since" in params else "relist"
    return "other"


class PetstoreClient:
    """One keep-alive connection pool to the API, shared by the poller, thin-event fetches
    and the webhook commands."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10,
        connect_timeout: float = 5,
        max_connections: int = 10,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_attempts: int = 6,
        max_rate_limited: int = 20,
        sleep: Sleep = asyncio.sleep,
        max_response: int = DEFAULT_MAX_RESPONSE,
        rate_limit: float | None = None,
        budget: RequestBudget | None = None,
        clock: Callable[[], float] = time.time,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self.retry_attempts = retry_attempts
        self.max_rate_limited = max_rate_limited
        self.budget = budget if budget is not None else RequestBudget(rate_limit, metrics=metrics)
        if self.budget.metrics is None:
            self.budget.metrics = metrics
        self._sleep = sleep
        self._transport = ApiTransport(
            self.base_url,
            api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            budget=self.budget,
            metrics=metrics,
            transport=transport,
            max_response=max_response,
            clock=clock,
            verify=verify,
        )
        self.stats = self._transport.stats

    def set_api_key(self, api_key: str) -> None:
        """Send `api_key` from the next request on (a reload after the key was rotated)."""
        self._transport.set_api_key(api_key)

    @classmethod
    def from_config(cls, cfg: Config, metrics: Metrics | None = None) -> PetstoreClient:
        if not cfg.secrets.api_key:
            raise ApiAuthError(f"no API key configured for {cfg.api.base_url}")
        return cls(
            cfg.api.base_url,
            cfg.secrets.api_key,
            timeout=cfg.api.timeout,
            connect_timeout=cfg.api.connect_timeout,
            max_connections=cfg.api.max_connections,
            metrics=metrics,
            max_response=cfg.api.max_response,
            rate_limit=cfg.api.rate_limit,
        )

    async def __aenter__(self) -> PetstoreClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.budget.close()
        await self._transport.aclose()

    # -- requests ---------------------------------------------------------------------------

    async def _send_retrying(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        kind: RequestKind,
        on_send: Callable[[], None] | None,
    ) -> ApiResponse:
        first = True
        async for attempt in stamina.retry_context(
            on=ApiTransientError,
            attempts=self.retry_attempts,
            timeout=None,
            wait_initial=0.5,
            wait_max=30.0,
            wait_jitter=1.0,
        ):
            with attempt:
                if not first:
                    self.stats.retries += 1
                first = False
                return await self._transport.send_once(method, path, params, body, kind, on_send)
        raise AssertionError("stamina.retry_context ended without an attempt")  # pragma: no cover

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        kind: RequestKind | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> ApiResponse:
        """One request with the retry policy; raises the ApiError subclass that fits.
        `on_send` is called each time an attempt goes out (after any wait for the budget)."""
        kind = kind or _default_kind(method, params)
        waited = 0
        while True:
            try:
                return await self._send_retrying(method, path, params, body, kind, on_send)
            except RateLimitedError as exc:
                waited += 1
                self.stats.rate_limited += 1
                if waited > self.max_rate_limited:
                    raise
                if exc.retry_after is None:
                    delay = min(MAX_RATE_LIMIT_BACKOFF, 2.0 ** (waited - 1))
                    log.info(
                        "%s %s: rate limited without a usable Retry-After, backing off %.1f s",
                        method,
                        path,
                        delay,
                    )
                else:
                    delay = exc.retry_after
                    log.info("%s %s: rate limited, waiting %.1f s as asked", method, path, delay)
                # Every request of this key waits, not only this one.
                with self.budget.held():
                    await self._sleep(delay)

    # -- listing ----------------------------------------------------------------------------

    async def fetch_page(self, resource: str, *, since: str | None, limit: int, cursor: str | None) -> Page:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        if cursor is not None:
            params["cursor"] = cursor
        response = await self.request("GET", f"/{resource}", params=params)
        try:
            # Exactly as the standard parser reads it, so one record with a NaN, a lone
            # surrogate or a huge integer fails alone (a dead letter), not the whole page.
            payload = jsonparse.loads(response.content)
        except (ValueError, RecursionError) as exc:
            raise ApiError(f"GET /{resource}: response is not JSON", status=response.status_code) from exc
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ApiError(f"GET /{resource}: response has no 'data' list", status=response.status_code)
        has_more = bool(payload.get("has_more"))
        next_cursor = payload.get("next_cursor")
        if has_more and not isinstance(next_cursor, str):
            raise ApiError(f"GET /{resource}: has_more without a next_cursor", status=response.status_code)
        return Page(data, has_more, next_cursor if has_more else None, response.headers.get("date"))

    async def list_pages(self, resource: str, *, since: str | None, limit: int) -> AsyncGenerator[Page, None]:
        """Every page of one listing, in order. The next page is fetched while the caller works
        on the current one, never further ahead, so memory holds at most two pages."""
        page = await self.fetch_page(resource, since=since, limit=limit, cursor=None)
        while True:
            ahead: asyncio.Task[Page] | None = None
            if page.has_more:
                ahead = asyncio.create_task(
                    self.fetch_page(resource, since=since, limit=limit, cursor=page.next_cursor)
                )
            try:
                yield page
            except BaseException:
                # The consumer stopped early (break, aclose, an error): drop the prefetch.
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
                raise
            if ahead is None:
                return
            page = await ahead

    # -- one record -------------------------------------------------------------------------

    async def get_record(
        self, resource: str, record_id: int | str, *, on_send: Callable[[], None] | None = None
    ) -> dict[str, Any] | None:
        """The record, or None when the API says it does not exist. The id is sent as one
        escaped path segment (record_path)."""
        path = record_path(resource, record_id)
        try:
            response = await self.request("GET", path, kind="fetch", on_send=on_send)
        except ApiNotFoundError:
            return None
        try:
            record = response.json()
        except ApiError:
            raise ApiError(f"GET {path}: response is not JSON", status=response.status_code) from None
        if not isinstance(record, dict):
            raise ApiError(f"GET {path}: expected a JSON object", status=response.status_code)
        return record

    # -- webhook endpoints ------------------------------------------------------------------

    async def register_webhook(self, url: str, events: list[str]) -> dict[str, Any]:
        response = await self.request("POST", "/webhooks", body={"url": url, "events": events})
        endpoint = response.json()
        if not isinstance(endpoint, dict):
            raise ApiError("POST /webhooks: expected a JSON object", status=response.status_code)
        return endpoint

    async def list_webhooks(self) -> list[dict[str, Any]]:
        response = await self.request("GET", "/webhooks")
        payload = response.json()
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ApiError("GET /webhooks: response has no 'data' list", status=response.status_code)
        return data

    async def delete_webhook(self, webhook_id: str) -> None:
        await self.request("DELETE", f"/webhooks/{quote(webhook_id, safe='')}")
