"""`systemd-analyze` on syncd's unit files, for the tests of each unit: its exposure rating
(`security --offline`) and `verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (not a systemd host)"
)


def exposure(unit: Path, name: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """The overall exposure `security --offline` rates `unit` (reported as `name`) at, and the
    run. --threshold takes tenths: 25 (2.5) makes the command fail above it."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d)", out.stdout)
    assert match is not None, out.stdout + out.stderr
    return float(match.group(1)), out


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *(str(u) for u in units)], capture_output=True, text=True, check=False
    )
