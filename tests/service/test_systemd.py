import asyncio
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config import API_KEY_CREDENTIAL, CONFIG_ENV, WEBHOOK_SECRET_CREDENTIAL
from syncd.service.systemd import Notifier, listen_fds_with_names, watchdog_loop
from tests.systemd_units import exposure, needs_analyze, verify

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "syncd.service"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    assert len(os.fsencode(path)) < 108, "unix socket path too long for this tmp_path"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def assert_nothing_queued(sock: socket.socket) -> None:
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(timeout)


def test_each_message(notify_socket: socket.socket) -> None:
    with Notifier() as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert receive(notify_socket) == "READY=1"
        assert notifier.ready("mirroring 3 resources")
        assert receive(notify_socket) == "READY=1\nSTATUS=mirroring 3 resources"
        assert notifier.stopping()
        assert receive(notify_socket) == "STOPPING=1"
        assert notifier.status("polling: webhooks silent for 5m")
        assert receive(notify_socket) == "STATUS=polling: webhooks silent for 5m"
        assert notifier.watchdog()
        assert receive(notify_socket) == "WATCHDOG=1"
    assert_nothing_queued(notify_socket)


def test_reloading_carries_monotonic_timestamp(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with Notifier() as notifier:
        assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", receive(notify_socket))
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_status_text_cannot_inject_assignments(notify_socket: socket.socket) -> None:
    with Notifier() as notifier:
        notifier.status("bad\nREADY=1")
    assert receive(notify_socket) == "STATUS=bad READY=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        with Notifier() as notifier:
            assert notifier.ready("up")
        assert receive(sock) == "READY=1\nSTATUS=up"


def test_environment_is_read_at_construction(notify_socket: socket.socket) -> None:
    with Notifier() as notifier:
        os.environ.pop("NOTIFY_SOCKET")
        assert notifier.watchdog()
    assert receive(notify_socket) == "WATCHDOG=1"
    assert not Notifier().enabled


def test_no_notify_socket_is_a_silent_no_op(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert caplog.records == []


def test_injected_environment() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() == 1.0


def test_send_failure_logs_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with Notifier() as notifier, caplog.at_level(logging.DEBUG, logger="syncd.service.systemd"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "nobody-listens" in caplog.records[0].getMessage()


def test_unsupported_notify_address_disables(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="syncd.service.systemd"):
        notifier = Notifier()
    assert not notifier.enabled
    assert "vsock:2:1234" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<other>"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "500"}, 0.00025),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pids = {"<self>": str(os.getpid()), "<other>": str(os.getpid() + 1)}
    resolved = {k: pids.get(v, v) for k, v in env.items()}
    assert Notifier(resolved).watchdog_interval() == expected


async def test_watchdog_loop_pings_between_sleeps(notify_socket: socket.socket) -> None:
    slept: list[float] = []
    three_pings = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            three_pings.set()
            await asyncio.Event().wait()

    with Notifier() as notifier:
        task = asyncio.create_task(watchdog_loop(notifier, 15.0, sleep=fake_sleep))
        await three_pings.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert slept == [15.0, 15.0, 15.0]
    assert [receive(notify_socket) for _ in range(3)] == ["WATCHDOG=1"] * 3
    assert_nothing_queued(notify_socket)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
async def test_watchdog_loop_rejects_bad_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="watchdog interval"):
        await watchdog_loop(Notifier({}), interval)


# --- socket activation --------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "<self>", "LISTEN_FDS": "many"},
        {"LISTEN_PID": "<self>", "LISTEN_FDS": "0"},
        {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "webhook"},
    ],
)
def test_listen_fds_not_for_us(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, str(os.getpid()) if value == "<self>" else value)
    assert listen_fds_with_names() == []
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert key not in os.environ


CHILD = r"""
import json, os, socket, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="webhook")
from syncd.config import API_KEY_CREDENTIAL, CONFIG_ENV, WEBHOOK_SECRET_CREDENTIAL
from syncd.service.systemd import listen_fds_with_names
found = listen_fds_with_names()
(name, sock), = found
conn, _ = sock.accept()
conn.sendall(json.dumps({
    "name": name,
    "fileno": sock.fileno(),
    "family": int(sock.family),
    "type": int(sock.type),
    "inheritable": os.get_inheritable(3),
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "again": len(listen_fds_with_names()),
}).encode())
conn.close()
"""


