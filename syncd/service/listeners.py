"""The daemon's listeners: sockets it binds or systemd passes, served by uvicorn as tasks.

The daemon owns signal handling, so the uvicorn servers here never install their own
(uvicorn's `capture_signals` would replace the daemon's handlers and re-raise the signal
after shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from syncd.config_values import ListenAddress
from syncd.service.systemd import listen_fds_with_names

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_listener(address: ListenAddress) -> socket.socket:
    """A listening TCP socket on `address` (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server((address.host, address.port), family=family, backlog=1024)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from None


def take_activated_sockets(*, push: bool) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by role ("webhook", "admin").

    A socket unit names them with FileDescriptorName=webhook / admin; unnamed ones are taken
    in order: webhook then admin in push mode, admin alone in poll mode."""
    passed = listen_fds_with_names()
    roles = ["webhook", "admin"] if push else ["admin"]
    out: dict[str, socket.socket] = {}
    unnamed: list[socket.socket] = []
    for name, sock in passed:
        if name in roles and name not in out:
            out[name] = sock
        else:
            unnamed.append(sock)
    for role in roles:
        if role not in out and unnamed:
            out[role] = unnamed.pop(0)
    for sock in unnamed:
        log.warning("ignoring an extra socket passed by systemd: %s", sock.getsockname())
        sock.close()
    for role, sock in out.items():
        log.info("using the %s socket passed by systemd: %s", role, sock.getsockname())
    return out


class DaemonServer:
    """One uvicorn server on one socket, run as a task of the daemon's loop."""

    def __init__(self, name: str, config: uvicorn.Config, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        host, port = sock.getsockname()[:2]
        scheme = "https" if config.ssl_certfile else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{port}"

    @staticmethod
    def plain_config(app: Any) -> uvicorn.Config:
        """uvicorn settings for the admin listener."""
        return uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            ws="none",
            timeout_graceful_shutdown=1,
        )

    async def start(self, within: float = 30.0) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name=f"syncd-{self.name}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.server.started:
            if self._task.done():
                await self._task
                raise RuntimeError(f"the {self.name} listener on {self.url} stopped during startup")
            if loop.time() > deadline:
                raise TimeoutError(f"the {self.name} listener on {self.url} did not start in {within:g}s")
            await asyncio.sleep(0.01)

    @property
    def serving(self) -> bool:
        return (
            self._task is not None
            and not self._task.done()
            and self.server.started
            and not self.server.should_exit
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish (for at most `grace` seconds)."""
        if self._task is None:
            self.sock.close()
            return
        self.server.should_exit = True
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            log.error("the %s listener did not stop within %.1fs; closing it", self.name, grace)
            self.server.force_exit = True
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        # A task that ended by raising is reported, not swallowed silently.
        if self._task.done() and not self._task.cancelled() and self._task.exception() is not None:
            log.error("the %s listener failed: %s", self.name, self._task.exception())
