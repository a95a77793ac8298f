"""The daemon's side of a webhook receiver in its own process (syncd.service.receiver_process).

`ReceiverChild` stands where the in-process listener stands (`start`, `serving`, `stop`,
`url`) and where its receiver takes reloaded settings (`update_settings`). It starts the
child with the listening socket, keeps the daemon's inbox told of the child's commits (the
backlog counts, last delivery, the worker's wake and its deferral while the child is
saturated), tells the child of every apply (its backlog bound), and forwards the child's
request counts and ack latencies to the daemon's metrics.

A child that exits while the daemon runs is logged and started again after a pause
(doubling up to `max_restart_delay`); while it is down the receiver is not serving, so
mode control falls back to polling. More than `max_restarts` exits within
`restart_window` seconds and the daemon gives up (`on_fatal`): it exits non-zero for its
service manager to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from syncd.config import Config, WebhookConfig
from syncd.metrics import Metrics
from syncd.push.inbox import Inbox
from syncd.service.receiver_process import ChildSpec, ControlChannel
from syncd.store import events
from syncd.store.guard import FileIdentity
from syncd.store.writer import Writer

log = logging.getLogger(__name__)

CHILD_MODULE = "syncd.service.receiver_process"


class ReceiverChild:
    """The public listener served by a child process."""

    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        inbox: Inbox,
        sock: socket.socket,
        identity: FileIdentity,
        *,
        metrics: Metrics | None = None,
        on_fatal: Callable[[str], None] = lambda reason: None,
        restart_delay: float = 1.0,
        max_restart_delay: float = 30.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        self._webhook = cfg.webhook
        self._secrets = cfg.secrets.webhook_secrets
        self._log = cfg.log
        self._store_path = cfg.store.path
        self._identity = identity
        self._inbox = inbox
        self._writer = writer
        self.sock = sock
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._restart_delay = restart_delay
        self._max_restart_delay = max_restart_delay
        self._max_restarts = max_restarts
        self._restart_window = restart_window
        self._exits: list[float] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._control: ControlChannel | None = None
        self._reading: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[int] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._serving = False
        #: Child processes started, the first included (tests and status read it).
        self.starts = 0
        host, port = sock.getsockname()[:2]
        scheme = "https" if cfg.webhook.tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{port}"
        inbox.backlog.applied_listeners.append(self._applied)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def serving(self) -> bool:
        return self._serving and not self._stopping

    def update_settings(self, cfg: WebhookConfig, secrets: tuple[str, ...] | list[str]) -> None:
        """Hand reloaded settings to the child (SIGHUP); a child started later gets them too."""
        self._webhook, self._secrets = cfg, tuple(secrets)
        self._send(("settings", cfg, tuple(secrets)))

    async def start(self, within: float = 30.0) -> None:
        """Start the child and return once it serves."""
        await self._spawn(within)
        self._supervisor = asyncio.create_task(self._supervise(), name="syncd-receiver-child")

    async def stop(self, grace: float) -> None:
        """Stop the child: it stops accepting, lets requests in flight finish (for at most
        `grace` seconds), and exits; killed past that."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._send(("stop",))
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                log.error("the webhook receiver process did not stop within %.1fs; killing it", grace)
                proc.kill()
                await proc.wait()
        self._close_control()
        self.sock.close()

    # -- the child --------------------------------------------------------------------------

    async def _spawn(self, within: float) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                CHILD_MODULE,
                str(self.sock.fileno()),
                str(theirs.fileno()),
                pass_fds=(self.sock.fileno(), theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.starts += 1
        self._proc = proc
        control = await ControlChannel.open(ours)
        self._control = control
        self._ready = loop.create_future()
        self._reading = asyncio.create_task(self._read_control(control))
        self._send(
            (
                "spec",
                ChildSpec(self._webhook, tuple(self._secrets), self._store_path, self._identity, self._log),
            )
        )
        waiter = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                {self._ready, waiter}, timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self._ready.done() and not self._ready.cancelled():
            self._serving = True
            log.info("webhook receiver process %d serving on %s", proc.pid, self.url)
            return
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        self._close_control()
        raise RuntimeError(
            f"the webhook receiver process did not start on {self.url}"
            + (f" (exit code {proc.returncode})" if done else f" within {within:g}s")
        )

    async def _supervise(self) -> None:
        delay = self._restart_delay
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            self._serving = False
            self._close_control()
            if self._stopping:
                return
            now = time.monotonic()
            self._exits = [t for t in self._exits if now - t < self._restart_window] + [now]
            if len(self._exits) > self._max_restarts:
                reason = (
                    f"the webhook receiver process exited {len(self._exits)} times within"
                    f" {self._restart_window:g}s (last exit code {code})"
                )
                log.error("%s; stopping", reason)
                self._on_fatal(reason)
                return
            log.error(
                "the webhook receiver process exited (code %s); starting it again in %.1fs", code, delay
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._reload_backlog()
                await self._spawn(30.0)
            except Exception as exc:
                log.error("could not start the webhook receiver process again: %s", exc)
                self._on_fatal(str(exc))
                return
            delay = min(self._max_restart_delay, delay * 2)

    async def _reload_backlog(self) -> None:
        """A killed child may have committed deliveries it never reported: count again."""
        depth, size = await self._writer.run(lambda store: events.inbox_backlog(store.conn))
        self._inbox.backlog.load(depth, size)

    # -- control messages -------------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._control is not None:
            self._control.send(message)

    def _applied(self, count: int, size: int) -> None:
        self._send(("applied", count, size))

    def _close_control(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    async def _read_control(self, control: ControlChannel) -> None:
        while (message := await control.receive()) is not None:
            self._handle(message)
        # The child closed its end: it is exiting; the supervisor waits for it.
        self._serving = False

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "commit":
            _, deliveries, new, new_bytes, saturated = message
            if saturated:
                self._inbox.saturated_at = time.monotonic()
            self._inbox.record_commit(deliveries, new, new_bytes)
        elif kind == "failure":
            self._inbox.record_failure(message[1])
        elif kind == "stats":
            self._stats(message[1], message[2], message[3])
        elif kind == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(message[1])

    def _stats(self, requests: dict[tuple[str, str], float], latencies: list[float], sampled: float) -> None:
        m = self._metrics
        if m is None:
            return
        for (status, reason), n in requests.items():
            m.requests.labels(status=status, reason=reason).inc(n)
        for value in latencies:
            m.ack_latency.observe(value)
        if sampled:
            m.audit_sampled_out.inc(sampled)
