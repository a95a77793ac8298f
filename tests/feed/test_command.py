import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from syncd.feed import command
from syncd.feed.base import SinkError
from syncd.feed.command import CommandSink
from syncd.feed.log import ConnectionChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import OnFailure, SinkRunner, Start
from syncd.store import changelog

from .support import MIRROR, FakeClock, append_orders, until

# Appends each run's stdin to OUT, one JSON line per change, then a "---" line per run.
# Exits with argv[2] (default 0); exits 1 without a word to stdout if any change has
# record_id == argv[3].
HANDLER = """
import sys
out, code = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
poison = sys.argv[3] if len(sys.argv) > 3 else None
lines = sys.stdin.read().splitlines()
import json
if poison is not None and any(str(json.loads(l)["record_id"]) == poison for l in lines):
    sys.stderr.write("poisoned batch\\n")
    sys.exit(1)
with open(out, "a") as f:
    for line in lines:
        f.write(line + "\\n")
    f.write("---\\n")
if code:
    sys.stderr.write("handler failed: database is locked\\n")
sys.exit(code)
"""

# Starts a child in its own process group's session (same group), records both pids, hangs.
HANGER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{__import__('os').getpid()} {child.pid}")
time.sleep(600)
"""


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def runs(out: Path) -> list[list[dict[str, object]]]:
    batches: list[list[dict[str, object]]] = [[]]
    for line in out.read_text().splitlines():
        if line == "---":
            batches.append([])
        else:
            batches[-1].append(json.loads(line))
    return batches[:-1]


async def test_a_batch_arrives_as_json_lines(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 4))
    batch = changelog.read_after(conn, 0, 10)
    out = tmp_path / "out.jsonl"
    sink = CommandSink("script", [sys.executable, script(tmp_path, "h.py", HANDLER), str(out)])
    await sink.deliver(batch)
    [received] = runs(out)
    assert received == [json.loads(c.to_json()) for c in batch]
    assert [c["seq"] for c in received] == [1, 2, 3]
    assert all(c["mirror"] == MIRROR for c in received)


async def test_a_failing_exit_status_fails_the_batch_with_its_stderr(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 3))
    sink = CommandSink(
        "script", [sys.executable, script(tmp_path, "h.py", HANDLER), str(tmp_path / "o"), "3"]
    )
    with pytest.raises(SinkError) as failed:
        await sink.deliver(changelog.read_after(conn, 0, 10))
    assert failed.value.reason == "seqs 1-2: exit status 3: handler failed: database is locked"
    assert failed.value.delivered == 0


async def test_stderr_is_kept_only_up_to_its_cap(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    noisy = script(
        tmp_path, "noisy.py", "import sys\nsys.stderr.write('x' * 5_000_000 + 'THE END')\nsys.exit(2)\n"
    )
    sink = CommandSink("script", [sys.executable, noisy], max_stderr=1000)
    with pytest.raises(SinkError) as failed:
        await sink.deliver(changelog.read_after(conn, 0, 10))
    assert failed.value.reason.startswith("seq 1: exit status 2: x")
    assert failed.value.reason.endswith("THE END")
    assert len(failed.value.reason) < 1100


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def test_a_hanging_command_and_its_children_are_killed_past_the_timeout(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    pids = tmp_path / "pids"
    sink = CommandSink(
        "script", [sys.executable, script(tmp_path, "hang.py", HANGER), str(pids)], timeout=3.0
    )
    with pytest.raises(SinkError) as failed:
        await sink.deliver(changelog.read_after(conn, 0, 10))
    assert "still running after 3 s, killed" in failed.value.reason
    parent, child = (int(p) for p in pids.read_text().split())
    # The child is reparented and reaped by init; wait for that, not for a set time.
    await until(lambda: _gone(parent) and _gone(child))


async def test_a_command_that_cannot_start_fails(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    sink = CommandSink("script", [str(tmp_path / "missing")])
    with pytest.raises(SinkError, match="cannot run"):
        await sink.deliver(changelog.read_after(conn, 0, 10))


async def test_a_command_that_ignores_its_input_is_judged_by_its_exit_status(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 2001))  # more than a pipe holds
    batch = changelog.read_after(conn, 0, 5000)
    await CommandSink("script", [sys.executable, "-c", "pass"]).deliver(batch)
    with pytest.raises(SinkError, match="exit status 4"):
        await CommandSink("script", [sys.executable, "-c", "raise SystemExit(4)"]).deliver(batch)


def test_command_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="list of arguments"):
        CommandSink("script", "handle-orders --quiet")
    with pytest.raises(ValueError, match="list of arguments"):
        CommandSink("script", [])


async def test_runner_feeds_batches_in_order(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, log = db
    append_orders(conn, range(1, 8))
    out = tmp_path / "out.jsonl"
    sink = CommandSink("script", [sys.executable, script(tmp_path, "h.py", HANDLER), str(out)])
    clock = FakeClock()
    runner = SinkRunner(
        sink, log, ChangeNotifier(), batch_size=3, start=Start.BEGINNING, sleep=clock.sleep, clock=clock.time
    )
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.state.delivered == 7)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [[c["seq"] for c in batch] for batch in runs(out)] == [[1, 2, 3], [4, 5, 6], [7]]
    assert changelog.offset(conn, "script") == 7


async def test_skip_isolates_the_change_that_fails_a_batch(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, log = db
    append_orders(conn, range(1, 6))
    out = tmp_path / "out.jsonl"
    # Every batch holding record 3 fails; the others succeed.
    sink = CommandSink("script", [sys.executable, script(tmp_path, "h.py", HANDLER), str(out), "0", "3"])
    clock = FakeClock()
    runner = SinkRunner(
        sink,
        log,
        ChangeNotifier(),
        on_failure=OnFailure.SKIP,
        max_attempts=3,
        start=Start.BEGINNING,
        sleep=clock.sleep,
        clock=clock.time,
    )
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.state.delivered == 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    delivered = [c["seq"] for batch in runs(out) for c in batch]
    assert delivered == [1, 2, 4, 5]  # after a failure, one at a time until the culprit is found
    [dead] = changelog.sink_dead_letters(conn, "script")
    assert dead.seq == 3
    assert "poisoned batch" in dead.reason
    assert os.path.exists(out)


async def test_what_a_command_leaves_running_ends_with_its_batch(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _ = db
    # The child is killed with the command's group, not waited out.
    monkeypatch.setattr(command, "_DRAIN_GRACE", 60.0)
    append_orders(conn, [1])
    pids = tmp_path / "pids"
    # Exits 0 at once, leaving a child that holds its stderr open.
    leaver = script(
        tmp_path,
        "leave.py",
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n",
    )
    started = time.monotonic()
    await CommandSink("script", [sys.executable, leaver, str(pids)], timeout=600.0).deliver(
        changelog.read_after(conn, 0, 10)
    )
    assert time.monotonic() - started < 30
    child = int(pids.read_text())
    await until(lambda: _gone(child))


# Starts a child that leaves the process group (setsid) holding the command's stderr, writes
# its pid to argv[1], then exits with argv[2] at once or, with "hang", hangs.
ESCAPER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
with open(sys.argv[1], "w") as f:
    f.write(str(child.pid))
if sys.argv[2] == "hang":
    time.sleep(600)
sys.exit(int(sys.argv[2]))
"""


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _written(path: Path) -> str:
    await until(lambda: path.exists() and bool(path.read_text()))
    return path.read_text()


