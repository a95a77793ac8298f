"""`syncd receive`: a stateless webhook receiver in front of JetStream.

It serves `webhook.path` with every check of the daemon's receiver (allowlist, rate limit,
method, content type, size, signature, JSON: syncd.push.receiver, the same code), then
publishes the delivery to the inbox stream and answers 200 only after the PubAck; when
JetStream is unreachable or slower than `webhook.ack_timeout`, 503 with Retry-After.
Nothing is stored locally, so any number of receivers can run behind a load balancer and
any one of them can be lost: a delivery it had not acknowledged is retried by the
provider, one it had is in the stream. Audit goes to the log as JSON lines.

The admin listener serves /healthz (the process answers), /readyz (JetStream reachable and
the inbox stream in place) and /metrics. Lifecycle as the daemon's: SIGTERM/SIGINT stop
gracefully (deliveries in flight get their PubAck and answer), a second one exits at once;
SIGHUP reloads secrets, limits and allowlists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import IO, Any

from starlette.applications import Starlette

from syncd.config import Config
from syncd.errors import ConfigError, SyncdError
from syncd.jetstream import JetStreamLink, inbox_stream
from syncd.metrics import Metrics
from syncd.push.jetstream_inbox import JetStreamInbox
from syncd.push.log_audit import LogAudit
from syncd.push.receiver_app import create_receiver_app
from syncd.push.receiver_app import uvicorn_config as receiver_uvicorn_config
from syncd.service.admin import probe_app
from syncd.service.listeners import DaemonServer, bind_listener, take_activated_sockets
from syncd.service.signals import StopSignals, signal_handlers
from syncd.service.stopping import StopBudget, cancel
from syncd.service.systemd import Notifier, watchdog_loop

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE = 0, 1
SHUTDOWN_BUDGET = 8.0
#: The NATS server's max_payload must hold the largest body plus the delivery's headers.
HEADER_ALLOWANCE = 64 * 1024


def create_receive_admin_app(link: JetStreamLink, metrics: Metrics) -> Starlette:
    async def ready() -> dict[str, Any]:
        problem = link.status()
        if problem is None:
            return {"ready": True, "reason": "JetStream reachable"}
        return {"ready": False, "reason": problem}

    async def refresh() -> None:
        metrics.jetstream_connected.set(1 if link.connected else 0)

    return probe_app(metrics, ready, refresh=refresh)


class ReceiveServer:
    """Runs `syncd receive` until stopped; `serve()` returns the exit code."""

    def __init__(
        self,
        cfg: Config,
        *,
        load: Callable[[], Config] | None = None,
        metrics: Metrics | None = None,
        audit_stream: IO[bytes] | None = None,
    ) -> None:
        """`audit_stream`: where the audit's JSON lines go (stderr by default)."""
        if not cfg.secrets.webhook_secrets:
            raise ConfigError(
                cfg.source, "webhook.secret_env", "syncd receive needs a webhook secret to verify deliveries"
            )
        if cfg.nats.token_env is not None and not cfg.secrets.nats_token:
            raise ConfigError(cfg.source, "nats.token_env", f"${cfg.nats.token_env} is not set (or empty)")
        self.cfg = cfg
        self._load = load
        self.metrics = metrics or Metrics()
        self.notifier = Notifier()
        self.audit = LogAudit(audit_stream, metrics=self.metrics)
        self.link = JetStreamLink(
            cfg.nats,
            cfg.secrets.nats_token,
            [inbox_stream(cfg.nats, cfg.webhook.dedupe_retention)],
            name=f"syncd-receive-{os.getpid()}",
        )
        self.inbox = JetStreamInbox(
            self.link, cfg.nats.inbox_stream, ack_timeout=cfg.webhook.ack_timeout, metrics=self.metrics
        )
        self._stop = asyncio.Event()
        self._stop_signals = StopSignals(self.request_stop, EXIT_FAILURE)
        self._stops = contextlib.AsyncExitStack()
        self._budget = StopBudget()
        self.webhook: DaemonServer | None = None
        self.admin: DaemonServer | None = None
        self._reloading: asyncio.Task[None] | None = None

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        with signal_handlers(loop, self._on_signal):
            try:
                await self.startup()
            except Exception as exc:
                log.error(
                    "syncd receive could not start: %s",
                    exc,
                    exc_info=not isinstance(exc, OSError | SyncdError),
                )
                await self.shutdown()
                return EXIT_FAILURE
            try:
                await self._watch()
            finally:
                await self.shutdown()
                self.notifier.close()
        return EXIT_OK

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: answering the deliveries in flight")
            self._stop.set()

    async def startup(self) -> None:
        cfg, stops, budget = self.cfg, self._stops, self._budget
        stops.push_async_callback(self.link.close)
        await self.link.start()
        activated = take_activated_sockets(push=True)
        admin_sock = activated.get("admin") or bind_listener(cfg.admin.listen)
        self.admin = admin = DaemonServer(
            "admin", DaemonServer.plain_config(create_receive_admin_app(self.link, self.metrics)), admin_sock
        )
        stops.push_async_callback(lambda: admin.stop(budget.left()))
        await admin.start()
        app = create_receiver_app(
            cfg.webhook, cfg.secrets.webhook_secrets, self.inbox, self.audit, metrics=self.metrics
        )
        self._receiver = app.receiver
        sock = activated.get("webhook") or bind_listener(cfg.webhook.listen)
        self.webhook = webhook = DaemonServer("webhook", receiver_uvicorn_config(app, cfg.webhook), sock)
        # Stopped first: requests in flight still get their PubAck and answer.
        stops.push_async_callback(lambda: webhook.stop(budget.left()))
        await webhook.start()
        interval = self.notifier.watchdog_interval()
        if interval is not None and self.notifier.enabled:
            watchdog = asyncio.create_task(watchdog_loop(self.notifier, interval), name="syncd-watchdog")
            stops.push_async_callback(cancel, watchdog)
        listeners = {"webhook": webhook.url + cfg.webhook.path, "admin": admin.url}
        log.info(
            "syncd receive ready: %s; publishing to stream %s on %s",
            ", ".join(f"{k} on {v}" for k, v in listeners.items()),
            cfg.nats.inbox_stream,
            ", ".join(cfg.nats.servers),
            extra={"listeners": listeners, "pid": os.getpid()},
        )
        # Ready means serving: deliveries get 503 until JetStream is reachable (/readyz).
        self.notifier.ready("serving; JetStream: " + (self.link.status() or "reachable"))

    async def _watch(self) -> None:
        """Until stopped: report JetStream coming and going, and check its payload limit."""
        was: str | None = ""
        checked = False
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)
            problem = self.link.status()
            self.metrics.jetstream_connected.set(0 if problem else 1)
            if problem != was:
                if problem is None:
                    log.info("JetStream reachable: accepting deliveries")
                else:
                    log.warning("JetStream not usable, answering 503: %s", problem)
                was = problem
            if problem is None and not checked:
                checked = True
                self._check_payload_limit()

    def _check_payload_limit(self) -> None:
        nc = self.link.client
        if nc is None:
            return
        needed = self.cfg.webhook.max_body + HEADER_ALLOWANCE
        if nc.max_payload < needed:
            log.warning(
                "the NATS server's max_payload (%d bytes) is below webhook.max_body plus headers"
                " (%d): the largest deliveries will get 503; raise max_payload or lower max_body",
                nc.max_payload,
                needed,
            )

    async def reload(self) -> None:
        if self._load is None:
            return
        self.notifier.reloading()
        try:
            new = self._load()
            self._receiver.update_settings(new.webhook, new.secrets.webhook_secrets)
        except (ConfigError, ValueError) as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            return
        finally:
            self.notifier.ready("serving")
        log.info("config reloaded: webhook secrets, limits and allowlists")

    async def shutdown(self) -> None:
        self.notifier.stopping()
        self._budget.start(SHUTDOWN_BUDGET)
        await self._stops.aclose()
        log.info("syncd receive stopped")

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            self._reloading = asyncio.get_running_loop().create_task(
                self.reload(), name="syncd-receive-reload"
            )
            return
        self._stop_signals(sig)
