"""The public webhook receiver: one path, checked in a fixed order, acknowledged only when
the delivery is durable.

Order of checks (the first that fails answers): IP allowlist (403), rate limit per client
(429 + Retry-After), path (404), method (405), content type (415), body size, both the
announced length and while streaming (413), signature over the raw bytes (401, the body
never says which part failed), JSON envelope (400), durable inbox commit (200, or 503 when
the store cannot commit, too many deliveries wait for a commit, or the backlog of
unapplied deliveries is at `webhook.max_backlog`; in `syncd receive` the inbox is
JetStream, and 503 means no PubAck in time). A payload that passes all that but
is not a valid record is still acknowledged: the worker dead-letters it, since a provider
would otherwise retry it for days. That includes a signed body nested too deep to parse:
it is stored under an id derived from its bytes (retries of it are duplicates).

Before any of this the listener's protocol (syncd.push.http_limits) bounds the request head
(header timeout, size and count caps: 431) and evicts idle connections. Rejected requests
are audited and logged through a per-client sampler, so one client cannot fill the disk.

The endpoint is a raw ASGI callable: the hot path builds no Request or Response objects.
The app around it (lifespan, routing to the audited 404) is syncd.push.receiver_app.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from syncd import jsonparse
from syncd.config import WebhookConfig
from syncd.core.records import MAX_JSON_DEPTH, envelope_from_object, json_depth_ok
from syncd.errors import RecordError
from syncd.metrics import Metrics
from syncd.push.admission import RateLimiter, in_networks, json_content_type, resolve_client
from syncd.push.audit import AuditRow, AuditTrail, RejectionSampler
from syncd.push.backlog import BacklogFullError
from syncd.push.inbox import Delivery, DeliveryInbox, InboxCommitError, InboxFullError, InboxUnavailableError
from syncd.signatures import Verifier, make_verifier

log = logging.getLogger(__name__)

MAX_EVENT_ID_LENGTH = 256
#: Headers kept with a delivery for audit; signatures, authorization and cookies never are.
AUDIT_HEADERS = (
    "content-type",
    "user-agent",
    "x-webhook-id",
    "webhook-id",
    "webhook-timestamp",
    "x-github-delivery",
    "x-github-event",
    "x-forwarded-for",
    "x-request-id",
)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_BODIES = {
    "accepted": b'{"status":"accepted"}',
    "duplicate": b'{"status":"duplicate"}',
}
_ERRORS = {
    400: b'{"error":"bad request"}',
    401: b'{"error":"invalid signature"}',
    403: b'{"error":"forbidden"}',
    404: b'{"error":"not found"}',
    405: b'{"error":"method not allowed"}',
    413: b'{"error":"body too large"}',
    415: b'{"error":"content type must be application/json"}',
    429: b'{"error":"rate limited"}',
    503: b'{"error":"temporarily unavailable"}',
}


#: Settings the listener's protocol is built with (uvicorn_config), fixed until a restart.
_LISTENER_KEYS = (
    "header_timeout",
    "body_timeout",
    "idle_timeout",
    "max_header_bytes",
    "max_headers",
    "max_connections",
)

#: Response headers per response body (there are a dozen bodies), built once.
_RESPONSE_HEADERS: dict[bytes, list[tuple[bytes, bytes]]] = {}


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """Everything a SIGHUP may change, swapped as one object."""

    cfg: WebhookConfig
    verifier: Verifier

    @classmethod
    def build(cls, cfg: WebhookConfig, secrets: Sequence[str]) -> ReceiverSettings:
        return cls(cfg, make_verifier(cfg.scheme, tuple(secrets), tolerance=cfg.tolerance))


class _Reject(Exception):
    """Control flow inside the endpoint: answer with this status; never escapes it."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        *,
        size: int | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = list(headers)
        self.size = size


