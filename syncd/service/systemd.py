"""The parts of the systemd service protocol syncd speaks, without libsystemd.

- sd_notify: datagrams to ``$NOTIFY_SOCKET`` (READY, RELOADING, STOPPING,
  STATUS, WATCHDOG); see sd_notify(3).
- The watchdog: ``$WATCHDOG_USEC`` / ``$WATCHDOG_PID``; pings come from the
  event loop itself, so a wedged loop stops pinging and systemd restarts us.
- Socket activation: ``$LISTEN_PID`` / ``$LISTEN_FDS`` / ``$LISTEN_FDNAMES``,
  fds from 3 on; see sd_listen_fds(3).

Each is a few lines over the standard library. systemd-python and cysystemd
build against libsystemd's C headers, and sdnotify covers sending only, so a
dependency would add a build requirement without removing much code.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon
calls these unconditionally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Self

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


def _notify_address(value: str | None) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the leading "@" stands for a NUL byte.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Other forms (vsock:..., relative paths) are not for a local daemon.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying systemd", value)
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text:
        try:
            if int(pid_text) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec_text)
        return None
    if usec <= 0:
        return None
    # Pinging at half the deadline leaves room for one late ping.
    return usec / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages to the service manager.

    The environment is read once, at construction. Send failures are logged
    (a warning the first time, debug after) and never raised: losing a
    status message must not take the daemon down.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _notify_address(env.get("NOTIFY_SOCKET"))
        self._watchdog = _watchdog_interval(env, os.getpid())
        self._sock: socket.socket | None = None
        self._failed_before = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (``$NOTIFY_SOCKET`` names a usable socket)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full manager queue must not block the event loop; the
                # message is dropped and logged instead.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError as exc:
            level = logging.DEBUG if self._failed_before else logging.WARNING
            self._failed_before = True
            log.log(level, "sd_notify to %r failed: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished; systemd may start dependents."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", "STATUS=" + _one_line(status))

    def reloading(self) -> bool:
        """A reload started; call ready() when it is done."""
        # systemd >= 253 (Type=notify-reload) requires the timestamp to tell
        # this reload from an earlier one; older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, or None when the watchdog is off
        or meant for another process."""
        return self._watchdog

    def close(self) -> None:
        """Close the socket (the daemon does on exit); a later message opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    # A newline would start a new assignment, letting status text set
    # arbitrary fields such as READY=1.
    return " ".join(text.splitlines())


async def watchdog_loop(
    notifier: Notifier,
    interval: float,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Ping the watchdog every ``interval`` seconds until cancelled.

    Runs as a task on the daemon's own loop on purpose: if the loop stops
    turning, the pings stop and systemd restarts the service.
    """
    if not interval > 0:
        raise ValueError(f"watchdog interval must be > 0 seconds, got {interval}")
    while True:
        notifier.watchdog()
        await sleep(interval)


def listen_fds_with_names() -> list[tuple[str, socket.socket]]:
    """Sockets passed by socket activation, each with its FileDescriptorName.

    Like ``sd_listen_fds(unset_environment=1)`` the LISTEN_* variables are
    removed, so child processes do not mistake them for their own. Call it
    once: a second call finds nothing.
    """
    pid_text = os.environ.pop("LISTEN_PID", None)
    fds_text = os.environ.pop("LISTEN_FDS", None)
    names_text = os.environ.pop("LISTEN_FDNAMES", None)
    if not pid_text or not fds_text:
        return []
    try:
        pid = int(pid_text)
        count = int(fds_text)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID=%r LISTEN_FDS=%r", pid_text, fds_text)
        return []
    if pid != os.getpid() or count <= 0:
        return []
    names = names_text.split(":") if names_text else []
    if len(names) != count:
        names = ["unknown"] * count
    result: list[tuple[str, socket.socket]] = []
    for offset, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + offset
        # Inherited fds must not leak into processes we start.
        os.set_inheritable(fd, False)
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            for _, opened in result:
                opened.close()
            raise OSError(
                exc.errno, f"socket-activation fd {fd} ({name}) is not a socket: {exc.strerror}"
            ) from exc
        result.append((name, sock))
    return result
