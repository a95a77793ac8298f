"""HTTP client for the Pet Store API: listing pages, one record, webhook endpoints.

Retries: timeouts, connection failures and 5xx are retried with exponential backoff and
jitter by stamina (whose test mode makes tests never sleep); 429 waits exactly the
announced `Retry-After` through an injectable sleep; 401/403 fail at once (retrying cannot
fix a key). A listing whose cursor expired raises CursorExpiredError: only the caller knows
from where to start again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import stamina

from syncd.errors import (
    ApiAuthError,
    ApiError,
    ApiNotFoundError,
    ApiTransientError,
    CursorExpiredError,
    RateLimitedError,
)

if TYPE_CHECKING:
    from syncd.config import Config
    from syncd.metrics import Metrics

log = logging.getLogger("syncd.api")

Sleep = Callable[[float], Awaitable[None]]

#: A Retry-After beyond this is treated as this long: a listing must not stall for hours.
MAX_RETRY_AFTER = 300.0
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Page:
    records: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None
    #: The response's `Date` header: the API's clock, to judge records stamped in the future.
    date: str | None = None


@dataclass(slots=True)
class ApiStats:
    """Plain counters of one client (the demo compares them between push and poll)."""

    requests: int = 0
    bytes_received: int = 0
    retries: int = 0
    rate_limited: int = 0


def _retry_after(value: str | None) -> float:
    # The contract sends seconds; an HTTP-date or garbage falls back to one second.
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_code(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
        err = body.get("error", {}) if isinstance(body, dict) else {}
        code = err.get("code") if isinstance(err, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        return (code if isinstance(code, str) else None), (message if isinstance(message, str) else "")
    except ValueError:
        return None, response.text[:200]


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self.retry_attempts = retry_attempts
        self.max_rate_limited = max_rate_limited
        self.stats = ApiStats()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            transport=transport,
            follow_redirects=False,
        )

    def set_api_key(self, api_key: str) -> None:
        """Send `api_key` from the next request on (a reload after the key was rotated)."""
        self._http.headers["Authorization"] = f"Bearer {api_key}"

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
        await self._http.aclose()

    # -- requests ---------------------------------------------------------------------------

    async def _send_once(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: Any
    ) -> httpx.Response:
        what = f"{method} {path}"
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except httpx.TimeoutException as exc:
            self._count("timeout", 0)
            raise ApiTransientError(f"{what}: no answer in time ({exc.__class__.__name__})") from exc
        except httpx.TransportError as exc:
            self._count("connection_error", 0)
            raise ApiTransientError(f"{what}: connection failed ({exc.__class__.__name__}: {exc})") from exc
        status = response.status_code
        self._count(str(status), response.num_bytes_downloaded)
        if status < 400:
            return response
        code, message = _error_code(response)
        detail = f"{what}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status in _TRANSIENT_STATUSES:
            raise ApiTransientError(detail, status=status, code=code)
        if status == 429:
            raise RateLimitedError(detail, retry_after=_retry_after(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise ApiAuthError(detail, status=status, code=code)
        if status == 404:
            raise ApiNotFoundError(detail, status=status, code=code)
        if status == 400 and code == "cursor_expired":
            raise CursorExpiredError(detail, status=status, code=code)
        raise ApiError(detail, status=status, code=code)

    def _count(self, status: str, nbytes: int) -> None:
        self.stats.requests += 1
        self.stats.bytes_received += nbytes
        if self.metrics is not None:
            self.metrics.api_requests.labels(status=status).inc()
            self.metrics.api_bytes.inc(nbytes)

    async def _send_retrying(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: Any
    ) -> httpx.Response:
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
                return await self._send_once(method, path, params, body)
        raise AssertionError("stamina.retry_context ended without an attempt")  # pragma: no cover

    async def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None
    ) -> httpx.Response:
        """One request with the retry policy; raises the ApiError subclass that fits."""
        waited = 0
        while True:
            try:
                return await self._send_retrying(method, path, params, body)
            except RateLimitedError as exc:
                waited += 1
                self.stats.rate_limited += 1
                if waited > self.max_rate_limited:
                    raise
                log.info("%s %s: rate limited, waiting %.1f s as asked", method, path, exc.retry_after)
                await self._sleep(exc.retry_after)

    # -- listing ----------------------------------------------------------------------------

    async def fetch_page(self, resource: str, *, since: str | None, limit: int, cursor: str | None) -> Page:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        if cursor is not None:
            params["cursor"] = cursor
        response = await self.request("GET", f"/{resource}", params=params)
        try:
            # Listing pages are the bulk of a sync; orjson parses them about twice as fast.
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
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

    async def get_record(self, resource: str, record_id: int | str) -> dict[str, Any] | None:
        """The record, or None when the API says it does not exist."""
        try:
            response = await self.request("GET", f"/{resource}/{record_id}")
        except ApiNotFoundError:
            return None
        record = response.json()
        if not isinstance(record, dict):
            raise ApiError(
                f"GET /{resource}/{record_id}: expected a JSON object", status=response.status_code
            )
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
        await self.request("DELETE", f"/webhooks/{webhook_id}")