class WebhookReceiver:
    """The ASGI endpoint for `webhook.path`, plus the audited 404 for every other path."""

    def __init__(
        self,
        settings: ReceiverSettings,
        inbox: DeliveryInbox,
        audit: AuditTrail,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.limiter = RateLimiter(settings.cfg.rate_limit)
        self._inbox = inbox
        self._audit = audit
        self._metrics = metrics
        self._clock = clock
        self._counters: dict[tuple[int, str], Any] = {}
        self._sampler = RejectionSampler()

    def update_settings(self, cfg: WebhookConfig, secrets: Sequence[str]) -> None:
        """Swap secrets, limits and allowlists at once (SIGHUP). Raises ValueError, keeping
        the old settings, when the new secrets are unusable. The listener's own limits are
        fixed when it starts, so a change to them is named for the operator; the path and
        listen address never change here (a reload keeps them as started)."""
        new = ReceiverSettings.build(cfg, secrets)
        old = self.settings.cfg
        for key in _LISTENER_KEYS:
            if getattr(cfg, key) != getattr(old, key):
                log.warning("webhook.%s changed; it takes effect after a restart", key)
        self.limiter.set_rate(cfg.rate_limit)
        self.settings = new

    def _count(self, status: int, reason: str) -> None:
        if self._metrics is None:
            return
        counter = self._counters.get((status, reason))
        if counter is None:
            counter = self._metrics.requests.labels(status=str(status), reason=reason)
            self._counters[(status, reason)] = counter
        counter.inc()

    async def _answer(
        self,
        send: Send,
        scope: Scope,
        client: str,
        status: int,
        reason: str,
        body: bytes,
        *,
        event_id: str | None = None,
        size: int = 0,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        base = _RESPONSE_HEADERS.get(body)
        if base is None:
            base = _RESPONSE_HEADERS[body] = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*base, *headers] if headers else base,
            }
        )
        await send({"type": "http.response.body", "body": body})
        self._count(status, reason)
        now = self._clock()
        unlogged = 0
        if status >= 400:
            sampled = self._sampler.admit(client, now)
            if sampled is None:
                if self._metrics is not None:
                    self._metrics.audit_sampled_out.inc()
                return
            unlogged = sampled
        path = scope.get("path", "")[:512]
        self._audit.record(
            AuditRow(now, client, scope.get("method", "")[:16], path, status, reason, event_id, size)
        )
        if status >= 400 and status != 429:
            log.info(
                "webhook %s %s from %s: %d %s%s", scope.get("method"), path, client, status, reason,
                f" ({unlogged} earlier rejections of this client not audited)" if unlogged else "",
            )  # fmt: skip

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        cfg = self.settings.cfg
        peer = (scope.get("client") or ("", 0))[0]
        forwarded = None
        if cfg.trusted_proxies:
            forwarded = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"), None
            )
        client = resolve_client(peer, forwarded, cfg.trusted_proxies)
        # Admitted and limited like a delivery, so probing paths costs what a delivery costs.
        try:
            self._admit(cfg, client)
        except _Reject as rej:
            await self._answer(
                send, scope, client, rej.status, rej.reason, _ERRORS[rej.status], headers=rej.headers
            )
            return
        await self._answer(send, scope, client, 404, "not_found", _ERRORS[404])

    def _admit(self, cfg: WebhookConfig, client: str) -> None:
        if cfg.allow_ips and not in_networks(client, cfg.allow_ips):
            raise _Reject(403, "ip_not_allowed")
        wait = self.limiter.check(client, self._clock())
        if wait is not None:
            raise _Reject(429, "rate_limited", [(b"retry-after", str(max(1, math.ceil(wait))).encode())])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.not_found(scope, receive, send)
            return
        started = time.perf_counter()
        s = self.settings
        cfg = s.cfg
        # ASGI servers deliver header names in lower case.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        peer = (scope.get("client") or ("", 0))[0]
        client = resolve_client(peer, headers.get("x-forwarded-for"), cfg.trusted_proxies)
        size = 0
        event_id: str | None = None
        try:
            self._admit(cfg, client)
            if scope["method"] != "POST":
                raise _Reject(405, "method_not_allowed", [(b"allow", b"POST")])
            if not json_content_type(headers.get("content-type")):
                raise _Reject(415, "unsupported_media_type")
            announced = headers.get("content-length")
            if announced is not None and (not announced.isdigit() or int(announced) > cfg.max_body):
                raise _Reject(413 if announced.isdigit() else 400, "body_too_large")
            body, size = await self._read_body(receive, cfg.max_body)
            result = s.verifier.verify(headers, body, now=self._clock())
            if not result.ok:
                raise _Reject(401, f"signature:{result.reason}")
            event_id, event_type, parsed = self._envelope(body)
            delivery = Delivery(
                event_id,
                self._clock(),
                client,
                {k: headers[k] for k in AUDIT_HEADERS if k in headers},
                body,
                event_type,
                parsed,
            )
            try:
                outcome = await self._inbox.submit(delivery)
            except InboxFullError:
                raise _Reject(503, "inbox_full", [(b"retry-after", b"1")]) from None
            except BacklogFullError as exc:
                retry = [(b"retry-after", str(exc.retry_after).encode())]
                raise _Reject(503, "backlog_full", retry) from None
            except InboxCommitError:
                raise _Reject(503, "store_unavailable", [(b"retry-after", b"5")]) from None
            except InboxUnavailableError as exc:
                retry = [(b"retry-after", str(exc.retry_after).encode())]
                raise _Reject(503, "jetstream_unavailable", retry) from None
        except _Reject as rej:
            await self._answer(
                send, scope, client, rej.status, rej.reason, _ERRORS[rej.status],
                event_id=event_id, size=size if rej.size is None else rej.size, headers=rej.headers,
            )  # fmt: skip
            return
        except _Disconnected:
            self._count(499, "client_disconnected")
            return
        await self._answer(send, scope, client, 200, outcome, _BODIES[outcome], event_id=event_id, size=size)
        if self._metrics is not None:
            self._metrics.ack_latency.observe(time.perf_counter() - started)

    @staticmethod
    async def _read_body(receive: Receive, cap: int) -> tuple[bytes, int]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                # Answer now: reading the rest would let a sender make us buffer anything.
                raise _Reject(413, "body_too_large", size=size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), size

    @staticmethod
    def _envelope(body: bytes) -> tuple[str, str | None, dict[str, Any] | None]:
        try:
            obj = jsonparse.loads(body)
        except UnicodeDecodeError:
            raise _Reject(400, "not_utf8") from None
        except RecursionError:
            return _too_deep(body)
        except json.JSONDecodeError:
            raise _Reject(400, "malformed_json") from None
        if not isinstance(obj, dict):
            raise _Reject(400, "not_an_object")
        # Nesting needs one bracket per level, so few brackets (the usual case) need no walk.
        if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and not json_depth_ok(obj, MAX_JSON_DEPTH):
            return _too_deep(body)
        try:
            env = envelope_from_object(obj)
        except RecordError:
            reason = (
                "missing_event_id"
                if not isinstance(obj.get("eventId", obj.get("id")), str)
                else "missing_event_type"
            )
            raise _Reject(400, reason) from None
        if len(env.event_id) > MAX_EVENT_ID_LENGTH:
            raise _Reject(400, "event_id_too_long")
        return env.event_id, env.event_type, obj


def _too_deep(body: bytes) -> tuple[str, str | None, None]:
    """A signed body nested too deep is well-formed for all the sender knows: a 400 would be
    retried for days. It is acknowledged under an id derived from its bytes (so its retries
    are duplicates) and the worker dead-letters it, with the reason, on its own parse."""
    return "sha256:" + hashlib.sha256(body).hexdigest(), None, None


class _Disconnected(Exception):
    """The client went away before the body was complete."""
