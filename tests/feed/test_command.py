import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.feed.base import SinkError
from syncd.feed.command import CommandSink
from syncd.feed.log import ConnectionChangeLog
from syncd.feed.runner import ChangeNotifier, OnFailure, SinkRunner, Start
from syncd.store import changelog

from .support import MIRROR, FakeClock, append_orders, open_log, until

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


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, ConnectionChangeLog]]:
    conn, log = open_log(tmp_path / "mirror.db")
    yield conn, log
    conn.close()


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
    db: tuple[sqlite3.Connection, ConnectionChangeLog], tmp_path: Path
) -> None:
    conn, _ = db
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
    await CommandSink("script", [sys.executable, leaver, str(pids)], timeout=30.0).deliver(
        changelog.read_after(conn, 0, 10)
    )
    child = int(pids.read_text())
    await until(lambda: _gone(child))
