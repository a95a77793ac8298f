"""Every fault the contract allows, at once, for a sustained workload: the daemon in push mode
must end with zero drift, as `syncd verify` sees it and as the simulator's ground truth says."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.e2e.conftest import DaemonProcess, SimProcess, wait_until

#: Scales workload sizes of the end-to-end tests (CI keeps 1; bench/ runs the big versions).
SCALE = float(os.environ.get("SYNCD_E2E_SCALE", "1"))

pytestmark = pytest.mark.slow


def live_mirror_equals_truth(daemon: DaemonProcess, sim: SimProcess) -> bool:
    return daemon.mirror() == sim.truth()


def test_every_fault_at_once_converges_to_zero_drift(
    start_sim: Callable[..., SimProcess], start_daemon: Callable[..., DaemonProcess]
) -> None:
    # The harsh preset turns every delivery and API fault on (lost, duplicated, delayed and
    # thin deliveries; 429 with Retry-After, 5xx, hanging requests, short pages, expired
    # cursors), plus visibility lag and retries on a fast clock. Only the 403 knob stays off:
    # a key without scope is an operator error no sync can converge through.
    sim = start_sim(
        "--faults", "harsh",
        "--hang-seconds", "2s",
        "--retry-after", "1",
        "--max-lag", "1s",
        "--time-scale", "0.01",
        "--rate", "40",
        "--seed", "7",
        "--preload-customers", "30",
        "--preload-orders", "100",
        "--cursor-ttl", "20s",
    )  # fmt: skip
    daemon = start_daemon(
        sim,
        # The simulator's --max-lag: relists wait that long, not the real API's 10 s, before
        # they may tombstone what the workload hard-deleted.
        api={"timeout": "1s", "connect_timeout": "1s", "visibility_lag": "1s"},
        poll={
            "interval": "1s",
            "safety_interval": "4s",
            "lookback": "2s",
            "page_size": 50,
            "full_relist_interval": "5s",
            "jitter": "0s",
        },
        fallback={"silence": "2s", "missed_ratio": 0.1, "recover_after": 2},
    )
    assert daemon.webhook_url is not None
    sim.register_webhook(daemon.webhook_url)

    target = int(400 * SCALE)
    wait_until(
        lambda: sim.stats()["events_total"] >= target, 120, interval=0.5, what=f"{target} events upstream"
    )
    sim.control(action="quiesce", timeout=30, drop_retries=True)

    stats = sim.stats()
    webhooks, requests = stats["webhooks"], stats["requests"]
    # Prove the faults really happened, so a quiet run cannot pass for a hard one.
    for counter in ("dropped_fault", "duplicated", "delayed", "thin"):
        assert webhooks.get(counter, 0) > 0, f"no {counter} deliveries: {webhooks}"
    statuses = {key.rsplit(" ", 1)[1] for key in requests}
    assert "429" in statuses, requests
    assert statuses & {"500", "502", "503", "504"}, requests
    assert stats["deletions"].get("customers", 0) > 0, "no customer was hard-deleted"

    wait_until(
        lambda: live_mirror_equals_truth(daemon, sim),
        90,
        interval=0.5,
        what="zero drift against ground truth",
    )
    verify = daemon.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The upstream never sends an invalid payload, so nothing may have been dead-lettered.
    assert daemon.status()["dead_letters"]["total"] == 0
