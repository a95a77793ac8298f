"""Thin events through the inbox and the worker against a hostile API on loopback: ids that
try to leave their path segment, a record answered for another id, "12" and 12, and a burst
of thin events under a request budget shared with polling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from syncd.api import PetstoreClient
from syncd.budget import RequestBudget
from syncd.metrics import Metrics
from syncd.poll.poller import Poller
from syncd.push.inbox import Delivery, Inbox
from syncd.push.inbox_worker import InboxWorker
from syncd.store.writer import Writer
from tests.fake_clocks import FastForward, ManualClock
from tests.hostile_api import HostileApi, Seen, http_response
from tests.poll_helpers import make_config
from tests.webhook_support import envelope, order, read_db

RECEIVED = 1_700_000_000.0


pytestmark = pytest.mark.usefixtures("no_backoff")


@pytest.fixture
async def api() -> AsyncIterator[HostileApi]:
    server = await HostileApi().start()
    yield server
    await server.close()


class Clock:
    def __init__(self, now: float = RECEIVED + 1) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def customer(cid: str, version: int = 1) -> dict[str, Any]:
    return {"id": cid, "email": "a@example.com", "updatedAt": "2024-01-15T10:30:00.000Z", "version": version}


async def put(writer: Writer, *bodies: tuple[str, bytes], received_at: float = RECEIVED) -> None:
    inbox = Inbox(writer)
    await inbox.start()
    items = list(bodies)
    for start in range(0, len(items), 1000):  # concurrent, as deliveries are, within the inbox's bound
        await asyncio.gather(
            *(
                inbox.submit(Delivery(event_id, received_at, "127.0.0.1", {}, body))
                for event_id, body in items[start : start + 1000]
            )
        )
    await inbox.stop()


def events(db: Path) -> dict[str, tuple[Any, ...]]:
    """Events by id: applied ones from `_events`, the ones still in the inbox as pending."""
    rows = read_db(
        db,
        "SELECT event_id, outcome, record_id, version FROM _events"
        " UNION ALL SELECT event_id, 'pending', NULL, NULL FROM _inbox",
    )
    return {r[0]: r[1:] for r in rows}


def inbox_ids(db: Path) -> set[str]:
    return {r[0] for r in read_db(db, "SELECT event_id FROM _inbox")}


# -- ids in URLs -----------------------------------------------------------------------------

HOSTILE_IDS = {
    "../../_state": "..%2F..%2F_state",
    "5?evil=1": "5%3Fevil%3D1",
    "x#frag": "x%23frag",
    "..": "%2E%2E",
    ".": "%2E",
    "a/b": "a%2Fb",
    "%2e%2e": "%252e%252e",
    "sp ace": "sp%20ace",
    "ünï": "%C3%BCn%C3%AF",
}


async def test_thin_event_ids_stay_inside_their_path_segment(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    for cid in HOSTILE_IDS:
        api.put("customers", customer(cid))
    await put(
        writer,
        *(
            (f"e{i}", envelope(f"e{i}", "customer.registered", {"id": cid}))
            for i, cid in enumerate(HOSTILE_IDS)
        ),
    )
    async with PetstoreClient(api.base_url, "secret-key") as client:
        await InboxWorker(writer, client, fetch_thin=True).drain()
    targets = sorted(s.target for s in api.seen)
    assert targets == sorted(f"/v1/customers/{escaped}" for escaped in HOSTILE_IDS.values())
    # The key went to one-record paths of the resource and nowhere else.
    assert all(s.headers["authorization"] == "Bearer secret-key" for s in api.seen)
    db = tmp_path / "mirror.db"
    assert {r[0] for r in read_db(db, "SELECT id FROM customers")} == set(HOSTILE_IDS)
    assert {outcome for outcome, *_ in events(db).values()} == {"applied"}
    assert inbox_ids(db) == set()


async def test_a_record_answered_for_another_id_is_refused_and_the_event_retried(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    api.put("orders", order(5, 2, status="approved"))
    api.put("orders", order(7, 1))
    api.put("customers", customer("x"))
    mixing_up = True

    async def mix_up(seen: Seen, w: asyncio.StreamWriter) -> bool:
        # A proxy that drops everything from '#' (or serves a cached neighbour) answers the
        # wrong record.
        if not mixing_up:
            return False
        if seen.path == "/v1/orders/5":
            w.write(http_response(200, json.dumps(order(6, 9)).encode()))
            return True
        if seen.path == "/v1/customers/x%23frag":
            w.write(http_response(200, json.dumps(customer("x")).encode()))
            return True
        return False

    api.fault = mix_up
    await put(
        writer,
        ("t5", envelope("t5", "order.updated", {"id": 5})),
        ("t7", envelope("t7", "order.updated", {"id": 7})),
        ("tx", envelope("tx", "customer.registered", {"id": "x#frag"})),
    )
    clock = Clock()
    metrics = Metrics()
    db = tmp_path / "mirror.db"
    async with PetstoreClient(api.base_url, "k") as client:
        worker = InboxWorker(writer, client, fetch_thin=True, clock=clock, metrics=metrics, retry_delay=5.0)
        await worker.drain()
        # The good event went on; the two mixed-up answers wrote nothing and wait for a retry.
        assert read_db(db, "SELECT id, _version FROM orders") == [(7, 1)]
        assert read_db(db, "SELECT COUNT(*) FROM customers") == [(0,)]
        assert events(db)["t7"] == ("applied", "7", 1)
        assert events(db)["t5"][0] == events(db)["tx"][0] == "pending"
        assert inbox_ids(db) == {"t5", "tx"}
        assert read_db(db, "SELECT COUNT(*) FROM _dead_letters") == [(0,)]
        assert metrics.fetch_id_mismatches._value.get() == 2

        mixing_up = False
        await worker.drain()
    assert read_db(db, "SELECT id, _version FROM orders ORDER BY id") == [(5, 2), (7, 1)]
    assert events(db)["t5"] == ("applied", "5", 2)
    assert events(db)["tx"] == ("gone", "x#frag", None)  # no customer "x#frag" exists
    assert inbox_ids(db) == set()


async def test_order_ids_spelled_as_digits_are_one_record(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    # The listing says 12; a thin event says "12"; a full snapshot says "12". Another
    # listed order says "13".
    api.put("orders", order(12, 1))
    api.put("orders", order("13", 1))  # type: ignore[arg-type]
    api.put("customers", customer("007"))
    cfg = make_config(api.base_url, tmp_path / "mirror.db")
    async with PetstoreClient(api.base_url, "k") as client:
        await Poller(client, writer, cfg).poll("orders")
        await Poller(client, writer, cfg).poll("customers")
        api.put("orders", order(12, 2, status="approved"))
        await put(
            writer,
            ("thin", envelope("thin", "order.updated", {"id": "12"})),
            ("full", envelope("full", "order.shipped", order("12", 3, status="shipped"))),  # type: ignore[arg-type]
            ("cust", envelope("cust", "customer.registered", customer("007", 2))),
        )
        await InboxWorker(writer, client, fetch_thin=True).drain()
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT id, typeof(id), status, _version FROM orders ORDER BY id") == [
        (12, "integer", "shipped", 3),
        (13, "integer", "placed", 1),
    ]
    assert [s.target for s in api.gets("orders")] == ["/v1/orders/12"]
    ev = events(db)
    # One record: the fetched version 2 lost to the snapshot's version 3 of the same row.
    assert ev["thin"] == ("stale", "12", 2)
    assert ev["full"] == ("applied", "12", 3)
    # Customer ids are strings: "007" stays "007", never 7.
    assert read_db(db, "SELECT id, typeof(id), _version FROM customers") == [("007", "text", 2)]


async def test_an_oversized_record_leaves_its_event_to_retry_and_the_others_apply(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    # Record 2 is exactly api.max_response long; record 1 one byte longer.
    api.put("orders", order(1, 1, note="n" * 2001))
    api.put("orders", order(2, 1, note="n" * 2000))
    limit = len(json.dumps(order(2, 1, note="n" * 2000)).encode())
    await put(
        writer,
        ("big", envelope("big", "order.updated", {"id": 1})),
        ("ok", envelope("ok", "order.updated", {"id": 2})),
    )
    metrics = Metrics()
    async with PetstoreClient(api.base_url, "k", max_response=limit, metrics=metrics) as client:
        await InboxWorker(writer, client, fetch_thin=True).drain()
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT id FROM orders") == [(2,)]
    assert events(db)["ok"] == ("applied", "2", 1)
    assert inbox_ids(db) == {"big"}
    assert metrics.api_requests.labels(kind="fetch", status="too_large")._value.get() == 1


# -- the request budget ----------------------------------------------------------------------


async def test_a_burst_of_thin_events_costs_one_fetch_per_record_within_the_budget(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    ids = list(range(1, 11))
    for i in ids:
        api.put("orders", order(i, 3))
    await put(
        writer,
        *((f"e{n}", envelope(f"e{n}", "order.updated", {"id": ids[n % 10]})) for n in range(5000)),
    )
    metrics = Metrics()
    clock = FastForward()
    budget = RequestBudget(2.0, clock=clock, sleep=clock.sleep)
    async with PetstoreClient(api.base_url, "k", metrics=metrics, budget=budget) as client:
        await InboxWorker(writer, client, fetch_thin=True, metrics=metrics, clock=Clock()).drain()
    assert sorted(s.target for s in api.seen) == sorted(f"/v1/orders/{i}" for i in ids)
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT COUNT(*), MIN(_version), MAX(_version) FROM orders") == [(10, 3, 3)]
    outcomes = [outcome for outcome, *_ in events(db).values()]
    assert len(outcomes) == 5000
    assert outcomes.count("applied") == 10
    assert set(outcomes) == {"applied", "duplicate"}
    assert inbox_ids(db) == set()
    # Ten requests at 2/s with a burst of 2: the budget made them wait 4 s of its clock.
    assert clock.slept == pytest.approx(4.0)
    assert metrics.api_requests.labels(kind="fetch", status="200")._value.get() == 10
    assert metrics.thin_fetches_saved._value.get() == 4990
    text = metrics.render().decode()
    assert 'syncd_api_budget_wait_seconds_count{kind="fetch"} 10.0' in text
    assert 'syncd_api_requests_total{kind="fetch",status="200"} 10.0' in text


async def test_a_thin_event_received_after_the_fetch_was_sent_gets_a_fetch_of_its_own(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    api.put("orders", order(1, 1))
    clock = Clock(RECEIVED + 1)
    async with PetstoreClient(api.base_url, "k") as client:
        worker = InboxWorker(writer, client, fetch_thin=True, clock=clock)
        await put(writer, ("a", envelope("a", "order.updated", {"id": 1})), received_at=RECEIVED)
        await worker.drain()
        # The record changed after that fetch; its event arrives later than the fetch.
        api.put("orders", order(1, 2, status="approved"))
        await put(writer, ("b", envelope("b", "order.updated", {"id": 1})), received_at=RECEIVED + 5)
        await put(writer, ("c", envelope("c", "order.updated", {"id": 1})), received_at=RECEIVED)
        clock.now = RECEIVED + 10
        await worker.drain()
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT _version, status FROM orders") == [(2, "approved")]
    assert len(api.gets("orders")) == 2
    ev = events(db)
    assert ev["a"] == ("applied", "1", 1)
    assert ev["b"] == ("applied", "1", 2)
    # "c" was received before the first fetch went out: answered by it, with no request.
    assert ev["c"] == ("duplicate", "1", 1)


async def test_polls_go_before_fetches_that_wait_for_the_budget(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    for i in range(1, 9):
        api.put("orders", order(i, 1))
    api.put("customers", customer("c1"))
    await put(writer, *((f"e{i}", envelope(f"e{i}", "order.updated", {"id": i})) for i in range(1, 9)))
    clock = ManualClock()
    metrics = Metrics()
    budget = RequestBudget(1.0, burst=1, clock=clock, sleep=clock.sleep)
    cfg = make_config(api.base_url, tmp_path / "mirror.db")
    async with PetstoreClient(api.base_url, "k", budget=budget, metrics=metrics) as client:
        drain = asyncio.ensure_future(InboxWorker(writer, client, fetch_thin=True).drain())
        # One token: one fetch goes, seven wait.
        await api.until(lambda: budget.waiting("fetch") == 7 and len(api.seen) == 1)
        poll = asyncio.ensure_future(Poller(client, writer, cfg).poll("customers"))
        await api.until(lambda: budget.waiting() == 8)
        clock.advance(1.0)
        await api.until(lambda: len(api.seen) == 2)
        assert api.seen[1].path == "/v1/customers"  # the poll overtook seven waiting fetches
        result = await poll
        assert result.applied == 1
        while not drain.done():
            clock.advance(1.0)
            await api.until(lambda: drain.done() or budget.waiting() < 8)
            await asyncio.sleep(0)
        await drain
    db = tmp_path / "mirror.db"
    assert read_db(db, "SELECT COUNT(*) FROM orders") == [(8,)]
    assert read_db(db, "SELECT id FROM customers") == [("c1",)]
    assert metrics.registry.get_sample_value("syncd_api_budget_wait_seconds_count", {"kind": "relist"}) == 1
    assert metrics.registry.get_sample_value("syncd_api_budget_wait_seconds_sum", {"kind": "relist"}) == 1.0
