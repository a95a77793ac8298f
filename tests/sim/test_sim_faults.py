"""Every fault knob has an effect when on, and none when off."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from syncd.errors import ConfigError
from syncd.sim.clock import ManualClock
from syncd.sim.config import PRESETS, FaultConfig
from tests.sim.conftest import Receiver, StartSim, api_client, list_all, register


def _workload_events(receiver: Receiver) -> list[dict[str, object]]:
    return [e for e in receiver.events() if e["event"] != "webhook.test"]


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_drop(start_sim: StartSim, receiver: Receiver, rate: float) -> None:
    handle = start_sim(preload_customers=3, faults=FaultConfig(webhook_drop_rate=rate))
    with api_client(handle) as client:
        register(client, receiver.url)
        handle.step(40)
        assert handle.control({"action": "quiesce", "timeout": 10})["idle"]
        stats = client.get("/_sim/stats").json()
    generated = stats["events_total"] - stats["events"]["webhook.test"]
    delivered = _workload_events(receiver)
    assert [e["event"] for e in receiver.events("webhook.test")] == ["webhook.test"]
    if rate:
        assert delivered == []
        assert stats["webhooks"]["dropped_fault"] == generated
    else:
        assert len({e["eventId"] for e in delivered}) == len(delivered) == generated
        assert stats["webhooks"]["dropped"] == 0


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_duplicate(start_sim: StartSim, receiver: Receiver, rate: float) -> None:
    faults = FaultConfig(webhook_duplicate_rate=rate, webhook_max_delay=0.05)
    handle = start_sim(preload_customers=3, faults=faults)
    with api_client(handle) as client:
        register(client, receiver.url)
        handle.step(30)
        assert handle.control({"action": "quiesce", "timeout": 10})["idle"]
    counts = Counter(e["eventId"] for e in _workload_events(receiver))
    assert counts
    assert set(counts.values()) == ({2} if rate else {1})


def test_delay_reorders_and_off_keeps_order(start_sim: StartSim, receiver: Receiver) -> None:
    def delivered_order(delay_rate: float) -> list[str]:
        receiver.received.clear()
        clock = ManualClock()
        faults = FaultConfig(webhook_delay_rate=delay_rate, webhook_max_delay=0.3)
        handle = start_sim(clock=clock, preload_customers=3, delivery_concurrency=1, faults=faults)
        with api_client(handle) as client:
            register(client, receiver.url)
            receiver.wait_for(lambda got: len(got) == 1)
            for _ in range(40):
                clock.advance(0.002)  # event ids carry their millisecond: sorted = generated
                handle.step(1)
            assert handle.control({"action": "quiesce", "timeout": 10})["idle"]
        handle.stop()
        return [str(e["eventId"]) for e in _workload_events(receiver)]

    in_order = delivered_order(0.0)
    assert in_order == sorted(in_order)
    shuffled = delivered_order(1.0)
    assert sorted(shuffled) == sorted(set(shuffled))
    assert len(shuffled) == len(in_order)
    assert shuffled != sorted(shuffled)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_thin_events(start_sim: StartSim, receiver: Receiver, rate: float) -> None:
    handle = start_sim(preload_customers=3, faults=FaultConfig(thin_event_rate=rate))
    with api_client(handle) as client:
        register(client, receiver.url)
        handle.step(20)
        assert handle.control({"action": "quiesce", "timeout": 10})["idle"]
    events = _workload_events(receiver)
    assert events
    for event in events:
        data = event["data"]
        assert isinstance(data, dict)
        if rate:
            assert list(data) == ["id"]
        else:
            assert {"id", "updatedAt", "version"} <= set(data)


def test_thin_endpoint_always_thin(start_sim: StartSim, receiver: Receiver) -> None:
    handle = start_sim(preload_customers=3)
    with api_client(handle) as client:
        register(client, receiver.url, thin=True)
        handle.step(10)
        assert handle.control({"action": "quiesce", "timeout": 10})["idle"]
    assert all(list(e["data"]) == ["id"] for e in _workload_events(receiver))  # type: ignore[call-overload]


def test_rate_limited_with_retry_after(start_sim: StartSim) -> None:
    handle = start_sim(faults=FaultConfig(api_429_rate=1.0, retry_after=7))
    with api_client(handle) as client:
        for path in ("/orders", "/inventory/sku_dog_food"):
            response = client.get(path)
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "7"
            assert response.json()["error"]["code"] == "rate_limited"
        assert client.get("/webhooks").status_code == 200, "management is never faulted"
        handle.control({"faults": {"api_429_rate": 0.0}})
        assert all(client.get("/orders").status_code == 200 for _ in range(30))


def test_server_errors(start_sim: StartSim) -> None:
    handle = start_sim(faults=FaultConfig(api_5xx_rate=1.0))
    with api_client(handle) as client:
        statuses = {client.get("/orders").status_code for _ in range(40)}
        assert statuses <= {500, 502, 503, 504}
        assert len(statuses) >= 3
        body = client.get("/orders").json()
        assert body["error"]["code"] in {
            "internal_error",
            "bad_gateway",
            "service_unavailable",
            "gateway_timeout",
        }
        handle.control({"faults": {"api_5xx_rate": 0.0}})
        assert all(client.get("/orders").status_code == 200 for _ in range(30))


def test_partial_rates_mix(start_sim: StartSim) -> None:
    handle = start_sim(seed=3, faults=FaultConfig(api_429_rate=0.3, api_5xx_rate=0.3))
    with api_client(handle) as client:
        statuses = Counter(client.get("/orders").status_code for _ in range(200))
    assert statuses[200] > 40
    assert statuses[429] > 20
    assert sum(statuses[s] for s in (500, 502, 503, 504)) > 20


def test_hang(start_sim: StartSim) -> None:
    handle = start_sim(faults=FaultConfig(api_hang_rate=1.0, hang_seconds=0.4))
    with api_client(handle) as client:
        start = time.monotonic()
        assert client.get("/orders").status_code == 200
        assert time.monotonic() - start >= 0.4
        with pytest.raises(httpx.ReadTimeout):
            client.get("/orders", timeout=0.1)
        handle.control({"faults": {"api_hang_rate": 0.0}})
        start = time.monotonic()
        for _ in range(10):
            client.get("/orders")
        assert time.monotonic() - start < 0.4


def test_stop_releases_hanging_requests(start_sim: StartSim) -> None:
    handle = start_sim(faults=FaultConfig(api_hang_rate=1.0, hang_seconds=60))
    outcome: list[int] = []

    def hang() -> None:
        with api_client(handle, timeout=30) as client:
            outcome.append(client.get("/orders").status_code)

    thread = threading.Thread(target=hang)
    thread.start()
    deadline = time.monotonic() + 5
    while handle.call(lambda: handle.simulator.stats.api_faults["hang"]) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    start = time.monotonic()
    handle.stop()
    thread.join(10)
    assert time.monotonic() - start < 3
    assert outcome == [200]


def test_runtime_lag_knob(start_sim: StartSim) -> None:
    clock = ManualClock()
    handle = start_sim(clock=clock, max_lag=10.0, preload_inventory=0)
    with api_client(handle) as client:
        handle.step(20)
        assert client.get("/orders").json()["data"] == []
        handle.control({"max_lag": 0})
        handle.step(20)
        listed = list_all(client, "orders")
        assert listed
        assert len(listed) < len(handle.truth("orders")["orders"])


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_cursor_expiry_fault(start_sim: StartSim, rate: float) -> None:
    handle = start_sim(preload_orders=20, faults=FaultConfig(cursor_expire_rate=rate))
    with api_client(handle) as client:
        first = client.get("/orders", params={"limit": 5}).json()
        assert len(first["data"]) == 5, "first pages carry no cursor, so never expire"
        response = client.get("/orders", params={"limit": 5, "cursor": first["next_cursor"]})
    if rate:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "cursor_expired"
    else:
        assert response.status_code == 200


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_short_pages(start_sim: StartSim, rate: float) -> None:
    handle = start_sim(preload_orders=300, faults=FaultConfig(short_page_rate=rate))
    with api_client(handle) as client:
        sizes = []
        query: dict[str, object] = {"limit": 50}
        while True:
            page = client.get("/orders", params=query).json()  # type: ignore[arg-type]
            sizes.append((len(page["data"]), page["has_more"]))
            if not page["has_more"]:
                break
            query = {"limit": 50, "cursor": page["next_cursor"]}
        assert len(list_all(client, "orders", limit=50)) == 300
    more = [n for n, has_more in sizes if has_more]
    if rate:
        assert all(1 <= n < 50 for n in more)
    else:
        assert more == [50] * 5


def test_presets_and_validation() -> None:
    assert FaultConfig.preset("none") == FaultConfig()
    default, harsh = PRESETS["default"], PRESETS["harsh"]
    assert 0 < default.webhook_drop_rate < harsh.webhook_drop_rate
    assert default.api_429_rate > 0
    assert default.api_5xx_rate > 0
    assert harsh.api_hang_rate > 0
    with pytest.raises(ConfigError, match="unknown preset"):
        FaultConfig.preset("apocalypse")
    with pytest.raises(ConfigError, match="webhook_drop_rate"):
        FaultConfig(webhook_drop_rate=1.5)
    with pytest.raises(ConfigError, match="unknown knobs"):
        FaultConfig().replace({"meteor_rate": 0.1})


def test_control_switches_presets(start_sim: StartSim) -> None:
    handle = start_sim()
    with api_client(handle) as client:
        status = client.post("/_sim/control", json={"preset": "harsh"}).json()
        assert status["faults"] == PRESETS["harsh"].as_dict()
        status = client.post("/_sim/control", json={"preset": "none"}).json()
        assert status["faults"] == FaultConfig().as_dict()
        bad = client.post("/_sim/control", json={"faults": {"api_429_rate": 2}})
        assert bad.status_code == 400
