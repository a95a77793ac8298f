"""One HTTP exchange with the Pet Store API: a deadline over the whole request, a cap on the
answer, and the answer's status mapped to the ApiError subclass that fits.

`api.timeout` covers a whole request, body included (httpx's own timeouts are per read, so
an API dripping a byte a second would never time out); a body larger than
`api.max_response` is refused while it streams in, never read whole first. Every request
first takes a token from the shared request budget (syncd.budget). A 429 carries the wait
its `Retry-After` announces (parse_retry_after); retrying is the client's (syncd.api).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson

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
)

if TYPE_CHECKING:
    from syncd.metrics import Metrics

#: A Retry-After beyond this is treated as this long: a listing must not stall for hours.
MAX_RETRY_AFTER = 300.0
DEFAULT_MAX_RESPONSE = 64 * 1024 * 1024
#: Of an error answer only the start is read: its code and message are all syncd uses.
_ERROR_BODY_LIMIT = 64 * 1024
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
_DELAY_SECONDS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


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


def _tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _error_code(response: ApiResponse) -> tuple[str | None, str]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None, response.text[:200]
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else "")


class ApiTransport:
    """The connection pool to the API and one request over it, bounded in time and size."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        budget: RequestBudget,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response: int = DEFAULT_MAX_RESPONSE,
        clock: Callable[[], float] = time.time,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.max_response = max_response
        self.budget = budget
        self.metrics = metrics
        self.stats = ApiStats()
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=base_url,
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
        self._http.headers["Authorization"] = f"Bearer {api_key}"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send_once(
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
        self._count(kind, str(response.status_code), nbytes)
        if response.status_code < 400:
            return response
        raise self._error(what, response)

    def _error(self, what: str, response: ApiResponse) -> ApiError:
        """The ApiError subclass for an error answer: what to retry, wait for or give up on."""
        status = response.status_code
        code, message = _error_code(response)
        detail = f"{what}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status in _TRANSIENT_STATUSES:
            return ApiTransientError(detail, status=status, code=code)
        if status == 429:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), date=response.headers.get("Date"), now=self._clock()
            )
            return RateLimitedError(detail, retry_after=retry_after)
        if status in (401, 403):
            return ApiAuthError(detail, status=status, code=code)
        if status == 404:
            return ApiNotFoundError(detail, status=status, code=code)
        if status == 400 and code == "cursor_expired":
            return CursorExpiredError(detail, status=status, code=code)
        return ApiError(detail, status=status, code=code)

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