@pytest.mark.slow
def test_listen_fds_takes_inherited_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "webhook.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        fd = listener.fileno()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(fd)], pass_fds=(fd,), cwd=REPO)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(30)
                client.connect(path)
                report = json.loads(b"".join(iter(lambda: client.recv(4096), b"")))
        finally:
            assert child.wait(timeout=30) == 0
    assert report == {
        "name": "webhook",
        "fileno": 3,
        "family": int(socket.AF_UNIX),
        "type": int(socket.SOCK_STREAM),
        "inheritable": False,
        "env": [],
        "again": 0,
    }


NOT_A_SOCKET = r"""
import os
read_end, _ = os.pipe()
os.dup2(read_end, 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="webhook")
from syncd.config import API_KEY_CREDENTIAL, CONFIG_ENV, WEBHOOK_SECRET_CREDENTIAL
from syncd.service.systemd import listen_fds_with_names
try:
    listen_fds_with_names()
except OSError as exc:
    print(exc)
"""


@pytest.mark.slow
def test_listen_fds_rejects_non_socket_fd() -> None:
    out = subprocess.run(
        [sys.executable, "-c", NOT_A_SOCKET], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "socket-activation fd 3 (webhook) is not a socket" in out.stdout


SOCKET_ACTIVATED = r"""
import json, os
from syncd.config import API_KEY_CREDENTIAL, CONFIG_ENV, WEBHOOK_SECRET_CREDENTIAL
from syncd.service.systemd import listen_fds_with_names
env = {k: os.environ[k] for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
(name, sock), = listen_fds_with_names()
conn, _ = sock.accept()
conn.sendall(json.dumps({"name": name, "pid_matches": env["LISTEN_PID"] == str(os.getpid()),
                         "fds": env["LISTEN_FDS"]}).encode())
conn.close()
"""


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed"
)
def test_listen_fds_under_systemd_socket_activate(tmp_path: Path) -> None:
    path = str(tmp_path / "webhook.sock")
    cmd = ["systemd-socket-activate", "-l", path, "--fdname=webhook"]
    proc = subprocess.Popen(
        [*cmd, sys.executable, "-c", SOCKET_ACTIVATED],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        # The tool announces the socket before waiting for a connection.
        assert "Listening on" in proc.stderr.readline()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(30)
            client.connect(path)
            report = json.loads(b"".join(iter(lambda: client.recv(4096), b"")))
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert report == {"name": "webhook", "pid_matches": True, "fds": "1"}


# --- the unit file ------------------------------------------------------------


@needs_analyze
def test_unit_exposure_rating_at_most_2_5() -> None:
    rating, out = exposure(UNIT, "syncd.service")
    assert rating <= 2.5
    assert out.returncode == 0, out.stderr


@needs_analyze
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify insists the ExecStart binary exists, and /usr/local/bin/syncd is
    # an install-time path; check a copy pointing at an executable that exists.
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/syncd run --config /etc/syncd/config.toml\n" in text
    copy = tmp_path / "syncd.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/syncd ", f"ExecStart={sys.executable} "))
    # The optional socket unit activates this service; verify both together.
    socket_unit = tmp_path / "syncd.socket"
    socket_unit.write_text((UNIT.parent / "syncd.socket").read_text())
    out = verify(socket_unit, copy)
    # Unknown or misspelt keys are only warnings (exit 0), so any output fails.
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


W_XOR_X_CHILD = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit("W^X is not enforced")
import asyncio, sqlite3, ssl
import httpx, uvloop, uvicorn, starlette.applications, apscheduler, sqlite_utils, prometheus_client
import syncd.cli

async def main() -> None:
    ssl.create_default_context()
    async with httpx.AsyncClient():
        pass
    sqlite3.connect(":memory:").execute("select 1").fetchone()

