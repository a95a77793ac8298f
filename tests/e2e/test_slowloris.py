"""`syncd run` under a slowloris: hundreds of connections that never finish a request must
not keep a signed delivery from its acknowledgement, and are closed after the header timeout."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import (
    WEBHOOK_PATH,
    DaemonProcess,
    SimProcess,
    order_created,
    wait_until,
)

pytestmark = pytest.mark.slow

CONNECTIONS = 500
#: Sockets of the test, the daemon's share of the same limit, and headroom for both.
NEEDED_FDS = 2 * CONNECTIONS + 256


@pytest.fixture
def enough_file_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < NEEDED_FDS:
        if hard != resource.RLIM_INFINITY and hard < NEEDED_FDS:
            pytest.skip(f"needs {NEEDED_FDS} file descriptors, the hard limit is {hard}")
        # Raised before the daemon starts, so it inherits the new limit too.
        resource.setrlimit(resource.RLIMIT_NOFILE, (NEEDED_FDS, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _delivery(order_id: int) -> tuple[bytes, dict[str, str]]:
    return order_created(f"evt_slowloris_{order_id}", order_id, customer="slow@example.com")


def _drip(sockets: list[socket.socket], stop: threading.Event) -> None:
    """A header byte now and then on each socket, never the end of the head."""
    while not stop.wait(0.2):
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.send(b"a")


@pytest.mark.usefixtures("enough_file_descriptors")
def test_idle_and_slow_connections_do_not_starve_a_signed_delivery(
    start_sim: Callable[..., SimProcess], start_daemon: Callable[..., DaemonProcess]
) -> None:
    sim = start_sim("--rate", "0")
    daemon = start_daemon(sim, webhook={"header_timeout": "8s"})
    assert daemon.webhook_url is not None
    address = urlsplit(daemon.webhook_url)
    assert address.hostname is not None
    assert address.port is not None
    held: list[socket.socket] = []
    stop = threading.Event()
    dripper: threading.Thread | None = None
    try:
        for i in range(CONNECTIONS):
            sock = socket.create_connection((address.hostname, address.port), timeout=10)
            if i % 5 == 0:
                # Slowloris: a request that starts and then only ever trickles.
                sock.sendall(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
            held.append(sock)
        dripper = threading.Thread(target=_drip, args=(held[::5], stop), daemon=True)
        dripper.start()

        body, headers = _delivery(4242)
        # The functional bound of the acceptance check: a provider gives up on slow answers.
        response = httpx.post(daemon.webhook_url, content=body, headers=headers, timeout=1.0)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted"}
        wait_until(lambda: "4242" in daemon.mirror()["orders"], 15, what="the delivered order in the mirror")

        # Every held connection is closed by the daemon once its header timeout has passed.
        deadline = time.monotonic() + 25
        for sock in held:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        stop.set()
        if dripper is not None:
            dripper.join(5)
        for sock in held:
            sock.close()

    body, headers = _delivery(4243)
    response = httpx.post(daemon.webhook_url, content=body, headers=headers, timeout=5.0)
    assert response.status_code == 200
    wait_until(lambda: "4243" in daemon.mirror()["orders"], 15, what="the next order in the mirror")
    assert daemon.proc.poll() is None
