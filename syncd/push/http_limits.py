"""The public listener's HTTP/1.1 protocol: uvicorn's httptools protocol plus the limits a
port open to the internet needs and uvicorn does not apply on its own.

uvicorn arms its keep-alive timer only after a response, so a connection that never sends a
complete request head is kept forever; and httptools buffers a header name or value however
long it grows. Both let an unauthenticated client hold memory and connection slots: a few
thousand silent sockets exceed `limit_concurrency` (which counts connections), and from then
on every real delivery gets 503. This protocol adds, per connection:

- a header-read timeout, from the connection (or the first byte of a request after a
  keep-alive pause) until its head is complete; past it the connection is closed;
- a body-read timeout, from the end of a head until its body is complete (a client that
  drips a body a byte at a time holds a connection and a buffer); past it the client gets
  408 and the connection is closed;
- caps on the number of header fields and on their size (the request target plus every
  header name and value), answered with 431 and a close; raw bytes received while a head is
  incomplete are capped too, so padding the parser does not report cannot grow memory;
- eviction of idle connections: past `max_connections` open at once, the oldest
  connections without a request in progress are closed to make room, so idle sockets can
  never crowd out a delivery.

Idle time between requests is uvicorn's own `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState


def _closing_response(status: int, body: bytes) -> bytes:
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_431 = _closing_response(431, b"Request Header Fields Too Large")
_408 = _closing_response(408, b"Request Timeout")
#: Bytes of a head the field caps do not see (method, version, separators, line ends), per
#: header line and per request: the raw-byte cap allows them on top of `max_header_bytes`.
_LINE_OVERHEAD = 64
_REQUEST_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class HeadLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_headers: int
    max_connections: int


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing a head past its caps."""


def guarded_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """A protocol class for one listener (its connections share one eviction order)."""
    raw_cap = limits.max_header_bytes + limits.max_headers * _LINE_OVERHEAD + _REQUEST_OVERHEAD
    #: Every open connection of this listener, oldest first (dicts keep insertion order).
    open_connections: dict[GuardedProtocol, None] = {}
    # Deadlines are checked by one sweep over the open connections a few times per
    # timeout rather than by a timer per request: arming and cancelling a timer for every
    # request costs the hot path more than everything else here. A head (a body) is
    # therefore cut off between 1 and 1.25 of its timeout after it started.
    sweep_every = min(limits.header_timeout, limits.body_timeout) / 4
    sweeper: list[asyncio.TimerHandle] = []

    def sweep(loop: asyncio.AbstractEventLoop) -> None:
        sweeper.clear()
        now = loop.time()
        head_cutoff = now - limits.header_timeout
        body_cutoff = now - limits.body_timeout
        for conn in list(open_connections):
            if conn.transport.is_closing():
                continue
            head, body = conn.head_since, conn.body_since
            if head is not None and head <= head_cutoff:
                conn.transport.close()
            elif body is not None and body <= body_cutoff:
                conn.body_timed_out()
        if open_connections:
            sweeper.append(loop.call_later(sweep_every, sweep, loop))

    class GuardedProtocol(HttpToolsProtocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            #: When the head being waited for started (loop time); None between requests.
            self.head_since: float | None = None
            #: When the body being waited for started (its head's end); None otherwise.
            self.body_since: float | None = None
            #: True from the end of a response (or the connection) until a head is complete.
            self._awaiting_head = True
            self._raw_bytes = 0
            self._chunk_bytes = 0
            self._head_completed_in_feed = False
            self._too_large = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.head_since = self.loop.time()
            open_connections[self] = None
            if not sweeper:
                sweeper.append(self.loop.call_later(sweep_every, sweep, self.loop))
            if len(self.connections) > limits.max_connections:
                self._evict_idle()

        def connection_lost(self, exc: Exception | None) -> None:
            open_connections.pop(self, None)
            self.head_since = self.body_since = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # uvicorn's, plus the 431 answer; a request that starts after a keep-alive pause
            # starts its header clock here (uvicorn has just cancelled its keep-alive timer).
            self._unset_keepalive_if_required()
            if self._awaiting_head and self.head_since is None:
                self.head_since = self.loop.time()
            self._chunk_bytes = len(data)
            self._head_completed_in_feed = False
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if self._too_large:
                    self._reject_head()
                    return
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            # A chunk that also completed a head (pipelining) is not counted: the unfinished
            # head in it may be any part of it, and it is bounded by the transport's read size.
            if self._awaiting_head and not self._head_completed_in_feed:
                self._raw_bytes += len(data)
                # The parser keeps fields it has seen until the head ends: bound them now.
                if self._raw_bytes > raw_cap or len(self.headers or ()) > limits.max_headers:
                    self._reject_head()

        def on_headers_complete(self) -> None:
            # Exact caps, checked once per head. A head that arrived whole in a chunk no
            # larger than the size cap cannot exceed it, so the usual request skips the sum.
            received = self._raw_bytes + self._chunk_bytes
            self._awaiting_head = False
            self._head_completed_in_feed = True
            self.head_since = None
            self._raw_bytes = 0
            if len(self.headers) > limits.max_headers or (
                received > limits.max_header_bytes
                and len(self.url) + sum(len(k) + len(v) for k, v in self.headers) > limits.max_header_bytes
            ):
                self._too_large = True
                raise _HeadTooLarge()
            self.body_since = self.loop.time()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.body_since = None
            super().on_message_complete()

        def body_timed_out(self) -> None:
            # A request still waiting for its body has no answer yet, so the 408 is the only
            # one; its app sees a disconnect. (One answered early, say with 413, just closes.)
            self.body_since = None
            if self.cycle is not None and not self.cycle.response_started:
                self.transport.write(_408)
            self.transport.close()

        def on_response_complete(self) -> None:
            # The rest of a body answered before it arrived counts as the next head's bytes.
            self.body_since = None
            pipelined = bool(self.pipeline)
            super().on_response_complete()
            if not pipelined:
                self._awaiting_head = True

        def _idle(self) -> bool:
            return self._awaiting_head and (self.cycle is None or self.cycle.response_complete)

        def _evict_idle(self) -> None:
            excess = len(self.connections) - limits.max_connections
            for conn in list(open_connections):
                if excess <= 0:
                    break
                if conn is not self and conn._idle() and not conn.transport.is_closing():
                    conn.transport.close()
                    excess -= 1

        def _reject_head(self) -> None:
            self.head_since = None
            if not self.transport.is_closing():
                self.transport.write(_431)
                self.transport.close()

    return GuardedProtocol
