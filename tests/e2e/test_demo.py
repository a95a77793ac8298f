"""`syncd demo` and `syncd demo --compare` as a user runs them (not on a terminal: plain
log lines), shortened: they must end with zero drift and print their tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", "demo", "--rate", "20", "--poll-interval", "2s", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_demo_converges_and_prints_the_verdict() -> None:
    done = run_demo("--duration", "6s", "--faults", "default")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "[push] t=0s" in out, "plain progress lines when stdout is not a terminal"
    assert "Verdict (push mode)" in out
    for resource in ("orders", "customers", "inventory"):
        row = next(line for line in out.splitlines() if line.strip("│ ").startswith(resource))
        assert row.count("matches") == 2, row  # syncd verify and the ground truth
    assert "drift" not in out.split("Verdict", 1)[1].split("The mirror is at", 1)[0]
    assert "sqlite-utils rows" in out


def test_demo_compare_prints_push_and_poll_side_by_side() -> None:
    done = run_demo("--duration", "4s", "--faults", "none", "--compare")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Verdict (push mode)" in out
    assert "Verdict (poll mode)" in out
    table = out.split("versus poll-only", 1)[1]
    for measure in (
        "API requests made",
        "requests per change",
        "bytes transferred",
        "p50",
        "p99",
        "final drift",
    ):
        assert measure in table
    drift_row = next(line for line in table.splitlines() if "final drift" in line)
    assert drift_row.replace("│", " ").split()[-2:] == ["0", "0"], drift_row


def children_of(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_demo_stopped_by_a_signal_stops_its_daemon(sig: signal.Signals) -> None:
    """A closed terminal or a kill reaches the demo alone (the daemon has its own session):
    the demo must stop the daemon on its way out, as Ctrl-C does."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "syncd", "demo", "--duration", "120s", "--rate", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("[push] t=0s"):
                break
        daemons = children_of(demo.pid)
        assert daemons, "the demo should have started a daemon"
        demo.send_signal(sig)
        out, _ = demo.communicate(timeout=60)
        assert demo.returncode == 130
        assert "stopped cleanly" in out
        assert "Traceback" not in out
        for pid in daemons:
            assert not Path(f"/proc/{pid}").exists(), f"daemon {pid} outlived the demo"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
