"""`syncd demo` and `syncd demo --compare` as a user runs them (not on a terminal: plain
log lines), shortened: they must end with zero drift and print their tables."""

from __future__ import annotations

import os
import subprocess
import sys

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
