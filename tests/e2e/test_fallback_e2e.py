"""Push mode falls back to polling when webhooks fail, and returns when they recover."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import DaemonProcess, SimProcess, mirror_covers, wait_until

pytestmark = pytest.mark.slow

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(daemon.metrics_text()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def mode(daemon: DaemonProcess) -> dict[str, Any]:
    current: dict[str, Any] = daemon.status()["mode"]
    return current


def switch_log(daemon: DaemonProcess, to: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("mode") == to and str(r.get("msg", "")).startswith("mode ")


def test_silence_falls_back_converges_and_returns_to_push(
    start_sim: StartSim, start_daemon: StartDaemon
) -> None:
    # Lag above a poll's race window with webhooks, below the lookback.
    sim = start_sim("--rate", "0", "--max-lag", "500ms", "--seed", "3")
    daemon = start_daemon(
        sim,
        poll={"interval": "500ms", "safety_interval": "30s"},
        fallback={"silence": "1500ms", "missed_ratio": 0.1, "recover_after": 2},
    )
    assert daemon.webhook_url is not None
    sim.register_webhook(daemon.webhook_url)
    sim.control(rate=15)
    wait_until(lambda: daemon.status()["events"].get("applied", 0) >= 10, 15, what="webhooks applied")
    assert mode(daemon)["current"] == "push"

    # The endpoint goes dark: deliveries are lost while the shop keeps changing.
    sim.control(action="pause_webhooks", mode="drop")
    fallback = daemon.wait_log(switch_log(daemon, "fallback"), 15, what="switch to fallback")
    assert fallback["reason"].startswith("silence")
    status = mode(daemon)
    assert status["current"] == "fallback"
    assert status["reason"].startswith("silence")
    assert daemon.status()["fallback_switches"] == 1
    assert metric(daemon, "syncd_mode", mode="fallback") == 1
    daemon.wait_log(lambda r: r.get("msg") == "poll interval is now 0.5s", 5)

    # Polling alone brings the mirror up to date.
    sim.control(action="pause_workload")
    sim.control(action="flush_visibility")
    wait_until(lambda: mirror_covers(sim.truth(), daemon.mirror()), 15, what="mirror converges by polling")

    # Deliveries resume: healthy checks in a row bring push back.
    sim.control(action="resume_webhooks")
    sim.control(action="resume_workload")
    recovered = daemon.wait_log(switch_log(daemon, "push"), 20, what="return to push")
    assert recovered["reason"].startswith("recovered")
    assert mode(daemon)["current"] == "push"
    assert daemon.status()["fallback_switches"] == 2
    assert metric(daemon, "syncd_fallback_switches_total", to="push", reason="recovered") == 1
    assert metric(daemon, "syncd_mode", mode="push") == 1
    daemon.wait_log(lambda r: r.get("msg") == "poll interval is now 30.0s", 5)


def test_dropped_deliveries_trigger_fallback(start_sim: StartSim, start_daemon: StartDaemon) -> None:
    sim = start_sim("--rate", "0", "--max-lag", "300ms", "--seed", "5", "--drop-rate", "0.3")
    daemon = start_daemon(
        sim,
        # Frequent safety polls so the missed share is measured within seconds; silence
        # never happens (70% of deliveries still arrive).
        poll={"interval": "500ms", "safety_interval": "2s"},
        fallback={"silence": "60s", "missed_ratio": 0.1, "recover_after": 3},
    )
    assert daemon.webhook_url is not None
    sim.register_webhook(daemon.webhook_url)
    sim.control(rate=20)
    fallback = daemon.wait_log(switch_log(daemon, "fallback"), 20, what="switch to fallback")
    assert fallback["reason"].startswith("missed")
    assert mode(daemon)["current"] == "fallback"
    assert metric(daemon, "syncd_fallback_switches_total", to="fallback", reason="missed") == 1
    # Still dropping: it stays in fallback (no flapping back to push).
    stats_before = sim.stats()["webhooks"].get("dropped", 0)
    wait_until(lambda: sim.stats()["webhooks"].get("dropped", 0) > stats_before + 20, 15, what="more drops")
    assert mode(daemon)["current"] == "fallback"
    assert daemon.status()["fallback_switches"] == 1
