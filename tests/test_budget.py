"""The request budget on a clock the test moves: order, priority, cancellation, rate changes
(also by a reload of the running daemon)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from syncd.api import PetstoreClient
from syncd.budget import RequestBudget, RequestKind
from syncd.config import Config
from syncd.config_secrets import Secrets
from syncd.metrics import Metrics
from syncd.service.reload import retune_client
from tests.fake_clocks import ManualClock


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_unlimited_lets_everything_through_and_counts_it() -> None:
    metrics = Metrics()
    budget = RequestBudget(None, metrics=metrics)
    assert [await budget.acquire("fetch") for _ in range(1000)] == [0.0] * 1000
    assert metrics.registry.get_sample_value("syncd_api_budget_wait_seconds_count", {"kind": "fetch"}) == 1000


async def test_the_rate_holds_at_the_bound_and_listings_go_first() -> None:
    clock = ManualClock()
    budget = RequestBudget(2.0, burst=2, clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def take(kind: RequestKind, name: str) -> None:
        await budget.acquire(kind)
        order.append(name)

    # The burst: two at once, the third waits.
    tasks = [asyncio.ensure_future(take("fetch", f"f{i}")) for i in range(4)]
    await settle()
    assert order == ["f0", "f1"]
    tasks.append(asyncio.ensure_future(take("poll", "p")))
    tasks.append(asyncio.ensure_future(take("relist", "r")))
    await settle()
    clock.advance(0.4999)
    await settle()
    assert order == ["f0", "f1"]  # just short of one token
    clock.advance(0.0001)
    await settle()
    assert order == ["f0", "f1", "p"]  # the poll overtook the waiting fetches
    clock.advance(0.5)
    await settle()
    clock.advance(0.5)
    await settle()
    clock.advance(0.5)
    await settle()
    assert order == ["f0", "f1", "p", "r", "f2", "f3"]
    await asyncio.gather(*tasks)
    budget.close()


async def test_a_cancelled_waiter_gives_its_place_and_token_back() -> None:
    clock = ManualClock()
    budget = RequestBudget(1.0, burst=1, clock=clock, sleep=clock.sleep)
    await budget.acquire("poll")
    gone = asyncio.ensure_future(budget.acquire("fetch"))
    stays = asyncio.ensure_future(budget.acquire("fetch"))
    await settle()
    assert budget.waiting("fetch") == 2
    gone.cancel()
    await settle()
    assert budget.waiting("fetch") == 1
    clock.advance(1.0)
    await settle()
    assert stays.done()
    assert budget.waiting() == 0
    budget.close()


async def test_a_new_rate_applies_to_requests_already_waiting() -> None:
    clock = ManualClock()
    budget = RequestBudget(0.1, burst=1, clock=clock, sleep=clock.sleep)
    await budget.acquire("poll")
    waiting = asyncio.ensure_future(budget.acquire("poll"))
    await settle()
    budget.set_rate(None)  # a reload removed the limit
    await settle()
    assert waiting.done()
    budget.set_rate(5.0)
    assert budget.rate == 5.0
    budget.close()


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="rate above 0"):
        RequestBudget(0.0)


async def test_a_reload_changes_the_rate_of_the_running_client() -> None:
    def config(rate: str | None) -> Config:
        api: dict[str, str] = {"base_url": "http://127.0.0.1:9/v1"}
        if rate is not None:
            api["rate_limit"] = rate
        cfg = Config.model_validate({"api": api, "sync": {"mode": "poll"}})
        return cfg.model_copy(update={"secrets": Secrets("k", ())})

    unlimited, limited = config(None), config("5/s")
    client = PetstoreClient.from_config(unlimited)
    try:
        assert client.budget.rate is None
        retune_client(client, unlimited, limited)
        assert client.budget.rate == 5.0
        retune_client(client, limited, unlimited)
        assert client.budget.rate is None
    finally:
        await client.aclose()


async def test_a_hold_stops_every_request_until_it_ends_limited_or_not() -> None:
    for rate in (None, 100.0):
        clock = ManualClock()
        budget = RequestBudget(rate, clock=clock, sleep=clock.sleep)
        with budget.held():
            assert budget.holding
            waiting = [asyncio.ensure_future(budget.acquire(kind)) for kind in ("fetch", "poll")]
            await settle()
            clock.advance(60)  # time alone does not end a hold
            await settle()
            assert not any(w.done() for w in waiting)
            assert budget.waiting() == 2
            with budget.held():  # a second 429 while the first waits
                pass
            await settle()
            assert not any(w.done() for w in waiting)
        await settle()
        assert all(w.done() for w in waiting)
        assert not budget.holding
        assert budget.waiting() == 0
        budget.close()


async def test_a_429_holds_the_other_requests_of_the_client() -> None:
    # One request gets 429 with Retry-After: 30; another, sent while the first waits, goes
    # out only after that wait ends.
    clock = ManualClock()
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path.endswith("/orders") and sent.count(request.url.path) == 1:
            return httpx.Response(
                429, headers={"Retry-After": "30"}, json={"error": {"code": "rate_limited"}}
            )
        return httpx.Response(200, json={"data": [], "has_more": False, "next_cursor": None})

    client = PetstoreClient(
        "http://127.0.0.1:9/v1",
        "k",
        sleep=clock.sleep,
        transport=httpx.MockTransport(handler),
        budget=RequestBudget(None, clock=clock, sleep=clock.sleep),
    )
    try:
        first = asyncio.ensure_future(client.fetch_page("orders", since=None, limit=10, cursor=None))
        await settle()
        assert client.budget.holding
        second = asyncio.ensure_future(client.fetch_page("customers", since=None, limit=10, cursor=None))
        await settle()
        assert sent == ["/v1/orders"]
        clock.advance(29.9)
        await settle()
        assert sent == ["/v1/orders"]
        clock.advance(0.1)
        await asyncio.gather(first, second)
        assert sorted(sent[1:]) == ["/v1/customers", "/v1/orders"]
        assert not client.budget.holding
    finally:
        await client.aclose()
