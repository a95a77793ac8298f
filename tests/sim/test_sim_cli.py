"""`syncd simulate` as a real process: ready line, webhook auto-registration, clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from syncd.sim.cli import READY_PREFIX, simulate
from tests.sim.conftest import Receiver

_RUN = "from syncd.sim.cli import simulate; simulate()"


def _start(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-c", _RUN, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(READY_PREFIX):
            return proc, lines
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"no ready line; stdout={lines} stderr={err}")


@pytest.mark.slow
def test_simulate_process_serves_registers_and_stops_cleanly(receiver: Receiver) -> None:
    proc, lines = _start(
        "--api-key", "k1", "--rate", "50", "--max-lag", "300ms", "--webhook-url", receiver.url,
        "--preload-orders", "100", "--faults", "none", "--duplicate-rate", "0",
    )  # fmt: skip
    try:
        url = lines[-1].removeprefix(READY_PREFIX)
        assert lines[0].startswith("webhook secret for wh_")
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer k1"}) as client:
            assert len(client.get("/orders", params={"limit": 1000}).json()["data"]) >= 100
            hooks = client.get("/webhooks").json()["data"]
            assert [h["url"] for h in hooks] == [receiver.url]
        receiver.wait_for(lambda got: any(r.json["event"] != "webhook.test" for r in got))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def test_bad_options_are_usage_errors() -> None:
    runner = CliRunner()
    assert runner.invoke(simulate, ["--faults", "apocalypse"]).exit_code == 2
    assert runner.invoke(simulate, ["--max-lag", "soon"]).exit_code == 2
    assert runner.invoke(simulate, ["--drop-rate", "2"]).exit_code == 2
    assert runner.invoke(simulate, ["--events", "order.exploded"]).exit_code == 2
    assert runner.invoke(simulate, ["--time-scale", "0"]).exit_code == 2
