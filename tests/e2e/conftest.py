"""Process helpers for end-to-end tests: the simulator and `syncd run` as real subprocesses,
a test-owned NOTIFY_SOCKET, and waiting on conditions with deadlines (never fixed sleeps).

Fixtures:
- `start_sim(**options)` -> SimProcess: `syncd simulate --port 0 ...`; `.url`, `.control()`,
  `.truth()`, `.stats()`, `.register_webhook()`.
- `start_daemon(sim, **sections)` -> DaemonProcess: `syncd run` with a generated TOML config
  (JSON logs) in a temp dir; `.admin_url`, `.webhook_url` (from its ready log line),
  `.logs()`, `.wait_log()`, `.status()`, `.mirror()`, `.signal()`, `.wait_exit()`,
  `.write_config()`.
- `notify_socket` -> NotifySocket: an AF_UNIX datagram socket to pass as NOTIFY_SOCKET;
  `.wait_for("READY=1")` returns the message that carried it.
Every process a fixture starts is stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from syncd.config import load_config
from syncd.demo import daemon_process
from syncd.ops.status import collect_status
from syncd.signatures import sign
from syncd.sim.cli import READY_PREFIX
from syncd.timefmt import format_epoch

T = TypeVar("T")
API_KEY = "e2e-api-key"
WEBHOOK_SECRET = "e2e-webhook-secret"
WEBHOOK_PATH = "/webhooks/petstore"
#: Generous: a loaded 2-core CI machine starts a Python process in seconds, not milliseconds.
START_TIMEOUT = 30.0


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 15.0,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except (OSError, httpx.HTTPError, sqlite3.Error) as exc:
            # Processes starting or stopping answer with connection errors for a moment.
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def order_created(
    event_id: str,
    order_id: int,
    *,
    customer: str = "e2e@example.com",
    total: float = 1.0,
    stamp: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A signed `order.created` delivery (petstore scheme) of a new placed order, stamped
    `stamp` (now by default) and signed at `timestamp` (now by default): body and headers."""
    stamp = stamp or format_epoch()
    record = {
        "id": order_id,
        "customer": customer,
        "status": "placed",
        "total": total,
        "currency": "USD",
        "items": [],
        "createdAt": stamp,
        "updatedAt": stamp,
        "version": 1,
    }
    body = json.dumps(
        {"eventId": event_id, "event": "order.created", "timestamp": stamp, "data": record}
    ).encode()
    signed_at = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        **sign("petstore", WEBHOOK_SECRET, body, msg_id=event_id, timestamp=signed_at),
    }
    return body, headers


def to_toml(sections: dict[str, Any]) -> str:
    """Just enough TOML for syncd configs: tables of strings, numbers, booleans, lists; a
    list of tables (`sinks`) is an array of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []
    for name, table in sections.items():
        for item in table if isinstance(table, list) else [table]:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines.extend(f"{k} = {value(v)}" for k, v in item.items())
            lines.append("")
    return "\n".join(lines)


class NotifySocket:
    """Receives sd_notify datagrams like systemd would; every message is kept in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return
            self.messages.append((time.monotonic(), data.decode()))

    def received(self) -> list[str]:
        self._drain()
        return [m for _, m in self.messages]

    def wait_for(self, assignment: str, timeout: float = START_TIMEOUT, *, after: int = 0) -> str:
        """The first message from index `after` on with a line equal to `assignment`."""

        def find() -> str | None:
            for message in self.received()[after:]:
                if assignment in message.split("\n"):
                    return message
            return None

        return wait_until(find, timeout, interval=0.01, what=f"{assignment} on NOTIFY_SOCKET")

    def times_of(self, assignment: str) -> list[float]:
        self._drain()
        return [t for t, m in self.messages if assignment in m.split("\n")]

    def close(self) -> None:
        self._sock.close()


