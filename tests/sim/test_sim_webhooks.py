"""Webhook endpoint management, deliveries, signatures and the retry schedule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from syncd.contract import RETRY_SCHEDULE
from tests.sim.conftest import Receiver, StartSim, api_client, register

EVENT_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")


def _petstore_ok(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-webhook-signature"], digest)


def test_register_list_delete_and_test_event(start_sim: StartSim, receiver: Receiver) -> None:
    handle = start_sim()
    with api_client(handle) as client:
        created = register(client, receiver.url, ["order.created", "inventory.low"])
        assert created["id"].startswith("wh_")
        assert created["url"] == receiver.url
        assert created["events"] == ["order.created", "inventory.low"]
        assert created["status"] == "active"
        assert created["secret"]
        listed = client.get("/webhooks").json()["data"]
        assert listed == [{k: v for k, v in created.items() if k != "secret"}]
        receiver.wait_for(lambda got: len(got) == 1)
        test = receiver.snapshot()[0]
        assert test.json["event"] == "webhook.test"
        assert test.json["data"] == {}
        assert set(test.json) == {"eventId", "event", "timestamp", "data"}
        assert EVENT_ID.match(test.json["eventId"])
        assert test.headers["x-webhook-id"] == test.json["eventId"]
        assert test.headers["content-type"] == "application/json"
        assert _petstore_ok(created["secret"], test.body, test.headers)
        assert client.delete(f"/webhooks/{created['id']}").status_code == 204
        assert client.get("/webhooks").json()["data"] == []
        gone = client.delete(f"/webhooks/{created['id']}")
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://x", "events": ["order.created"]},
        {"url": "http://127.0.0.1:1/h", "events": []},
        {"url": "http://127.0.0.1:1/h", "events": ["order.exploded"]},
        {"events": ["order.created"]},
        ["not", "an", "object"],
    ],
)
def test_bad_registration_is_400(start_sim: StartSim, body: object) -> None:
    handle = start_sim()
    with api_client(handle) as client:
        response = client.post("/webhooks", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_parameters"


def test_events_carry_the_record_right_after_the_change(start_sim: StartSim, receiver: Receiver) -> None:
    handle = start_sim(preload_customers=5, max_lag=5.0)
    with api_client(handle) as client:
        register(client, receiver.url, ["order.created", "order.updated", "order.shipped"])
        handle.step(150)
        handle.control({"action": "quiesce", "timeout": 10, "flush_visibility": True})
        events = [e for e in receiver.events() if e["event"] != "webhook.test"]
        assert events, "the workload produced no subscribed event"
        assert {e["event"] for e in events} <= {"order.created", "order.updated", "order.shipped"}
        created = [e for e in events if e["event"] == "order.created"]
        assert all(e["data"]["version"] == 1 and e["data"]["status"] == "placed" for e in created)
        for event in events:
            assert event["timestamp"] == event["data"]["updatedAt"]
        by_id = {e["eventId"] for e in events}
        assert len(by_id) == len(events)
        stats = client.get("/_sim/stats").json()
        expected = sum(stats["events"].get(n, 0) for n in ("order.created", "order.updated"))
        expected += stats["events"].get("order.shipped", 0)
        assert len(events) == expected


def test_retry_schedule_follows_time_scale(start_sim: StartSim, receiver: Receiver) -> None:
    receiver.fail_times = 3
    handle = start_sim(time_scale=0.001)
    with api_client(handle) as client:
        register(client, receiver.url)
        receiver.wait_for(lambda got: len(got) == 4, timeout=10)
        attempts = receiver.snapshot()
        assert [a.status for a in attempts] == [500, 500, 500, 200]
        assert len({a.json["eventId"] for a in attempts}) == 1
        gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
        for gap, scheduled in zip(gaps, RETRY_SCHEDULE, strict=False):
            expected = scheduled * 0.001
            assert expected <= gap < expected + 0.5, (gaps, expected)
        # The receiver saw the last attempt; wait until the sender has seen its answer too.
        assert handle.control({"action": "quiesce", "timeout": 5})["idle"]
        stats = client.get("/_sim/stats").json()["webhooks"]
        assert stats["attempted"] == 4
        assert stats["failed"] == 3
        assert stats["retried"] == 3
        assert stats["succeeded"] == 1


def test_gives_up_after_the_last_retry(start_sim: StartSim, receiver: Receiver) -> None:
    receiver.fail_times = 1000
    handle = start_sim(time_scale=0.00001)
    with api_client(handle) as client:
        register(client, receiver.url)
        receiver.wait_for(lambda got: len(got) == 1 + len(RETRY_SCHEDULE), timeout=10)
        status = handle.control({"action": "quiesce", "timeout": 5})
        assert status["idle"]
        assert len(receiver.snapshot()) == 1 + len(RETRY_SCHEDULE)
        stats = client.get("/_sim/stats").json()["webhooks"]
        assert stats["dropped_gave_up"] == 1
        assert stats["succeeded"] == 0


def test_no_answer_within_timeout_is_a_failure(start_sim: StartSim, receiver: Receiver) -> None:
    receiver.fail_times, receiver.stall = 1, 1.0
    handle = start_sim(time_scale=0.001, min_delivery_timeout=0.2)
    with api_client(handle) as client:
        register(client, receiver.url)
        receiver.wait_for(lambda got: len(got) == 2, timeout=5)
        first, second = receiver.snapshot()
        # Retry 60 ms after the 0.2 s timeout, well before the 1 s stall ends.
        assert 0.2 <= second.at - first.at < 1.0
        assert client.get("/_sim/stats").json()["webhooks"]["failed"] == 1


def _valid(scheme: str, secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """Each scheme checked as its provider documents it, without syncd.signatures."""
    if scheme == "petstore":
        return bool(headers["x-webhook-id"]) and _petstore_ok(secret, body, headers)
    if scheme == "github":
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return headers["x-hub-signature-256"] == "sha256=" + digest
    if scheme == "stripe":
        parts = dict(p.split("=", 1) for p in headers["stripe-signature"].split(","))
        signed = parts["t"].encode() + b"." + body
        return parts["v1"] == hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


@pytest.mark.parametrize("scheme", ["petstore", "standard-webhooks", "stripe", "github"])
def test_signature_schemes_verify_independently(start_sim: StartSim, receiver: Receiver, scheme: str) -> None:
    handle = start_sim(scheme=scheme, preload_customers=2)
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    with api_client(handle) as client:
        register(client, receiver.url, secret=secret)
        handle.step(5)
        receiver.wait_for(lambda got: len(got) >= 6)
    for delivery in receiver.snapshot():
        assert _valid(scheme, secret, delivery.body, delivery.headers)
    last = receiver.snapshot()[-1]
    assert not _valid(scheme, secret, last.body + b" ", last.headers)
    other = "whsec_" + base64.b64encode(b"another secret of 32 bytes......").decode()
    assert not _valid(scheme, other, last.body, last.headers)


def test_pause_queue_holds_deliveries_until_resumed(start_sim: StartSim, receiver: Receiver) -> None:
    handle = start_sim(preload_customers=2)
    with api_client(handle) as client:
        register(client, receiver.url)
        receiver.wait_for(lambda got: len(got) == 1)
        handle.control({"action": "pause_webhooks", "mode": "queue"})
        handle.step(20)
        status = client.get("/_sim/idle").json()
        assert status["webhooks"] == "paused-queue"
        assert status["pending_deliveries"] > 0
        assert len(receiver.snapshot()) == 1
        handle.control({"action": "resume_webhooks"})
        generated = client.get("/_sim/stats").json()["events_total"]
        receiver.wait_for(lambda got: len(got) == generated)


def test_pause_drop_loses_deliveries_for_good(start_sim: StartSim, receiver: Receiver) -> None:
    handle = start_sim(preload_customers=2)
    with api_client(handle) as client:
        register(client, receiver.url)
        receiver.wait_for(lambda got: len(got) == 1)
        handle.control({"action": "pause_webhooks", "mode": "drop"})
        handle.step(20)
        handle.control({"action": "resume_webhooks"})
        handle.step(1)
        receiver.wait_for(lambda got: len(got) == 2)
        assert handle.control({"action": "quiesce", "timeout": 5})["idle"]
        assert len(receiver.snapshot()) == 2
        stats = client.get("/_sim/stats").json()["webhooks"]
        assert stats["dropped_paused"] >= 20


def test_deleted_endpoint_gets_nothing_more(start_sim: StartSim, receiver: Receiver) -> None:
    handle = start_sim(preload_customers=2)
    with api_client(handle) as client:
        endpoint = register(client, receiver.url)
        receiver.wait_for(lambda got: len(got) == 1)
        client.delete(f"/webhooks/{endpoint['id']}")
        handle.step(20)
        assert handle.control({"action": "quiesce", "timeout": 5})["idle"]
        assert len(receiver.snapshot()) == 1


def test_unreachable_receiver_is_retried_not_fatal(start_sim: StartSim) -> None:
    handle = start_sim(time_scale=0.00001)
    with api_client(handle) as client:
        register(client, "http://127.0.0.1:9/nothing-listens")
        status = handle.control({"action": "quiesce", "timeout": 15})
        assert status["idle"]
        stats = client.get("/_sim/stats").json()["webhooks"]
        assert stats["attempted"] == 1 + len(RETRY_SCHEDULE)
        assert stats["dropped_gave_up"] == 1


def test_acked_log_lists_exactly_the_deliveries_answered_2xx(start_sim: StartSim, receiver: Receiver) -> None:
    """`/_sim/acked` is what chaos tests check a receiver against: every event id it answered
    2xx, and none it failed; `bytes` counts every body attempted."""
    receiver.fail_times = 1000
    handle = start_sim(time_scale=0.001)
    with api_client(handle) as client:
        failing = register(client, receiver.url, ["order.created"])
        receiver.wait_for(lambda got: len(got) >= 1)
        client.delete(f"/webhooks/{failing['id']}")
        receiver.fail_times = 0
        register(client, receiver.url, ["order.created", "order.updated"])
        handle.step(40)
        handle.control({"action": "quiesce", "timeout": 10, "drop_retries": True})
        acked = client.get("/_sim/acked").json()
        answered_ok = {r.json["eventId"] for r in receiver.snapshot() if r.status == 200}
        answered_bad = {r.json["eventId"] for r in receiver.snapshot() if r.status != 200}
        assert acked["complete"] is True
        assert set(acked["event_ids"]) == answered_ok
        assert not answered_bad & set(acked["event_ids"])
        stats = client.get("/_sim/stats").json()
        assert stats["webhooks"]["bytes"] == sum(len(r.body) for r in receiver.snapshot())
