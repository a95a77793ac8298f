"""HTTP client for the Pet Store API: listing pages, one record, webhook endpoints.

Retries: timeouts, connection failures and 5xx are retried with exponential backoff and
jitter by stamina (whose test mode makes tests never sleep); 429 waits exactly the
announced `Retry-After` through an injectable sleep; 401/403 fail at once (retrying cannot
fix a key), and so does a TLS certificate that fails verification. A listing whose cursor
expired raises CursorExpiredError: only the caller knows from where to start again.

Bounds: `api.timeout` covers a whole request, body included (httpx's own timeouts are per
read, so an API dripping a byte a second would never time out); a body larger than
`api.max_response` is refused while it streams in, never read whole first. Every request,
retries included, first takes a token from the shared request budget (syncd.budget).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import re
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson
import stamina

from syncd import jsonparse
from syncd.budget import RequestBudget, RequestKind
from syncd.errors import (
    ApiAuthError,
    ApiError,
    ApiNotFoundError,
    ApiResponseTooLargeError,
    ApiTlsError,
    ApiTransientError,
    CursorExpiredError,
    RateLimitedError,
    RecordError,
)

if TYPE_CHECKING:
    from syncd.config import Config
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

#: A Retry-After beyond this is treated as this long: a listing must not stall for hours.
MAX_RETRY_AFTER = 300.0
#: 429s in a row without a usable Retry-After wait 1, 2, 4, ... seconds, at most this long.
MAX_RATE_LIMIT_BACKOFF = 60.0
DEFAULT_MAX_RESPONSE = 64 * 1024 * 1024
#: Of an error answer only the start is read: its code and message are all syncd uses.
_ERROR_BODY_LIMIT = 64 * 1024
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
_DELAY_SECONDS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


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


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """An answer read whole within the request's deadline and size cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> Any:
        try:
            return jsonparse.loads(self.content)
        except (ValueError, RecursionError):
            raise ApiError(
                f"HTTP {self.status_code}: response is not JSON", status=self.status_code
            ) from None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def parse_retry_after(value: str | None, *, date: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header, or None when it says nothing usable (the
    caller backs off instead). Delay-seconds or an HTTP-date (RFC 9110), measured from the
    response's own `Date` when it has one so clock skew between us and the API cancels out;
    past dates wait 0, huge values MAX_RETRY_AFTER. nan, inf, negative numbers and garbage
    are not delay-seconds."""
    if value is None:
        return None
    if m := _DELAY_SECONDS_RE.match(value):
        seconds = float(m.group(1))
        return min(seconds, MAX_RETRY_AFTER) if math.isfinite(seconds) else MAX_RETRY_AFTER
    when = _http_date(value)
    if when is None:
        return None
    reference = _http_date(date) if date is not None else None
    delay = when - (reference if reference is not None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def _http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


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


def _tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _default_kind(method: str, params: Mapping[str, Any] | None) -> RequestKind:
    # Only listings send `limit`; one with `since` is an incremental poll, one without a full
    # listing (first sync, relist, verify).
    if method == "GET" and params is not None and "limit" in params:
        return "poll" if "since" in params else "relist"
    return "other"


def _error_code(response: ApiResponse) -> tuple[str | None, str]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None, response.text[:200]
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else "")


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
        self.stats = ApiStats()
        self.timeout = timeout
        self.max_response = max_response
        self.budget = budget if budget is not None else RequestBudget(rate_limit, metrics=metrics)
        if self.budget.metrics is None:
            self.budget.metrics = metrics
        self._sleep = sleep
        self._clock = clock
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
            verify=verify,
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
        await self._http.aclose()

    # -- requests ---------------------------------------------------------------------------

    async def _send_once(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        kind: RequestKind,
        on_send: Callable[[], None] | None,
    ) -> ApiResponse:
        what = f"{method} {path}"
        # Waiting for our own budget is not the API being slow: it is outside the deadline.
        await self.budget.acquire(kind)
        if on_send is not None:
            on_send()
        try:
            async with asyncio.timeout(self.timeout):
                nbytes, response = await self._receive(method, path, params, body, what)
        except TimeoutError as exc:
            self._count(kind, "timeout", 0)
            raise ApiTransientError(
                f"{what}: no answer in time, the whole request took over api.timeout ({self.timeout:g}s)"
            ) from exc
        except httpx.TimeoutException as exc:
            self._count(kind, "timeout", 0)
            raise ApiTransientError(f"{what}: no answer in time ({exc.__class__.__name__})") from exc
        except httpx.TransportError as exc:
            if (tls := _tls_failure(exc)) is not None:
                self._count(kind, "tls_error", 0)
                host = httpx.URL(self.base_url).host
                raise ApiTlsError(
                    f"{what}: the TLS certificate of {host} failed verification: "
                    f"{tls.verify_message or tls.reason or tls}"
                ) from exc
            self._count(kind, "connection_error", 0)
            raise ApiTransientError(f"{what}: connection failed ({exc.__class__.__name__}: {exc})") from exc
        except ApiResponseTooLargeError:
            self._count(kind, "too_large", 0)
            raise
        status = response.status_code
        self._count(kind, str(status), nbytes)
        if status < 400:
            return response
        code, message = _error_code(response)
        detail = f"{what}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status in _TRANSIENT_STATUSES:
            raise ApiTransientError(detail, status=status, code=code)
        if status == 429:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), date=response.headers.get("Date"), now=self._clock()
            )
            raise RateLimitedError(detail, retry_after=retry_after)
        if status in (401, 403):
            raise ApiAuthError(detail, status=status, code=code)
        if status == 404:
            raise ApiNotFoundError(detail, status=status, code=code)
        if status == 400 and code == "cursor_expired":
            raise CursorExpiredError(detail, status=status, code=code)
        raise ApiError(detail, status=status, code=code)

    async def _receive(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: Any, what: str
    ) -> tuple[int, ApiResponse]:
        """Send and stream the answer in, refusing it past max_response. Returns the bytes
        received on the wire (compressed) and the answer (decoded)."""
        request = self._http.build_request(method, path, params=params, json=body)
        response = await self._http.send(request, stream=True)
        try:
            limit = self.max_response if response.status_code < 400 else _ERROR_BODY_LIMIT
            declared = response.headers.get("Content-Length", "")
            if response.status_code < 400 and declared.isdigit() and int(declared) > limit:
                raise ApiResponseTooLargeError(what, limit, declared=int(declared))
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    if response.status_code >= 400:
                        chunks.append(chunk[: len(chunk) - (size - limit)])
                        break
                    raise ApiResponseTooLargeError(what, limit)
                chunks.append(chunk)
            return response.num_bytes_downloaded, ApiResponse(
                response.status_code, response.headers, b"".join(chunks)
            )
        finally:
            await response.aclose()

    def _count(self, kind: RequestKind, status: str, nbytes: int) -> None:
        self.stats.requests += 1
        self.stats.bytes_received += nbytes
        if self.metrics is not None:
            self.metrics.api_requests.labels(kind=kind, status=status).inc()
            self.metrics.api_bytes.inc(nbytes)

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
                return await self._send_once(method, path, params, body, kind, on_send)
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