uvloop.run(main())
print("ok")
"""


@pytest.mark.slow
def test_runtime_works_without_writable_executable_memory() -> None:
    # MemoryDenyWriteExecute=yes in the unit; the kernel's own W^X switch
    # (PR_SET_MDWE, Linux >= 6.3) checks the same thing without systemd.
    out = subprocess.run([sys.executable, "-c", W_XOR_X_CHILD], cwd=REPO, capture_output=True, text=True)
    if out.returncode == 77:
        pytest.skip("kernel lacks PR_SET_MDWE (Linux < 6.3)")
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr


def test_unit_wires_what_the_daemon_expects() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for wanted in (
        "Type=notify",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=syncd",
        "DynamicUser=yes",
        f"LoadCredential={API_KEY_CREDENTIAL}:/etc/syncd/credentials/{API_KEY_CREDENTIAL}",
        f"LoadCredential={WEBHOOK_SECRET_CREDENTIAL}:/etc/syncd/credentials/{WEBHOOK_SECRET_CREDENTIAL}",
        f"Environment={CONFIG_ENV}=/etc/syncd/config.toml",
    ):
        assert wanted in lines


# --- the template unit: one instance per shop ------------------------------------

TEMPLATE = REPO / "systemd" / "syncd@.service"
INSTANCE = "shop-eu"

#: Lines that differ between the two units by design; everything else is shared word for word.
PER_INSTANCE = (
    "Description=",
    "ExecStart=",
    "Environment=",
    "LoadCredential=",
    "StateDirectory=",
    "WorkingDirectory=",
)


def _directives(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _template_copy(tmp_path: Path) -> Path:
    """The template with ExecStart= pointing at an executable that exists (see above), and
    the name of the instance to check."""
    text = TEMPLATE.read_text()
    assert "ExecStart=/usr/local/bin/syncd run --config /etc/syncd/%i.toml\n" in text
    (tmp_path / "syncd@.service").write_text(
        text.replace("ExecStart=/usr/local/bin/syncd ", f"ExecStart={sys.executable} ")
    )
    return tmp_path / f"syncd@{INSTANCE}.service"


@needs_analyze
def test_template_instance_exposure_rating_at_most_2_5(tmp_path: Path) -> None:
    instance = _template_copy(tmp_path)
    rating, out = exposure(instance, f"syncd@{INSTANCE}.service")
    assert rating <= 2.5
    assert out.returncode == 0, out.stderr


@needs_analyze
def test_template_instance_verifies_cleanly(tmp_path: Path) -> None:
    instance = _template_copy(tmp_path)
    out = verify(instance)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


@needs_analyze
def test_template_verify_catches_a_misspelt_key(tmp_path: Path) -> None:
    # The clean-verify checks above mean something only if verify reads the template.
    instance = _template_copy(tmp_path)
    template = tmp_path / "syncd@.service"
    template.write_text(template.read_text().replace("UMask=0077\n", "UMask=0077\nUMaks=0077\n"))
    out = verify(instance)
    assert "Unknown key" in out.stderr
    assert "UMaks" in out.stderr


def test_template_keeps_each_instance_apart() -> None:
    lines = set(_directives(TEMPLATE))
    for wanted in (
        "ExecStart=/usr/local/bin/syncd run --config /etc/syncd/%i.toml",
        f"Environment={CONFIG_ENV}=/etc/syncd/%i.toml",
        "StateDirectory=syncd/%i",
        "WorkingDirectory=/var/lib/syncd/%i",
        f"LoadCredential={API_KEY_CREDENTIAL}:/etc/syncd/credentials/%i/{API_KEY_CREDENTIAL}",
        f"LoadCredential={WEBHOOK_SECRET_CREDENTIAL}:/etc/syncd/credentials/%i/{WEBHOOK_SECRET_CREDENTIAL}",
    ):
        assert wanted in lines


def test_template_has_the_same_hardening_as_the_single_unit() -> None:
    def shared(path: Path) -> list[str]:
        return [line for line in _directives(path) if not line.startswith(PER_INSTANCE)]

    assert shared(TEMPLATE) == shared(UNIT)
    # and the per-instance lines are the single unit's, with the instance in their paths
    single = [line for line in _directives(UNIT) if line.startswith(PER_INSTANCE)]
    template = [line for line in _directives(TEMPLATE) if line.startswith(PER_INSTANCE)]
    assert len(single) == len(template)
    for one, many in zip(single, template, strict=True):
        assert one.split("=", 1)[0] == many.split("=", 1)[0]
        assert "%i" in many
