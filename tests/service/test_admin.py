"""The admin listener: health, readiness bounds and Prometheus exposition, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncd.metrics import Metrics
from syncd.service.admin import READY_FACTOR, ReadinessInputs, create_admin_app, judge_readiness
from syncd.sim.server import ThreadedServer

NOW = 1_800_000_000.0


def inputs(
    *,
    store_open: bool = True,
    mode: str = "push",
    interval: float = 600.0,
    last_success_at: float | None = None,
    last_webhook_at: float | None = None,
) -> ReadinessInputs:
    return ReadinessInputs(store_open, mode, interval, last_success_at, last_webhook_at)


def test_ready_when_the_last_poll_is_within_the_bound() -> None:
    ready, reason = judge_readiness(inputs(interval=30, last_success_at=NOW - 119), NOW, slack=30)
    assert ready
    assert "poll" in reason


def test_not_ready_when_the_last_poll_is_too_old() -> None:
    bound = READY_FACTOR * 30 + 30
    ready, reason = judge_readiness(inputs(interval=30, last_success_at=NOW - bound - 1), NOW, slack=30)
    assert not ready
    assert f"more than {bound:g}s" in reason


def test_a_recent_webhook_counts_in_push_mode_only() -> None:
    old_poll = NOW - 10_000
    push = inputs(mode="push", interval=30, last_success_at=old_poll, last_webhook_at=NOW - 5)
    ready, reason = judge_readiness(push, NOW, slack=30)
    assert ready
    assert "webhook" in reason
    fallback_poll = inputs(mode="poll", interval=30, last_success_at=old_poll, last_webhook_at=NOW - 5)
    assert not judge_readiness(fallback_poll, NOW, slack=30)[0]


def test_not_ready_without_a_store_or_any_sync() -> None:
    assert judge_readiness(inputs(store_open=False, last_success_at=NOW), NOW) == (False, "store is not open")
    assert judge_readiness(inputs(), NOW) == (False, "no successful sync yet")


class State:
    def __init__(self) -> None:
        self.inputs = inputs(interval=30, last_success_at=NOW - 1)
        self.refreshed = 0


@pytest.fixture
def admin() -> Iterator[tuple[str, Metrics, State]]:
    metrics = Metrics()
    state = State()

    async def readiness() -> ReadinessInputs:
        return state.inputs

    async def refresh() -> None:
        state.refreshed += 1
        metrics.cursor_lag.labels(resource="orders").set(12.5)

    server = ThreadedServer(create_admin_app(metrics, readiness, refresh=refresh, clock=lambda: NOW))
    server.start()
    try:
        yield server.base_url, metrics, state
    finally:
        server.stop()


def test_healthz_and_readyz(admin: tuple[str, Metrics, State]) -> None:
    url, _, state = admin
    with httpx.Client(base_url=url) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "alive"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True
        state.inputs = inputs(store_open=False)
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"ready": False, "reason": "store is not open", "mode": "push"}


def test_metrics_parse_and_cover_the_daemon(admin: tuple[str, Metrics, State]) -> None:
    url, metrics, state = admin
    metrics.events.labels(outcome="applied").inc(3)
    metrics.ack_latency.observe(0.004)
    metrics.inbox_depth.set(2)
    metrics.records.labels(source="poll", outcome="applied").inc(5)
    metrics.poll_duration.labels(resource="orders", kind="incremental").observe(0.2)
    metrics.poll_errors.labels(resource="orders", kind="ApiTransientError").inc()
    metrics.set_mode("fallback")
    metrics.fallback_switches.labels(to="fallback", reason="silence").inc()
    metrics.dead_letters.inc()
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("syncd_events_total", (("outcome", "applied"),))] == 3
    assert samples[("syncd_webhook_ack_seconds_count", ())] == 1
    assert samples[("syncd_inbox_depth", ())] == 2
    assert samples[("syncd_records_total", (("outcome", "applied"), ("source", "poll")))] == 5
    assert samples[("syncd_poll_seconds_count", (("kind", "incremental"), ("resource", "orders")))] == 1
    assert samples[("syncd_poll_errors_total", (("kind", "ApiTransientError"), ("resource", "orders")))] == 1
    assert samples[("syncd_mode", (("mode", "fallback"),))] == 1
    assert samples[("syncd_mode", (("mode", "push"),))] == 0
    assert samples[("syncd_fallback_switches_total", (("reason", "silence"), ("to", "fallback")))] == 1
    assert samples[("syncd_dead_letters_total", ())] == 1
    # Sampled gauges are refreshed at scrape time.
    assert samples[("syncd_cursor_lag_seconds", (("resource", "orders"),))] == 12.5
    assert state.refreshed == 1


def test_nothing_else_is_served(admin: tuple[str, Metrics, State]) -> None:
    url, _, _ = admin
    assert httpx.get(url + "/webhooks/petstore").status_code == 404
    assert httpx.post(url + "/metrics").status_code == 405


def test_not_ready_while_the_store_cannot_commit_however_recent_the_sync() -> None:
    failing = ReadinessInputs(
        True, "push", 30, NOW - 1, NOW - 1, "webhook deliveries cannot be committed: full"
    )
    assert judge_readiness(failing, NOW) == (False, "webhook deliveries cannot be committed: full")
    recovered = ReadinessInputs(True, "push", 30, NOW - 1, NOW - 1, None)
    assert judge_readiness(recovered, NOW)[0]
