"""GET /{resource} and GET /{resource}/{id} against the contract, over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from syncd.sim.clock import ManualClock, format_ms, parse_rfc3339_ms
from tests.sim.conftest import StartSim, api_client, list_all


def _key(record: dict[str, Any]) -> tuple[int, Any]:
    return parse_rfc3339_ms(record["updatedAt"]), record["id"]


def test_records_have_exactly_the_contract_fields(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=5, preload_customers=3, preload_inventory=2)
    with api_client(handle) as client:
        order = client.get("/orders").json()["data"][0]
        customer = client.get("/customers").json()["data"][0]
        item = client.get("/inventory").json()["data"][0]
        assert list(order) == [
            "id", "customer", "status", "total", "currency", "items",
            "createdAt", "updatedAt", "version",
        ]  # fmt: skip
        assert isinstance(order["id"], int)
        assert order["status"] in {"placed", "approved", "shipped", "completed", "cancelled"}
        assert set(order["items"][0]) == {"product", "quantity", "unitPrice"}
        assert list(customer) == ["id", "email", "name", "createdAt", "updatedAt", "version"]
        assert customer["id"].startswith("cus_")
        assert list(item) == ["id", "product", "quantity", "threshold", "updatedAt", "version"]
        assert item["id"].startswith("sku_")
        for record in (order, customer, item):
            assert format_ms(parse_rfc3339_ms(record["updatedAt"])) == record["updatedAt"]
        assert client.get(f"/orders/{order['id']}").json() == order
        assert client.get(f"/customers/{customer['id']}").json() == customer


def test_ties_listed_in_id_order_and_paged_with_inclusive_since(start_sim: StartSim) -> None:
    clock = ManualClock()
    handle = start_sim(clock=clock, preload_inventory=0)
    # A frozen clock stamps every change with one millisecond: one big tie.
    handle.step(60)
    with api_client(handle) as client:
        everything = list_all(client, "orders", limit=1000)
        stamps = {o["updatedAt"] for o in everything}
        assert len(stamps) == 1
        assert len(everything) > 10
        since = stamps.pop()
        paged = list_all(client, "orders", since=since, limit=3)
        assert [o["id"] for o in paged] == sorted(o["id"] for o in everything)
        later = format_ms(parse_rfc3339_ms(since) + 1)
        assert client.get("/orders", params={"since": later}).json()["data"] == []


def test_since_filters_inclusively_on_preloaded_history(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=2000)
    with api_client(handle) as client:
        everything = list_all(client, "orders", limit=1000)
        assert len(everything) == 2000
        keys = [_key(o) for o in everything]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
        ties = len(keys) - len({k[0] for k in keys})
        assert ties > 500, "the preload must create many updatedAt ties"
        pivot = everything[1000]["updatedAt"]
        tail = list_all(client, "orders", since=pivot, limit=7)
        assert tail == [o for o in everything if o["updatedAt"] >= pivot]
        assert tail[0]["updatedAt"] == pivot


def test_paging_while_records_change_loses_nothing(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=600, preload_customers=20)
    with api_client(handle) as client:
        before = set(handle.truth("orders")["orders"])
        seen: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": 25}
        while True:
            page = client.get("/orders", params=query).json()
            seen.extend(page["data"])
            handle.step(15)
            if not page["has_more"]:
                break
            query = {"limit": 25, "cursor": page["next_cursor"]}
        keys = [_key(o) for o in seen]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
        ids = [o["id"] for o in seen]
        assert before <= {str(i) for i in ids}, "a record present throughout was skipped"
        truth = handle.truth("orders")["orders"]
        repeated = {i for i in ids if ids.count(i) > 1}
        assert repeated, "the workload changed nothing during paging"
        for rid in repeated:
            versions = [o["version"] for o in seen if o["id"] == rid]
            assert versions == sorted(versions)
            assert len(set(versions)) == len(versions)
            assert truth[str(rid)] > versions[0]


def test_visibility_lag_hides_fresh_change_then_shows_it_in_the_past(start_sim: StartSim) -> None:
    clock = ManualClock()
    handle = start_sim(clock=clock, max_lag=10.0, preload_inventory=0)
    handle.step(30)
    truth = handle.truth("orders")["orders"]
    with api_client(handle) as client:
        assert client.get("/orders").json()["data"] == []
        some = next(iter(truth))
        assert client.get(f"/orders/{some}").json()["version"] == truth[some]
        change_ms = parse_rfc3339_ms(client.get(f"/orders/{some}").json()["updatedAt"])
        clock.advance(10.001)
        listed = list_all(client, "orders")
        assert {str(o["id"]): o["version"] for o in listed} == truth
        now_ms = int(clock.now() * 1000)
        assert all(parse_rfc3339_ms(o["updatedAt"]) == change_ms < now_ms for o in listed)


def test_lag_shows_partial_visibility_between_bounds(start_sim: StartSim) -> None:
    clock = ManualClock()
    handle = start_sim(clock=clock, max_lag=10.0, preload_inventory=0)
    handle.step(200)
    clock.advance(5.0)
    with api_client(handle) as client:
        visible = len(list_all(client, "orders"))
    total = len(handle.truth("orders")["orders"])
    assert 0 < visible < total


def test_unauthorized_without_or_with_wrong_key(start_sim: StartSim) -> None:
    handle = start_sim(api_key="k-123")
    with httpx.Client(base_url=handle.base_url) as anon:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k-123"}):
            response = anon.get("/orders", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        assert anon.get("/webhooks").status_code == 401
        assert anon.get("/orders", headers={"Authorization": "Bearer k-123"}).status_code == 200


def test_forbidden_scope_knob(start_sim: StartSim) -> None:
    handle = start_sim()
    with api_client(handle) as client:
        assert client.get("/customers").status_code == 200
        handle.control({"faults": {"forbidden_resources": ["customers"]}})
        response = client.get("/customers")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert client.get("/orders").status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"since": "2024-01-15T10:30:00"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"cursor": "c_notacursor"},
        {"cursor": "garbage"},
    ],
)
def test_bad_parameters_get_400_with_error_body(start_sim: StartSim, params: dict[str, str]) -> None:
    handle = start_sim()
    with api_client(handle) as client:
        response = client.get("/orders", params=params)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_parameters"
        assert response.json()["error"]["message"]


def test_limit_bounds_accepted_and_default_is_100(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=150)
    with api_client(handle) as client:
        assert len(client.get("/orders").json()["data"]) == 100
        assert len(client.get("/orders", params={"limit": 1}).json()["data"]) == 1
        assert len(client.get("/orders", params={"limit": 1000}).json()["data"]) == 150


def test_cursor_of_another_listing_is_refused(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=10, preload_customers=10)
    with api_client(handle) as client:
        cursor = client.get("/orders", params={"limit": 2}).json()["next_cursor"]
        assert client.get("/customers", params={"cursor": cursor}).status_code == 400
        other = {"cursor": cursor, "limit": 3}
        assert client.get("/orders", params=other).status_code == 400
        tampered = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
        assert client.get("/orders", params={"cursor": tampered}).status_code == 400
        assert client.get("/orders", params={"cursor": cursor, "limit": 2}).status_code == 200


def test_cursor_expires_after_ttl(start_sim: StartSim) -> None:
    clock = ManualClock()
    handle = start_sim(clock=clock, preload_orders=10, cursor_ttl=60.0)
    with api_client(handle) as client:
        cursor = client.get("/orders", params={"limit": 2}).json()["next_cursor"]
        clock.advance(59.0)
        fresh = client.get("/orders", params={"limit": 2, "cursor": cursor})
        assert fresh.status_code == 200
        clock.advance(2.0)
        expired = client.get("/orders", params={"limit": 2, "cursor": cursor})
        assert expired.status_code == 400
        assert expired.json()["error"]["code"] == "cursor_expired"
        # The cursor issued with the fresh page is young and still works.
        again = client.get("/orders", params={"limit": 2, "cursor": fresh.json()["next_cursor"]})
        assert again.status_code == 200


def test_not_found(start_sim: StartSim) -> None:
    handle = start_sim(preload_orders=3, preload_customers=1)
    with api_client(handle) as client:
        for path in ("/orders/999", "/orders/abc", "/customers/cus_nope", "/inventory/sku_x"):
            response = client.get(path)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        assert client.get("/pets").status_code == 404
        assert client.get("/pets/1").status_code == 404
        assert client.get("/orders/1").status_code == 200


def test_deleted_customer_is_gone_everywhere(start_sim: StartSim) -> None:
    handle = start_sim(preload_customers=10)
    victim = next(iter(handle.truth("customers")["customers"]))
    handle.call(handle.simulator.shop.erase_customer, victim)
    with api_client(handle) as client:
        assert client.get(f"/customers/{victim}").status_code == 404
        assert victim not in {c["id"] for c in list_all(client, "customers")}
    assert victim not in handle.truth("customers")["customers"]
