"""The `http` sink: one POST per change, signed as Standard Webhooks.

Each request carries `webhook-id: <mirror>-<seq>` (the same on every redelivery, so a
handler dedupes on it), `webhook-timestamp` (when this attempt was signed, so a receiver's
replay tolerance holds for retries hours later) and `webhook-signature: v1,<base64>`. Any
2xx delivers the change; any other status, a connection failure or the whole-request
timeout fails it. The response body is read only up to a small cap: a hostile or broken
receiver must not make syncd read or hold a gigabyte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final

import httpx

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
    body read). `client` lets tests or the daemon share a client; otherwise the sink owns
    one and `aclose()` closes it. `clock` gives the signing time (epoch seconds)."""

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
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
        # One request at a time per sink, so one connection is all it needs; redirects are
        # failures (a sink URL that moved is a config error, not something to follow).
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            follow_redirects=False,
        )

    @property
    def name(self) -> str:
        return self._name

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
        try:
            # httpx's timeout is per phase; this bounds the request as a whole, so a receiver
            # trickling bytes cannot hold the sink for longer.
            async with asyncio.timeout(self.timeout):
                async with self._client.stream("POST", self.url, content=body, headers=headers) as response:
                    text = await self._read_capped(response)
        except TimeoutError:
            raise SinkError(self._name, f"seq {change.seq}: no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            raise SinkError(self._name, f"seq {change.seq}: {type(exc).__name__}: {detail}") from None
        if not 200 <= response.status_code < 300:
            snippet = text[:_REASON_BODY].strip()
            reason = f"seq {change.seq}: HTTP {response.status_code}"
            raise SinkError(self._name, f"{reason}: {snippet}" if snippet else reason)

    async def _read_capped(self, response: httpx.Response) -> str:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size >= self._max_body:
                # Leaving the stream early closes the connection instead of draining it.
                break
        return b"".join(chunks)[: self._max_body].decode("utf-8", "replace")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpSink:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
