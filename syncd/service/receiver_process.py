"""The webhook receiver in a process of its own (`webhook.receiver_process = true`).

`syncd run` starts this module as a child (syncd.service.receiver_child) and passes it the
listening socket and one end of a control socket. The child serves the public listener
with the same receiver, group-committing inbox and audit trail as the in-process layout,
on its own connection to the same SQLite file, so acknowledgements do not share a GIL
with the inbox worker, the polls and the change feed's readers. Everything else (the
worker, polls, admin listener, metrics) stays in the daemon.

Control messages, both ways, are pickled tuples on the control socket:
- child -> daemon: ("ready", pid) once serving; ("commit", deliveries, new, new_bytes,
  saturated) after every commit (the daemon's inbox counts it: backlog, health, the
  worker's wake and deferral); ("failure", reason) after a commit that failed; ("stats",
  {(status, reason): n}, [ack latencies], sampled_out) once a second, for /metrics.
- daemon -> child: ("applied", count, bytes) after every apply (the child's backlog
  bound); ("settings", WebhookConfig, secrets) after a reload; ("stop",).

The child stops on ("stop",), on SIGTERM (systemd signals the whole unit) and when the
daemon's end of the control socket closes (the daemon died: nobody would apply what it
acknowledged). Stopping lets requests in flight get their commit and their 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncd.config import LogConfig, WebhookConfig
from syncd.logs import setup_logging
from syncd.metrics import Metrics
from syncd.push.audit import AuditLog
from syncd.push.backlog import Backlog
from syncd.push.inbox import Inbox
from syncd.push.receiver_app import create_receiver_app, uvicorn_config
from syncd.service.listeners import DaemonServer
from syncd.store.db import Store
from syncd.store.guard import FileIdentity, identity_problem
from syncd.store.writer import Writer

log = logging.getLogger(__name__)

#: How often the child's request counts and ack latencies go to the daemon's /metrics.
STATS_PERIOD = 1.0
#: Ack latencies kept per stats period at most (the rest are counted, not forwarded).
MAX_LATENCIES = 100_000
#: Longest wait for requests in flight when stopping.
STOP_GRACE = 5.0


class ControlChannel:
    """Pickled tuples, length-prefixed, on one end of the control socket. Sending never
    blocks the event loop (the transport buffers); `receive` returns None at EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> ControlChannel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    def send(self, message: tuple[Any, ...]) -> None:
        if self._writer.is_closing():
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def receive(self) -> tuple[Any, ...] | None:
        try:
            head = await self._reader.readexactly(_LENGTH.size)
            body = await self._reader.readexactly(_LENGTH.unpack(head)[0])
            # The other end is this daemon or its own child (a socketpair), never the network.
            message: tuple[Any, ...] = pickle.loads(body)  # noqa: S301
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return message

    def close(self) -> None:
        self._writer.close()


_LENGTH = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What the daemon hands the child, the first message on the control socket."""

    webhook: WebhookConfig
    secrets: tuple[str, ...]
    store_path: str
    identity: FileIdentity
    log: LogConfig


class _Latencies:
    """Stands in for the ack-latency histogram in the child: the daemon observes them."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        if len(self.values) < MAX_LATENCIES:
            self.values.append(value)


def _counter_values(metrics: Metrics) -> tuple[dict[tuple[str, str], float], float]:
    requests: dict[tuple[str, str], float] = {}
    for family in metrics.requests.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                requests[(sample.labels["status"], sample.labels["reason"])] = sample.value
    sampled = 0.0
    for family in metrics.audit_sampled_out.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                sampled = sample.value
    return requests, sampled


class _Child:
    def __init__(self, spec: ChildSpec, control: ControlChannel, sock: socket.socket) -> None:
        self.spec = spec
        self.control = control
        self.sock = sock
        self.stop = asyncio.Event()
        self.metrics = Metrics()
        self.latencies = _Latencies()
        self.metrics.ack_latency = self.latencies  # type: ignore[assignment]
        self.backlog = Backlog(spec.webhook.max_backlog, spec.webhook.max_backlog_bytes)
        self._sent_requests: dict[tuple[str, str], float] = {}
        self._sent_sampled = 0.0
        self._on_settings: Callable[[WebhookConfig, tuple[str, ...]], None] | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        self.control.send(message)

    async def _read_control(self) -> None:
        while (message := await self.control.receive()) is not None:
            kind = message[0]
            if kind == "applied":
                self.backlog.applied(message[1], message[2])
            elif kind == "settings" and self._on_settings is not None:
                self._on_settings(message[1], message[2])
            elif kind == "stop":
                self.stop.set()
        if not self.stop.is_set():
            # The daemon is gone: nobody would apply what this process acknowledged.
            log.error("the daemon closed the receiver's control socket; stopping")
            self.stop.set()

    def _stats(self) -> None:
        requests, sampled = _counter_values(self.metrics)
        deltas = {k: v - self._sent_requests.get(k, 0.0) for k, v in requests.items()}
        deltas = {k: v for k, v in deltas.items() if v}
        latencies, self.latencies.values = self.latencies.values, []
        if deltas or latencies or sampled != self._sent_sampled:
            self.send(("stats", deltas, latencies, sampled - self._sent_sampled))
        self._sent_requests, self._sent_sampled = requests, sampled

    async def _stats_loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), STATS_PERIOD)
            self._stats()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        reading = asyncio.create_task(self._read_control())
        spec = self.spec
        writer = Writer(lambda: Store(spec.store_path, record_changes=False))
        await asyncio.to_thread(writer.start)
        try:
            inbox = Inbox(
                writer,
                metrics=None,
                guard=lambda: identity_problem(spec.store_path, spec.identity),
                backlog=self.backlog,
            )
            await inbox.start()
            inbox.add_commit_reporter(
                lambda n, new, size: self.send(("commit", n, new, size, inbox.saturated()))
            )
            inbox.add_failure_reporter(lambda reason: self.send(("failure", reason)))
            audit = AuditLog(writer, metrics=self.metrics)
            app = create_receiver_app(spec.webhook, spec.secrets, inbox, audit, metrics=self.metrics)

            def settings(cfg: WebhookConfig, secrets: tuple[str, ...]) -> None:
                try:
                    app.receiver.update_settings(cfg, secrets)
                except ValueError as exc:
                    log.error("webhook settings not taken: %s", exc)
                self.backlog.set_limits(cfg.max_backlog, cfg.max_backlog_bytes)

            self._on_settings = settings
            listener = DaemonServer("webhook", uvicorn_config(app, spec.webhook), self.sock)
            await listener.start()
            stats = asyncio.create_task(self._stats_loop())
            self.send(("ready", os.getpid()))
            await self.stop.wait()
            # Stop accepting; requests in flight still get their commit and their 2xx.
            await listener.stop(STOP_GRACE)
            await inbox.stop()
            await stats
            self._stats()
        finally:
            await asyncio.to_thread(writer.stop)
            reading.cancel()
            self.control.close()
        return 0


def main(argv: list[str]) -> int:
    listen_fd, control_fd = int(argv[1]), int(argv[2])
    # The daemon reloads and forwards the settings; a SIGHUP sent to the whole unit must
    # not end this process. SIGINT from a terminal reaches the daemon too, which stops it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=listen_fd)
    control_sock = socket.socket(fileno=control_fd)
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None

    async def run() -> int:
        control = await ControlChannel.open(control_sock)
        first = await control.receive()
        if first is None or first[0] != "spec":
            return 2
        spec: ChildSpec = first[1]
        setup_logging(spec.log, secrets=spec.secrets)
        return await _Child(spec, control, sock).serve()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