async def test_cancelling_a_delivery_kills_the_group_and_reaps_before_it_returns(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    pids = tmp_path / "pids"
    sink = CommandSink(
        "script", [sys.executable, script(tmp_path, "hang.py", HANGER), str(pids)], timeout=600.0
    )
    task = asyncio.create_task(sink.deliver(changelog.read_after(conn, 0, 10)))
    parent, child = (int(p) for p in (await _written(pids)).split())
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Promptly: nothing waits for the timeout (600 s) or a poll interval of note.
    assert time.monotonic() - started < 5
    # The command is reaped by the time the cancellation completes, not merely killed.
    assert not os.path.exists(f"/proc/{parent}")
    await until(lambda: _gone(child))


async def test_cancelling_returns_even_if_a_process_that_left_the_group_holds_stderr(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _ = db
    # Longer than the test may take: returning is the cancellation's doing, not the grace's.
    monkeypatch.setattr(command, "_DRAIN_GRACE", 600.0)
    append_orders(conn, [1])
    pids = tmp_path / "pids"
    sink = CommandSink(
        "script", [sys.executable, script(tmp_path, "esc.py", ESCAPER), str(pids), "hang"], timeout=600.0
    )
    task = asyncio.create_task(sink.deliver(changelog.read_after(conn, 0, 10)))
    escaped = int(await _written(pids))
    try:
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 5
    finally:
        _kill(escaped)


async def test_a_process_that_left_the_group_does_not_hold_the_batch_up(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    pids = tmp_path / "pids"
    sink = CommandSink(
        "script", [sys.executable, script(tmp_path, "esc.py", ESCAPER), str(pids), "0"], timeout=600.0
    )
    started = time.monotonic()
    try:
        # The command exited 0: delivered, after a short grace for the stderr left open.
        await sink.deliver(changelog.read_after(conn, 0, 10))
        assert time.monotonic() - started < 30
    finally:
        _kill(int(pids.read_text()))


async def test_endless_stderr_is_kept_only_up_to_its_cap_until_the_timeout(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    flood = "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n"
    sink = CommandSink("script", [sys.executable, "-c", flood], timeout=1.0, max_stderr=1000)
    with pytest.raises(SinkError) as failed:
        await sink.deliver(changelog.read_after(conn, 0, 10))
    head = "seq 1: still running after 1 s, killed: "
    assert failed.value.reason == head + "x" * 1000


@pytest.mark.parametrize("kind", ["missing", "not executable"])
async def test_a_command_that_cannot_start_fails_naming_it(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path, kind: str
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    command = tmp_path / "handler"
    if kind == "not executable":
        command.write_text("#!/bin/sh\nexit 0\n")
    sink = CommandSink("script", [str(command), "--quiet"])
    with pytest.raises(SinkError) as failed:
        await sink.deliver(changelog.read_after(conn, 0, 10))
    why = "No such file or directory" if kind == "missing" else "Permission denied"
    assert failed.value.reason == f"seq 1: cannot run {str(command)!r}: {why}"


@pytest.mark.parametrize(
    "ignorer",
    [
        # Takes a while, then exits without a look at its input.
        "import time; time.sleep(0.5)",
        # Exits at once, leaving a child that holds stdin (never reading it) and stderr.
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])",
    ],
    ids=["slow", "child holds stdin"],
)
async def test_a_command_that_ignores_a_large_input_is_judged_by_its_exit_status(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], ignorer: str
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 2001))  # more than a pipe holds
    batch = changelog.read_after(conn, 0, 5000)
    started = time.monotonic()
    await CommandSink("script", [sys.executable, "-c", ignorer], timeout=600.0).deliver(batch)
    assert time.monotonic() - started < 30
    with pytest.raises(SinkError, match="exit status 4"):
        await CommandSink("script", [sys.executable, "-c", ignorer + "; raise SystemExit(4)"]).deliver(batch)


async def test_the_command_gets_its_environment_and_directory_and_is_reaped(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
    append_orders(conn, [1])
    out = tmp_path / "seen.json"
    seen = (
        "import json, os, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps([os.getpid(), dict(os.environ), os.getcwd(), "
        "os.getpgid(0) == os.getpid()]))\n"
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    sink = CommandSink("script", [sys.executable, "-c", seen], env={"ONLY": "this"}, cwd=str(workdir))
    await sink.deliver(changelog.read_after(conn, 0, 10))
    pid, environ, cwd, leader = json.loads(out.read_text())
    environ.pop("LC_CTYPE", None)  # Python's C locale coercion may add it
    assert environ == {"ONLY": "this"}
    assert cwd == str(workdir)
    assert leader  # a process group of its own
    assert not os.path.exists(f"/proc/{pid}")  # reaped: no zombie left behind


async def test_batch_after_batch_leaves_no_process_or_thread_behind(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 101))
    batch = changelog.read_after(conn, 0, 100)
    threads = threading.active_count()
    sink = CommandSink("script", ["cat"])
    for _ in range(50):
        await sink.deliver(batch)
    await until(lambda: threading.active_count() == threads)
    assert _children() == []


def _children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                    found.append(int(entry))
    return found
