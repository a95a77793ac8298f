"""The public listener's app and server settings: the webhook path goes to the receiver,
every other path to its audited 404, and the lifespan starts and flushes the audit log.

A plain ASGI callable, not a framework app: the receiver answers every outcome itself, so
error pages, exception handlers and routing would only add work on the path that carries
the load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from syncd.config import WebhookConfig
from syncd.metrics import Metrics
from syncd.push.audit import AuditTrail
from syncd.push.http_limits import HeadLimits, guarded_protocol
from syncd.push.inbox import DeliveryInbox
from syncd.push.receiver import ReceiverSettings, WebhookReceiver


class ReceiverApp:
    """`path` and nothing else: no redirect from "/path/", and every miss is audited."""

    def __init__(self, path: str, receiver: WebhookReceiver, audit: AuditTrail) -> None:
        self.path = path
        self.receiver = receiver
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await self.receiver(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.receiver.not_found(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self.audit.start()
        except BaseException as exc:
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            raise
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await self.audit.stop()
        except BaseException as exc:
            await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def create_receiver_app(
    cfg: WebhookConfig,
    secrets: tuple[str, ...],
    inbox: DeliveryInbox,
    audit: AuditTrail,
    *,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
) -> ReceiverApp:
    """The public app for `cfg.path`; `app.receiver.update_settings(cfg, secrets)` reloads.
    `audit` is started and flushed with the app's lifespan."""
    receiver = WebhookReceiver(
        ReceiverSettings.build(cfg, secrets), inbox, audit, metrics=metrics, clock=clock
    )
    return ReceiverApp(cfg.path, receiver, audit)


def uvicorn_config(
    app: ASGIApp,
    cfg: WebhookConfig,
    *,
    fd: int | None = None,
    log_level: str = "warning",
    limit_concurrency: int | None = 4096,
) -> uvicorn.Config:
    """uvicorn settings for the public listener: uvloop/httptools when installed, TLS when
    `webhook.tls_cert`/`tls_key` are set (load_config takes both or neither), and `fd` for
    a socket passed by systemd. Proxy headers are off: the receiver applies its own
    `trusted_proxies` rule."""
    kwargs: dict[str, Any] = {
        # uvloop and httptools (uvicorn[standard]): the C event loop and parser roughly
        # halve the per-request cost of the pure-Python ones.
        "loop": "uvloop",
        # uvicorn's httptools protocol with header timeout, head caps and idle eviction.
        "http": guarded_protocol(
            HeadLimits(
                cfg.header_timeout,
                cfg.body_timeout,
                cfg.max_header_bytes,
                cfg.max_headers,
                cfg.max_connections,
            )
        ),
        "timeout_keep_alive": cfg.idle_timeout,
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,
        "log_level": log_level,
        "log_config": None,
        "limit_concurrency": limit_concurrency,
        "timeout_graceful_shutdown": 5,
    }
    if fd is not None:
        kwargs["fd"] = fd
    else:
        kwargs["host"], kwargs["port"] = cfg.listen.host, cfg.listen.port
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        kwargs["ssl_certfile"], kwargs["ssl_keyfile"] = cfg.tls_cert, cfg.tls_key
    return uvicorn.Config(app, **kwargs)
