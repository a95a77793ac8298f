"""Ground truth, counters, control, determinism, the workload's event mapping and preload."""

from __future__ import annotations

import time
from typing import Any

from syncd.sim.clock import ManualClock, parse_rfc3339_ms
from tests.sim.conftest import Receiver, StartSim, api_client, list_all, register


def _listed_versions(client: Any, resource: str) -> dict[str, int]:
    return {str(r["id"]): r["version"] for r in list_all(client, resource, limit=1000)}


def test_ground_truth_matches_the_api_after_quiesce(start_sim: StartSim) -> None:
    handle = start_sim(rate=400, max_lag=0.2, preload_customers=10)
    with api_client(handle) as client:
        deadline = time.monotonic() + 5
        while client.get("/_sim/stats").json()["deletions"].get("customers", 0) < 1:
            assert time.monotonic() < deadline, "the workload erased no customer"
            time.sleep(0.02)
        status = client.post("/_sim/control", json={"action": "quiesce", "timeout": 5}).json()
        assert status["idle"]
        assert status["pending_visibility"] == 0
        truth = client.get("/_sim/state").json()
        assert set(truth) == {"orders", "customers", "inventory"}
        for resource, versions in truth.items():
            assert versions, resource
            assert _listed_versions(client, resource) == versions
        some_order = next(iter(truth["orders"]))
        assert client.get(f"/orders/{some_order}").json()["version"] == truth["orders"][some_order]
        only = client.get("/_sim/state", params={"resource": "customers"}).json()
        assert only == {"customers": truth["customers"]}
        assert client.get("/_sim/state", params={"resource": "pets"}).status_code == 404


def test_stats_count_requests_bytes_and_changes(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=50, preload_customers=2)
    with api_client(handle) as client:
        sizes = [len(client.get("/orders").content) for _ in range(3)]
        sizes.append(len(client.get("/orders/1").content))
        sizes.append(len(client.get("/orders", headers={"Authorization": "Bearer x"}).content))
        handle.step(25)
        stats = client.get("/_sim/stats").json()
    assert stats["requests"]["GET /orders 200"] == 3
    assert stats["requests"]["GET /orders/{id} 200"] == 1
    assert stats["requests"]["GET /orders 401"] == 1
    assert stats["bytes_sent"] == sum(sizes)
    assert sum(stats["changes"].values()) == 25
    assert stats["events_total"] == 25 - sum(stats["deletions"].values())


def test_same_seed_same_shop(start_sim: StartSim) -> None:
    def shop(seed: int) -> list[dict[str, Any]]:
        handle = start_sim(clock=ManualClock(1_700_000_000.0), seed=seed, preload_orders=100)
        handle.step(300)
        with api_client(handle) as client:
            records = [r for res in ("orders", "customers", "inventory") for r in list_all(client, res)]
        handle.stop()
        return records

    first = shop(7)
    assert first == shop(7)
    assert first != shop(8)


def test_pause_and_resume_workload(start_sim: StartSim) -> None:
    handle = start_sim(rate=500)
    with api_client(handle) as client:

        def changes() -> int:
            return sum(client.get("/_sim/stats").json()["changes"].values())

        deadline = time.monotonic() + 5
        while changes() == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        paused = client.post("/_sim/control", json={"action": "pause_workload"}).json()
        assert paused["workload"] == "paused"
        frozen = changes()
        time.sleep(0.1)
        assert changes() == frozen
        client.post("/_sim/control", json={"action": "resume_workload"})
        while changes() == frozen:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_quiesce_waits_for_lag_and_step_action(start_sim: StartSim) -> None:
    handle = start_sim(max_lag=0.3, preload_customers=2)
    with api_client(handle) as client:
        client.post("/_sim/control", json={"action": "step", "count": 40})
        assert client.get("/_sim/idle").json()["pending_visibility"] > 0
        status = client.post("/_sim/control", json={"action": "quiesce", "timeout": 5}).json()
        assert status["idle"]
        assert _listed_versions(client, "orders") == handle.truth("orders")["orders"]


def test_control_rejects_bad_requests(start_sim: StartSim) -> None:
    handle = start_sim()
    with api_client(handle) as client:
        for body in (
            {"action": "explode"},
            {"bogus": 1},
            {"rate": -1},
            {"action": "pause_webhooks", "mode": "x"},
        ):
            response = client.post("/_sim/control", json=body)
            assert response.status_code == 400, body
            assert response.json()["error"]["code"] == "invalid_parameters"
        assert client.post("/_sim/control", content=b"{").status_code == 400


def test_workload_events_match_their_records(start_sim: StartSim, receiver: Receiver) -> None:
    handle = start_sim(preload_customers=5, preload_orders=50, seed=11)
    with api_client(handle) as client:
        register(client, receiver.url)
        handle.step(600)
        assert handle.control({"action": "quiesce", "timeout": 10})["idle"]
    expected_status = {
        "order.created": "placed",
        "order.updated": "approved",
        "order.shipped": "shipped",
        "order.completed": "completed",
        "order.cancelled": "cancelled",
    }
    seen = set()
    for event in receiver.events():
        name, data = event["event"], event["data"]
        seen.add(name)
        if name in expected_status:
            assert data["status"] == expected_status[name]
        elif name == "inventory.low":
            assert data["quantity"] < data["threshold"]
        elif name == "inventory.updated":
            assert data["quantity"] >= data["threshold"]
        elif name == "customer.registered":
            assert data["version"] == 1
        else:
            assert name == "webhook.test"
    assert seen >= set(expected_status) | {"customer.registered", "inventory.updated"}


def test_preload_is_visible_consistent_and_in_the_past(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=3000, preload_customers=200, preload_inventory=40)
    truth = handle.truth()
    assert [len(truth[r]) for r in ("orders", "customers", "inventory")] == [3000, 200, 40]
    with api_client(handle) as client:
        orders = list_all(client, "orders", limit=1000)
        now_ms = time.time() * 1000
        versions = {"placed": 1, "approved": 2, "shipped": 3, "completed": 4}
        for order in orders:
            assert parse_rfc3339_ms(order["createdAt"]) <= parse_rfc3339_ms(order["updatedAt"]) < now_ms
            assert order["version"] == versions.get(order["status"], order["version"])
        assert {o["status"] for o in orders} == {"placed", "approved", "shipped", "completed", "cancelled"}
        assert len(list_all(client, "inventory")) == 40
