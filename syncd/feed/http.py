"""The `http` sink: one POST per change, signed as Standard Webhooks.

Each request carries `webhook-id: <mirror>-<seq>` (the same on every redelivery, so a
handler dedupes on it), `webhook-timestamp` (when this attempt was signed, so a receiver's
replay tolerance holds for retries hours later) and `webhook-signature: v1,<base64>`. Any
2xx delivers the change; any other status (a 3xx too: redirects are not followed), a
connection failure or the whole-request timeout fails it. The response body is read only up
to a small cap: a hostile or broken receiver must not make syncd read or hold a gigabyte.

The client is aiohttp: for the same requests it costs about a third of httpx's CPU, which is
what one sink's throughput is bound by (bench/RESULTS.md, change feed).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final

import aiohttp

from syncd.core.changes import Change
from syncd.feed.base import SinkError
from syncd.signatures import sign

_SCHEME: Final = "standard-webhooks"
#: Bytes of a response body read at most; what a receiver says fits well within it.
MAX_RESPONSE_BODY: Final = 16 * 1024
#: Characters of a failed response's body kept in the error reason.
_REASON_BODY: Final = 200


class HttpSink:
    """POSTs changes one at a time to `url`, signed with `secret` (`whsec_` + base64).

    `timeout` bounds each request as a whole (connect, send, response head and the capped
    body read). `client` lets tests or the daemon share an `aiohttp.ClientSession` (the
    caller closes it); otherwise the sink opens its own on the first delivery, inside the
    running event loop, and `aclose()` closes it. `clock` gives the signing time (epoch
    seconds)."""

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        client: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        max_response_body: int = MAX_RESPONSE_BODY,
        user_agent: str = "syncd-feed",
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"sink {name!r}: timeout must be > 0 seconds, got {timeout}")
        # Fails now, naming the sink, rather than on every delivery.
        try:
            sign(_SCHEME, secret, b"", msg_id="check", timestamp=0)
        except ValueError as exc:
            raise ValueError(f"sink {name!r}: {exc}") from None
        self._name = name
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self._clock = clock
        self._max_body = max_response_body
        self._user_agent = user_agent
        self._owns_client = client is None
        self._client = client
        self._closed = False
        # The environment's proxy for this URL, read once as the client is made.
        self._proxy: str | None = None

    @property
    def name(self) -> str:
        return self._name

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            if self._closed:
                raise RuntimeError(f"sink {self._name!r} is closed")
            self._client = aiohttp.ClientSession(
                # One request at a time per sink, so one keep-alive connection is all it needs.
                connector=aiohttp.TCPConnector(limit=1),
                # No per-phase timeouts: `_post` bounds each request as a whole.
                timeout=aiohttp.ClientTimeout(),
                # A receiver's cookies are not sent back to it.
                cookie_jar=aiohttp.DummyCookieJar(),
                # The body cap counts bytes on the wire; decompressing could inflate past it.
                auto_decompress=False,
            )
            self._proxy = env_proxy(self.url)
        return self._client

    async def deliver(self, batch: Sequence[Change]) -> None:
        for done, change in enumerate(batch):
            try:
                await self._post(change)
            except SinkError as exc:
                raise SinkError(self._name, exc.reason, delivered=done) from exc

    def headers(self, change: Change, body: bytes) -> dict[str, str]:
        """The request headers for one change (signed now)."""
        signed = sign(_SCHEME, self._secret, body, msg_id=change.webhook_id, timestamp=int(self._clock()))
        return {
            **signed,
            "content-type": "application/json",
            "user-agent": self._user_agent,
            # The body cap counts bytes on the wire; a compressed body could inflate past it.
            "accept-encoding": "identity",
        }

    async def _post(self, change: Change) -> None:
        body = change.to_json()
        headers = self.headers(change, body)
        session = self._session()
        try:
            # One bound for the request as a whole, so a receiver trickling bytes cannot hold
            # the sink for longer.
            async with asyncio.timeout(self.timeout):
                async with session.post(
                    self.url, data=body, headers=headers, allow_redirects=False, proxy=self._proxy
                ) as response:
                    status = response.status
                    text = await self._read_capped(response)
        except TimeoutError:
            raise SinkError(self._name, f"seq {change.seq}: no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SinkError(self._name, f"seq {change.seq}: {failure(exc)}") from None
        if not 200 <= status < 300:
            snippet = text[:_REASON_BODY].strip()
            reason = f"seq {change.seq}: HTTP {status}"
            raise SinkError(self._name, f"{reason}: {snippet}" if snippet else reason)

    async def _read_capped(self, response: aiohttp.ClientResponse) -> str:
        chunks: list[bytes] = []
        size = 0
        while size < self._max_body:
            chunk = await response.content.read(self._max_body - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size >= self._max_body and not response.content.at_eof():
            # Closes the connection instead of draining the rest of the body.
            response.close()
        return b"".join(chunks).decode("utf-8", "replace")

    async def aclose(self) -> None:
        self._closed = True
        if self._owns_client and self._client is not None:
            await self._client.close()

    async def __aenter__(self) -> HttpSink:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def failure(exc: BaseException) -> str:
    """A failed request's reason: what went wrong, never the request's headers (so never
    the signature or the secret). Every way of not reaching the receiver (refused, DNS,
    TLS handshake or certificate) reads `ConnectError`."""
    kind = "ConnectError" if isinstance(exc, aiohttp.ClientConnectorError) else type(exc).__name__
    detail = str(exc) or type(exc).__name__
    return f"{kind}: {detail}"


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`,
    less `NO_PROXY`), or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")
