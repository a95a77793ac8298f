"""`syncd sinks list` and `syncd sinks reset` on real store files: offsets, lag and open dead
letters; a reset written directly when no daemon runs, handed to the daemon (SIGHUP) when
one holds the store's lock, refused when the daemon cannot be asked, withdrawn when it does
not answer. The daemon is a stand-in process that holds the lock as `syncd run` does."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.ops.sink_offsets import SinkResetError, reset_offset
from syncd.store import changelog
from syncd.store.db import Store
from syncd.store.guard import StoreLock, lock_path
from syncd.store.schema import META_SINK_RESET

from .feed_support import REPO, http_sink, invoke, open_store, order, store_path, write, write_config

SINKS = [http_sink("app"), {"name": "script", "type": "exec", "command": ["/bin/true"]}]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write(tmp_path, [order(rid, 1) for rid in range(1, 11)])  # seqs 1-10
    return write_config(tmp_path, SINKS)


def offset(tmp_path: Path, sink: str) -> int | None:
    with open_store(tmp_path) as store:
        return changelog.offset(store.conn, sink)


def reset_key(tmp_path: Path, sink: str) -> str | None:
    with open_store(tmp_path) as store:
        return store.get_meta(META_SINK_RESET + sink)


def test_list_shows_offsets_lag_and_open_dead_letters(config: Path, tmp_path: Path) -> None:
    with open_store(tmp_path) as store, store.db.atomic():
        changelog.set_offset(store.conn, "app", 7)
        first, second, third = changelog.read_after(store.conn, 0, 3)
        changelog.add_sink_dead_letter(store.conn, "app", first, "HTTP 500")
        replayed = changelog.add_sink_dead_letter(store.conn, "app", second, "HTTP 500")
        changelog.mark_dead_letter_replayed(store.conn, replayed, changelog.REPLAY_DELIVERED)
        failed = changelog.add_sink_dead_letter(store.conn, "app", third, "HTTP 500")
        changelog.mark_dead_letter_replayed(store.conn, failed, changelog.REPLAY_FAILED)
    result = invoke(config, "sinks", "list", "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("{")
    report = json.loads(result.stdout)
    assert report == {
        "head": 10,
        "sinks": [
            {"name": "app", "type": "http", "delivered": 7, "lag": 3, "dead_letters": 2},
            {"name": "script", "type": "exec", "delivered": None, "lag": None, "dead_letters": 0},
        ],
    }
    table = invoke(config, "sinks", "list")
    assert table.exit_code == 0
    assert "head of the log: 10" in table.stdout
    assert "not started this sink yet" in table.stdout


def test_list_without_sinks_says_so(tmp_path: Path) -> None:
    Store(store_path(tmp_path)).close()
    result = invoke(write_config(tmp_path), "sinks", "list")
    assert result.exit_code == 0
    assert "no sinks configured" in result.stdout


def test_reset_without_a_daemon_writes_the_offset(config: Path, tmp_path: Path) -> None:
    first = invoke(config, "sinks", "reset", "app", "--to", "4")
    assert first.exit_code == 0, first.output
    assert "sink app: offset - -> 4 (directly)" in first.stdout
    assert offset(tmp_path, "app") == 4
    to_head = invoke(config, "sinks", "reset", "app", "--to", "head")
    assert "offset 4 -> 10" in to_head.stdout
    to_start = invoke(config, "sinks", "reset", "app", "--to", "0")
    assert "offset 10 -> 0" in to_start.stdout
    assert offset(tmp_path, "app") == 0
    # The command's own hold on the lock is gone: a daemon can start.
    lock = StoreLock(str(store_path(tmp_path)))
    lock.acquire()
    lock.release()


def test_reset_of_an_unknown_sink_lists_the_configured_ones(config: Path, tmp_path: Path) -> None:
    result = invoke(config, "sinks", "reset", "ap", "--to", "0")
    assert result.exit_code == 2
    assert "no sink named 'ap'" in result.stderr
    assert "configured: app, script" in result.stderr
    assert offset(tmp_path, "ap") is None


@pytest.mark.parametrize(("target", "problem"), [("11", "past the head of the log (10)"), ("-1", "neither")])
def test_reset_to_a_seq_that_is_not_there_is_a_usage_error(config: Path, target: str, problem: str) -> None:
    result = invoke(config, "sinks", "reset", "app", "--to", target)
    assert result.exit_code == 2
    assert problem in result.stderr


def test_reset_on_no_store_creates_none(tmp_path: Path) -> None:
    result = invoke(write_config(tmp_path, SINKS), "sinks", "reset", "app", "--to", "0")
    assert result.exit_code == 1
    assert "no store at" in result.stderr
    assert not store_path(tmp_path).exists()


def test_reset_before_pruned_changes_says_they_are_gone(config: Path, tmp_path: Path) -> None:
    with open_store(tmp_path) as store, store.db.atomic():
        changelog.prune(store.conn, before_at="9999", keep_after_seq=5)
    result = invoke(config, "sinks", "reset", "app", "--to", "0")
    assert result.exit_code == 0
    assert "changes up to 5 were pruned" in result.stderr


# -- a daemon holds the lock ----------------------------------------------------------------


@pytest.fixture
def lock_without_pid(tmp_path: Path) -> Iterator[None]:
    """The store's lock held with no pid in the file (flock conflicts between two opens of
    the file even within one process)."""
    fd = os.open(lock_path(str(store_path(tmp_path))), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield
    os.close(fd)


@pytest.mark.usefixtures("lock_without_pid")
def test_a_daemon_without_a_pid_cannot_be_asked(config: Path, tmp_path: Path) -> None:
    result = invoke(config, "sinks", "reset", "app", "--to", "3")
    assert result.exit_code == 1
    assert "stop the daemon" in result.stderr
    assert reset_key(tmp_path, "app") is None
    assert offset(tmp_path, "app") is None


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[StoreLock]:
    lock = StoreLock(str(store_path(tmp_path)))
    lock.acquire()
    yield lock
    lock.release()


@pytest.mark.usefixtures("held_lock")
def test_the_running_daemon_is_asked_and_its_answer_printed(config: Path, tmp_path: Path) -> None:
    sent: list[tuple[int, int]] = []

    def daemon_takes_it(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        with open_store(tmp_path) as store, store.db.atomic():
            changelog.set_offset(store.conn, "app", int(store.get_meta(META_SINK_RESET + "app") or -1))
            store.delete_meta(META_SINK_RESET + "app")

    result = reset_offset(store_path(tmp_path), "app", 6, timeout=5, send_signal=daemon_takes_it)
    assert sent == [(os.getpid(), signal.SIGHUP)]
    assert (result.old, result.new, result.daemon_pid) == (None, 6, os.getpid())


@pytest.mark.usefixtures("held_lock")
def test_a_reset_the_daemon_does_not_take_is_withdrawn(config: Path, tmp_path: Path) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(SinkResetError, match="did not take the reset of sink 'app' within 2s"):
        reset_offset(
            store_path(tmp_path), "app", 6, timeout=2, clock=lambda: now[0], sleep=sleep,
            send_signal=lambda pid, sig: None,
        )  # fmt: skip
    assert now[0] >= 2
    assert reset_key(tmp_path, "app") is None
    assert offset(tmp_path, "app") is None


def test_a_daemon_that_is_gone_is_reported(config: Path, tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    fd = os.open(lock_path(str(store_path(tmp_path))), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{gone.pid}\n".encode())
        result = invoke(config, "sinks", "reset", "app", "--to", "3")
    finally:
        os.close(fd)
    assert result.exit_code == 1
    assert f"cannot signal the daemon (pid {gone.pid})" in result.stderr
    assert reset_key(tmp_path, "app") is None


class StandIn:
    """tests/cli/standin_daemon.py as a process holding the store's lock."""

    def __init__(self, store: Path, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli.standin_daemon", str(store), mode],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n"

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.slow
def test_a_running_daemon_makes_the_reset_on_sighup(config: Path, tmp_path: Path) -> None:
    invoke(config, "sinks", "reset", "app", "--to", "9")
    with StandIn(store_path(tmp_path), "apply") as daemon:
        result = invoke(config, "sinks", "reset", "app", "--to", "2", "--timeout", "20")
        assert daemon.line() == "hup app=2\n"
    assert result.exit_code == 0, result.output
    assert f"sink app: offset 9 -> 2 (by the daemon (pid {daemon.proc.pid}))" in result.stdout
    assert offset(tmp_path, "app") == 2
    assert reset_key(tmp_path, "app") is None


@pytest.mark.slow
def test_a_running_daemon_that_ignores_the_reset_times_out(config: Path, tmp_path: Path) -> None:
    with StandIn(store_path(tmp_path), "ignore") as daemon:
        result = invoke(config, "sinks", "reset", "app", "--to", "2", "--timeout", "0.3")
        assert daemon.line() == "hup \n"
    assert result.exit_code == 1
    assert "did not take the reset" in result.stderr
    assert "withdrawn" in result.stderr
    assert reset_key(tmp_path, "app") is None
    assert offset(tmp_path, "app") is None


@pytest.mark.usefixtures("held_lock")
def test_a_reset_the_daemon_refuses_is_reported(config: Path, tmp_path: Path) -> None:
    def daemon_refuses(pid: int, sig: int) -> None:
        # As the daemon does with a reset it cannot make: the key goes, the offset stays.
        with open_store(tmp_path) as store, store.db.atomic():
            store.delete_meta(META_SINK_RESET + "app")

    with pytest.raises(SinkResetError, match="offset is still none, not 6: its log says why"):
        reset_offset(store_path(tmp_path), "app", 6, timeout=5, send_signal=daemon_refuses)
