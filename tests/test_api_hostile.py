"""The API client and the pull path against a hostile API on loopback (tests/hostile_api.py):
a body dripped a byte at a time, pages at and past api.max_response, a certificate that fails
verification, and Retry-After values no API should send. Each checks the answer, that the
next poll works, and that what the mirror held before is still there."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from syncd.api import PetstoreClient
from syncd.api_transport import MAX_RETRY_AFTER, parse_retry_after
from syncd.errors import ApiResponseTooLargeError, ApiTlsError, ApiTransientError
from syncd.metrics import Metrics
from syncd.poll.poller import Poller
from syncd.store.writer import Writer
from tests.hostile_api import HostileApi, Seen, http_response, make_certificate, page_body
from tests.poll_helpers import cursor_of, make_config, mirror_versions

pytestmark = pytest.mark.usefixtures("no_backoff")


@pytest.fixture
def retry_attempts() -> int:
    return 5


@pytest.fixture
async def api() -> AsyncIterator[HostileApi]:
    server = await HostileApi().start()
    yield server
    await server.close()


def order(i: int, version: int = 1, ts: str = "2024-01-15T10:30:00.000Z", **extra: Any) -> dict[str, Any]:
    return {"id": i, "status": "placed", "updatedAt": ts, "version": version, **extra}


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def poller_for(api: HostileApi, writer: Writer, tmp_path: Path, client: PetstoreClient) -> Poller:
    return Poller(client, writer, make_config(api.base_url, tmp_path / "mirror.db"))


async def first_sync(api: HostileApi, poller: Poller) -> None:
    """Mirror two orders so each test can check they survive the fault."""
    api.put("orders", order(1))
    api.put("orders", order(2))
    await poller.poll("orders")


def assert_first_sync_intact(tmp_path: Path, **more: int) -> None:
    assert mirror_versions(tmp_path / "mirror.db", "orders") == {"1": 1, "2": 1, **more}


# -- whole-request timeout -------------------------------------------------------------------


async def test_a_dripped_body_is_cut_off_by_the_whole_request_timeout(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    dripping = True
    drips: list[int] = []

    async def drip(seen: Seen, w: asyncio.StreamWriter) -> bool:
        if not dripping or seen.path != "/v1/orders":
            return False
        body = api.answer(seen)
        # A byte every 20 ms: every read is far inside httpx's per-read timeout, the whole
        # answer would take minutes.
        w.write(body[:40])
        sent = 40
        for byte in body[40:] + b" " * 10_000:
            w.write(bytes([byte]))
            await w.drain()
            sent += 1
            drips.append(sent)
            await asyncio.sleep(0.02)
        return True

    metrics = Metrics()
    async with PetstoreClient(api.base_url, "k", timeout=0.3, retry_attempts=2, metrics=metrics) as client:
        poller = poller_for(api, writer, tmp_path, client)
        await first_sync(api, poller)
        cursor = cursor_of(tmp_path / "mirror.db", "orders")
        api.put("orders", order(3, ts="2024-01-15T10:31:00.000Z"))
        api.fault = drip
        with pytest.raises(
            ApiTransientError, match=r"GET /orders: no answer in time.*api\.timeout \(0\.3s\)"
        ):
            await poller.poll("orders")
        # Both attempts were cut off well before the dripped answer could end.
        await api.until(lambda: api.cut_off == 2)
        assert len(drips) < 10_000
        assert metrics.api_requests.labels(kind="poll", status="timeout")._value.get() == 2
        assert cursor_of(tmp_path / "mirror.db", "orders") == cursor
        assert_first_sync_intact(tmp_path)

        dripping = False
        result = await poller.poll("orders")
    assert result.applied == 1
    assert_first_sync_intact(tmp_path, **{"3": 1})


async def test_a_slow_answer_that_ends_within_the_timeout_is_taken(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    async def slow(seen: Seen, w: asyncio.StreamWriter) -> bool:
        body = api.answer(seen)
        for start in range(0, len(body), 16):
            w.write(body[start : start + 16])
            await w.drain()
            await asyncio.sleep(0.01)
        return True

    api.fault = slow
    async with PetstoreClient(api.base_url, "k", timeout=20, retry_attempts=1) as client:
        poller = poller_for(api, writer, tmp_path, client)
        await first_sync(api, poller)
    assert client.stats.retries == 0
    assert_first_sync_intact(tmp_path)


# -- response size ---------------------------------------------------------------------------


async def test_a_page_of_exactly_max_response_passes_and_one_byte_more_is_refused(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    # Larger than the first sync's page, so only the faulty answer meets the bound.
    exact = page_body([order(5, ts="2024-01-15T10:31:00.000Z", note="n" * 1000)], None)
    padding = {"size": 0}

    async def sized(seen: Seen, w: asyncio.StreamWriter) -> bool:
        if seen.path != "/v1/orders" or "since" not in seen.target:
            return False
        # JSON allows trailing whitespace: the same page, `size` bytes longer.
        w.write(http_response(200, exact + b" " * padding["size"]))
        return True

    metrics = Metrics()
    async with PetstoreClient(api.base_url, "k", max_response=len(exact), metrics=metrics) as client:
        poller = poller_for(api, writer, tmp_path, client)
        await first_sync(api, poller)
        cursor = cursor_of(tmp_path / "mirror.db", "orders")
        api.fault = sized

        padding["size"] = 1
        with pytest.raises(
            ApiResponseTooLargeError, match=r"GET /orders: response declares .* api\.max_response"
        ):
            await poller.poll("orders")
        assert cursor_of(tmp_path / "mirror.db", "orders") == cursor
        assert_first_sync_intact(tmp_path)
        assert metrics.api_requests.labels(kind="poll", status="too_large")._value.get() == 1

        padding["size"] = 0
        result = await poller.poll("orders")
    assert result.applied == 1
    assert_first_sync_intact(tmp_path, **{"5": 1})


async def test_an_endless_body_without_a_length_is_refused_while_it_streams(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    total = 64 * 1024 * 1024
    sent = {"bytes": 0}

    async def endless(seen: Seen, w: asyncio.StreamWriter) -> bool:
        if seen.path != "/v1/orders" or "since" not in seen.target:
            return False
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        w.write(b'{"data": [')
        chunk = b" " * 65536
        while sent["bytes"] < total:
            w.write(chunk)
            await w.drain()
            sent["bytes"] += len(chunk)
        return True

    async with PetstoreClient(api.base_url, "k", max_response=1024 * 1024) as client:
        poller = poller_for(api, writer, tmp_path, client)
        await first_sync(api, poller)
        api.fault = endless
        with pytest.raises(ApiResponseTooLargeError, match=r"larger than 1048576 bytes"):
            await poller.poll("orders")
        # The client hung up: the server could not write the rest (socket buffers hold a
        # few MiB, not 64).
        await api.until(lambda: api.cut_off == 1)
        assert sent["bytes"] < total
        assert_first_sync_intact(tmp_path)
        api.fault = None
        api.put("orders", order(6, ts="2024-01-15T10:31:00.000Z"))
        assert (await poller.poll("orders")).applied == 1
    assert_first_sync_intact(tmp_path, **{"6": 1})


async def test_an_oversized_error_body_is_read_only_in_part(api: HostileApi) -> None:
    async def huge_503(seen: Seen, w: asyncio.StreamWriter) -> bool:
        w.write(http_response(503, b"x" * (8 * 1024 * 1024)))
        return True

    api.fault = huge_503
    async with PetstoreClient(api.base_url, "k", retry_attempts=1) as client:
        with pytest.raises(ApiTransientError, match="HTTP 503") as info:
            await client.fetch_page("orders", since=None, limit=10, cursor=None)
    assert len(str(info.value)) < 500
    assert client.stats.bytes_received < 8 * 1024 * 1024


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


async def test_a_certificate_that_fails_verification_is_reported_and_not_retried(
    certificate: tuple[Path, Path], writer: Writer, tmp_path: Path
) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    api = await HostileApi(ssl_context=server_ctx).start()
    try:
        api.put("orders", order(1))
        metrics = Metrics()
        async with PetstoreClient(api.base_url, "k", metrics=metrics, retry_attempts=5) as untrusting:
            poller = poller_for(api, writer, tmp_path, untrusting)
            with pytest.raises(
                ApiTlsError,
                match=r"GET /orders: the TLS certificate of 127\.0\.0\.1 failed verification: self.signed",
            ):
                await poller.poll("orders")
        assert untrusting.stats.retries == 0
        assert metrics.api_requests.labels(kind="relist", status="tls_error")._value.get() == 1
        assert api.seen == []  # no request, so no API key, ever left over the untrusted connection

        # The same API with its certificate trusted: the pipeline runs.
        trusting_ctx = ssl.create_default_context(cafile=str(cert))
        async with PetstoreClient(api.base_url, "k", verify=trusting_ctx) as trusting:
            result = await poller_for(api, writer, tmp_path, trusting).poll("orders")
        assert result.applied == 1
        assert mirror_versions(tmp_path / "mirror.db", "orders") == {"1": 1}
    finally:
        await api.close()


# -- Retry-After -----------------------------------------------------------------------------


DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
NOW = 1445412480.0  # DATE as a timestamp


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        ("2", None, 2.0),
        (" 7 ", None, 7.0),
        ("1.5", None, 1.5),
        ("0", None, 0.0),
        (str(int(MAX_RETRY_AFTER)), None, MAX_RETRY_AFTER),
        (str(int(MAX_RETRY_AFTER) + 1), None, MAX_RETRY_AFTER),
        ("9" * 400, None, MAX_RETRY_AFTER),  # huge: capped (it overflows a float to inf)
        ("nan", None, None),
        ("inf", None, None),
        ("-3", None, None),
        ("1e3", None, None),
        ("soon", None, None),
        ("", None, None),
        (None, None, None),
        # HTTP-dates are legal (RFC 9110): measured from the response's Date...
        ("Wed, 21 Oct 2015 07:28:30 GMT", DATE, 30.0),
        # ...or from our clock when it has none; past dates wait nothing, far ones the cap.
        ("Wed, 21 Oct 2015 07:28:10 GMT", None, 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", DATE, 0.0),
        ("Wed, 21 Oct 2099 07:28:00 GMT", DATE, MAX_RETRY_AFTER),
        ("Wed, 21 Oct 2015 07:28:30 GMT", "garbage", 30.0),
        ("Wed, 32 Oct 2015 99:99:99 GMT", DATE, None),
    ],
)
def test_retry_after_values(value: str | None, date: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, date=date, now=NOW) == expected


async def test_429s_with_unusable_retry_after_back_off_and_the_poll_completes(
    api: HostileApi, writer: Writer, tmp_path: Path
) -> None:
    answers = [
        ("nan", None),
        ("inf", None),
        ("-3", None),
        ("garbage", None),
        ("999999999", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", DATE),
    ]

    async def limited(seen: Seen, w: asyncio.StreamWriter) -> bool:
        if seen.path != "/v1/orders" or not answers:
            return False
        retry_after, date = answers.pop(0)
        headers = {"Retry-After": retry_after} | ({"Date": date} if date else {})
        body = json.dumps({"error": {"code": "rate_limited", "message": "slow down"}}).encode()
        w.write(http_response(429, body, headers))
        return True

    api.put("orders", order(1))
    api.fault = limited
    sleep = FakeSleep()
    async with PetstoreClient(api.base_url, "k", sleep=sleep) as client:
        result = await poller_for(api, writer, tmp_path, client).poll("orders")
    # Unusable values back off 1, 2, 4, 8 s; a huge one is capped; a date is honoured.
    assert sleep.calls == [1.0, 2.0, 4.0, 8.0, MAX_RETRY_AFTER, 30.0]
    assert result.applied == 1
    assert client.stats.rate_limited == 6
    assert mirror_versions(tmp_path / "mirror.db", "orders") == {"1": 1}
