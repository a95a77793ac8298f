"""The API client against respx routes (status codes, retries, paging) and a silent socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from syncd.api import Page, PetstoreClient
from syncd.errors import ApiAuthError, ApiError, ApiTransientError, CursorExpiredError, RateLimitedError
from syncd.metrics import Metrics

BASE = "http://api.test/v1"


def order(i: int, ts: str = "2024-01-15T10:30:00.000Z", version: int = 1) -> dict[str, Any]:
    return {"id": i, "status": "placed", "updatedAt": ts, "version": version}


def page(records: list[dict[str, Any]], cursor: str | None = None) -> dict[str, Any]:
    return {"data": records, "has_more": cursor is not None, "next_cursor": cursor}


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


pytestmark = pytest.mark.usefixtures("no_backoff")


@pytest.fixture
def retry_attempts() -> int:
    return 5


@pytest.fixture
async def client() -> AsyncIterator[PetstoreClient]:
    async with PetstoreClient(BASE, "k3y", retry_attempts=6, metrics=Metrics(), sleep=FakeSleep()) as c:
        yield c


async def test_500_then_timeout_then_200_recovers(client: PetstoreClient) -> None:
    with respx.mock(base_url=BASE) as router:
        route = router.get("/orders").mock(
            side_effect=[
                httpx.Response(500, json={"error": {"code": "internal", "message": "boom"}}),
                httpx.ReadTimeout("slow"),
                httpx.Response(200, json=page([order(1)])),
            ]
        )
        got = await client.fetch_page("orders", since=None, limit=10, cursor=None)
    assert route.call_count == 3
    assert [r["id"] for r in got.records] == [1]
    assert client.stats.retries == 2
    assert client.stats.requests == 3
    assert route.calls.last.request.headers["Authorization"] == "Bearer k3y"


async def test_transient_errors_give_up_after_the_attempts() -> None:
    async with PetstoreClient(BASE, "k", retry_attempts=3) as c:
        with respx.mock(base_url=BASE) as router:
            route = router.get("/orders").mock(return_value=httpx.Response(503))
            with pytest.raises(ApiTransientError, match="HTTP 503") as info:
                await c.fetch_page("orders", since=None, limit=10, cursor=None)
    assert route.call_count == 3
    assert info.value.status == 503


async def test_429_waits_retry_after_on_the_injected_sleep() -> None:
    sleep = FakeSleep()
    async with PetstoreClient(BASE, "k", sleep=sleep) as c:
        with respx.mock(base_url=BASE) as router:
            route = router.get("/orders").mock(
                side_effect=[
                    httpx.Response(
                        429, headers={"Retry-After": "2"}, json={"error": {"code": "rate_limited"}}
                    ),
                    httpx.Response(200, json=page([order(7)])),
                ]
            )
            started = time.monotonic()
            got = await c.fetch_page("orders", since=None, limit=10, cursor=None)
    assert sleep.calls == [2.0]
    assert time.monotonic() - started < 1.0
    assert route.call_count == 2
    assert got.records[0]["id"] == 7
    assert c.stats.rate_limited == 1


async def test_endless_429_gives_up() -> None:
    sleep = FakeSleep()
    async with PetstoreClient(BASE, "k", sleep=sleep, max_rate_limited=3) as c:
        with respx.mock(base_url=BASE) as router:
            router.get("/orders").mock(return_value=httpx.Response(429, headers={"Retry-After": "1"}))
            with pytest.raises(RateLimitedError):
                await c.fetch_page("orders", since=None, limit=10, cursor=None)
    assert sleep.calls == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_stop_at_once(client: PetstoreClient, status: int) -> None:
    with respx.mock(base_url=BASE) as router:
        route = router.get("/customers").mock(
            return_value=httpx.Response(
                status, json={"error": {"code": "unauthorized", "message": "bad key"}}
            )
        )
        with pytest.raises(ApiAuthError, match=f"GET /customers: HTTP {status} unauthorized: bad key"):
            await client.fetch_page("customers", since=None, limit=10, cursor=None)
    assert route.call_count == 1


async def test_paging_keeps_since_and_limit_and_follows_the_cursor(client: PetstoreClient) -> None:
    since = "2024-01-15T10:00:00.000Z"
    with respx.mock(base_url=BASE) as router:
        route = router.get("/orders").mock(
            side_effect=[
                httpx.Response(200, json=page([order(1), order(2)], "c_1")),
                # A short page that still has more: trust has_more.
                httpx.Response(200, json=page([], "c_2")),
                httpx.Response(200, json=page([order(3)])),
            ]
        )
        pages = [p async for p in client.list_pages("orders", since=since, limit=2)]
    assert [[r["id"] for r in p.records] for p in pages] == [[1, 2], [], [3]]
    params = [dict(call.request.url.params) for call in route.calls]
    assert params == [
        {"limit": "2", "since": since},
        {"limit": "2", "since": since, "cursor": "c_1"},
        {"limit": "2", "since": since, "cursor": "c_2"},
    ]


async def test_cursor_expired_is_raised_to_the_caller(client: PetstoreClient) -> None:
    with respx.mock(base_url=BASE) as router:
        router.get("/orders").mock(
            side_effect=[
                httpx.Response(200, json=page([order(1)], "c_old")),
                httpx.Response(400, json={"error": {"code": "cursor_expired", "message": "too old"}}),
            ]
        )
        seen: list[Page] = []

        async def consume() -> None:
            async for p in client.list_pages("orders", since=None, limit=1):
                seen.append(p)

        with pytest.raises(CursorExpiredError, match="cursor_expired"):
            await consume()
    assert len(seen) == 1


async def test_other_400_is_an_api_error_without_retry(client: PetstoreClient) -> None:
    with respx.mock(base_url=BASE) as router:
        route = router.get("/orders").mock(
            return_value=httpx.Response(
                400, json={"error": {"code": "invalid_parameters", "message": "since"}}
            )
        )
        with pytest.raises(ApiError) as info:
            await client.fetch_page("orders", since="x", limit=10, cursor=None)
    assert info.value.code == "invalid_parameters"
    assert not isinstance(info.value, CursorExpiredError)
    assert route.call_count == 1


async def test_get_record_and_404(client: PetstoreClient) -> None:
    with respx.mock(base_url=BASE) as router:
        router.get("/orders/5").mock(return_value=httpx.Response(200, json=order(5)))
        router.get("/customers/cus_x").mock(
            return_value=httpx.Response(404, json={"error": {"code": "not_found", "message": "gone"}})
        )
        assert (await client.get_record("orders", 5)) == order(5)
        assert await client.get_record("customers", "cus_x") is None


async def test_webhook_endpoints(client: PetstoreClient) -> None:
    with respx.mock(base_url=BASE) as router:
        created = router.post("/webhooks").mock(
            return_value=httpx.Response(
                201, json={"id": "wh_1", "url": "https://x/h", "events": ["order.created"], "secret": "s"}
            )
        )
        router.get("/webhooks").mock(return_value=httpx.Response(200, json={"data": [{"id": "wh_1"}]}))
        deleted = router.delete("/webhooks/wh_1").mock(return_value=httpx.Response(204))
        endpoint = await client.register_webhook("https://x/h", ["order.created"])
        listed = await client.list_webhooks()
        await client.delete_webhook("wh_1")
    assert endpoint["secret"] == "s"
    assert json.loads(created.calls.last.request.content) == {
        "url": "https://x/h",
        "events": ["order.created"],
    }
    assert listed == [{"id": "wh_1"}]
    assert deleted.call_count == 1


async def test_requests_and_bytes_are_counted() -> None:
    metrics = Metrics()
    body = json.dumps(page([order(1)])).encode()
    async with PetstoreClient(BASE, "k", metrics=metrics) as c:
        with respx.mock(base_url=BASE) as router:
            router.get("/orders").mock(side_effect=[httpx.Response(502), httpx.Response(200, content=body)])
            await c.fetch_page("orders", since=None, limit=10, cursor=None)
    assert c.stats.requests == 2
    assert c.stats.bytes_received == len(body)
    assert metrics.api_requests.labels(kind="relist", status="200")._value.get() == 1
    assert metrics.api_requests.labels(kind="relist", status="502")._value.get() == 1
    assert metrics.api_bytes._value.get() == len(body)


async def test_a_hung_request_times_out() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keep the connection open, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with PetstoreClient(f"http://127.0.0.1:{port}", "k", timeout=0.2, retry_attempts=2) as c:
            started = time.monotonic()
            with pytest.raises(ApiTransientError, match="no answer in time"):
                await c.fetch_page("orders", since=None, limit=10, cursor=None)
            elapsed = time.monotonic() - started
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert len(accepted) == 2  # one attempt, one retry
    assert 0.35 < elapsed < 2.0