class SimProcess:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "simulate", "--port", "0", "--api-key", API_KEY, *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.url = self._read_url()
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def _read_url(self) -> str:
        found: list[str] = []

        def reader() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(READY_PREFIX):
                    found.append(line[len(READY_PREFIX) :].strip())
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(START_TIMEOUT)
        if not found:
            self.stop()
            raise AssertionError(f"simulator did not start: {self.log_path.read_text()[-2000:]}")
        return found[0]

    def control(self, **command: Any) -> dict[str, Any]:
        # A command that waits (quiesce's `timeout`) may answer only after it: wait longer.
        waits = float(command.get("timeout", 0))
        response = self.http.post("/_sim/control", json=command, timeout=max(10.0, waits + 10.0))
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def truth(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = self.http.get("/_sim/state").raise_for_status().json()
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get("/_sim/stats").raise_for_status().json()
        return result

    def register_webhook(self, url: str, secret: str = WEBHOOK_SECRET) -> dict[str, Any]:
        response = self.http.post(
            "/webhooks",
            json={"url": url, "events": ["*"], "secret": secret},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(AttributeError):
            self.http.close()
        self._log.close()


def daemon_sections(sim_url: str, workdir: Path, mode: str = "push") -> dict[str, dict[str, Any]]:
    """A config for fast tests: short intervals, free ports, JSON logs."""
    return {
        "api": {"base_url": sim_url, "timeout": "5s"},
        "store": {"path": str(workdir / "mirror.db")},
        "sync": {"mode": mode},
        "poll": {
            "interval": "1s",
            "safety_interval": "30s",
            "lookback": "2s",
            "page_size": 200,
            "jitter": "0s",
        },
        "webhook": {"listen": "127.0.0.1:0", "path": WEBHOOK_PATH},
        "fallback": {"silence": "30s", "missed_ratio": 0.1, "recover_after": 2},
        "admin": {"listen": "127.0.0.1:0"},
        "log": {"level": "info", "format": "json"},
    }


class DaemonProcess(daemon_process.DaemonProcess):
    """The daemon a test runs: a generated config in `workdir`, the test credentials in a
    clean environment (no systemd variables of the test runner), and ways to read it."""

    def __init__(
        self,
        workdir: Path,
        sections: dict[str, dict[str, Any]],
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.workdir = workdir
        self.sections = sections
        config_path = workdir / "syncd.toml"
        self.config_path = config_path
        self.write_config(sections)
        # `status()` reads through its own file, so a test may break the daemon's on purpose.
        self._status_config = workdir / "status.toml"
        self._status_config.write_text(to_toml({"store": sections["store"], "sync": sections["sync"]}))
        log_path = workdir / "daemon.log"
        # A daemon started again in the same workdir begins its own log: ready lines and
        # listeners of the one before must not be read as its own.
        log_path.write_text("")
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
        }
        full_env.update(
            {"PETSTORE_API_KEY": API_KEY, "PETSTORE_WEBHOOK_SECRET": WEBHOOK_SECRET, "PYTHONUNBUFFERED": "1"}
        )
        full_env.update(env or {})
        super().__init__(config_path, full_env, log_path)
        self.admin_url = ""
        self.webhook_url: str | None = None
        if wait_ready:
            ready = self.wait_log(lambda r: "listeners" in r, START_TIMEOUT, what="the daemon's ready line")
            self.admin_url = ready["listeners"]["admin"]
            self.webhook_url = ready["listeners"].get("webhook")

    def write_config(self, sections: dict[str, dict[str, Any]] | str) -> None:
        text = sections if isinstance(sections, str) else to_toml(sections)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (anything else, e.g. a crash trace, as {"raw": line})."""
        records: list[dict[str, Any]] = []
        for line in self.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"raw": line})
        return records

    def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0, *, what: str = "a log line"
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for record in self.logs():
                if predicate(record):
                    return record
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n"
                    + self.log_path.read_text()[-3000:]
                )
            return None

        return wait_until(find, timeout, what=what)

    def status(self) -> dict[str, Any]:
        cfg = load_config(self._status_config, env={}, require_secrets=False)
        return collect_status(cfg)

    def mirror(self) -> dict[str, dict[str, int]]:
        """Live records per resource as {id: version}, read like the simulator's truth."""
        conn = sqlite3.connect(f"file:{self.workdir / 'mirror.db'}?mode=ro", uri=True)
        try:
            return {
                name: {
                    str(rid): int(v)
                    for rid, v in conn.execute(f"SELECT id, _version FROM {name} WHERE _deleted=0")
                }
                for name in ("orders", "customers", "inventory")
            }
        finally:
            conn.close()

    def verify(self, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """`syncd verify` with this daemon's config, as an operator would run it."""
        return subprocess.run(
            [sys.executable, "-m", "syncd", "verify", "--config", str(self.config_path)],
            env={**os.environ, "PETSTORE_API_KEY": API_KEY, "PETSTORE_WEBHOOK_SECRET": WEBHOOK_SECRET},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def metrics_text(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).raise_for_status().text

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit within {timeout:g}s") from None


def mirror_covers(truth: dict[str, dict[str, int]], mirror: dict[str, dict[str, int]]) -> bool:
    """Every record the API has is in the mirror at the same version. (Hard-deleted customers
    stay in the mirror until a full relist tombstones them, so extras are allowed.)"""
    return all(mirror.get(r, {}).get(rid) == v for r, records in truth.items() for rid, v in records.items())


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def start(*args: str) -> SimProcess:
        sim = SimProcess(list(args), tmp_path / f"sim{len(started)}.log")
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(
        sim: SimProcess,
        *,
        mode: str = "push",
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        **overrides: dict[str, Any],
    ) -> DaemonProcess:
        workdir = tmp_path / f"daemon{len(started)}"
        workdir.mkdir()
        sections = daemon_sections(sim.url, workdir, mode)
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        daemon = DaemonProcess(workdir, sections, env=env, wait_ready=wait_ready)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="syncd-notify-"))
    sock = NotifySocket(directory / "notify.sock")
    yield sock
    sock.close()
    (directory / "notify.sock").unlink(missing_ok=True)
    directory.rmdir()
