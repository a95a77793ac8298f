"""One test per bad input, against a real uvicorn server on loopback.

Each checks the answer, the audit row, that the receiver still serves, and that the event
acknowledged before the bad input is still stored."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from syncd.config import WebhookConfig
from syncd.push.inbox_worker import InboxWorker
from syncd.signatures import sign
from tests.webhook_support import (
    KNOWN_EVENT_IDS,
    PATH,
    SECRET,
    RunningReceiver,
    envelope,
    order,
    running_receiver,
    signed_headers,
)


class FrozenClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def receiver(tmp_path: Path, **kwargs: Any) -> AsyncIterator[tuple[RunningReceiver, httpx.AsyncClient]]:
    kwargs.setdefault("max_body", "64KiB")
    async with running_receiver(tmp_path, **kwargs) as rx, httpx.AsyncClient(timeout=10) as client:
        yield rx, client


async def deliver(
    client: httpx.AsyncClient, rx: RunningReceiver, event_id: str, **headers: str
) -> httpx.Response:
    body = envelope(event_id)
    return await client.post(
        rx.url, content=body, headers={**signed_headers(body, event_id=event_id), **headers}
    )


async def prime(rx: RunningReceiver, client: httpx.AsyncClient) -> None:
    response = await deliver(client, rx, "evt_prior")
    assert response.status_code == 200, response.text


async def last_audit(rx: RunningReceiver) -> tuple[Any, ...]:
    await rx.flush_audit()
    rows = rx.query(
        "SELECT client, method, path, status, reason, event_id, body_size FROM _audit ORDER BY id"
    )
    return rows[-1]


async def assert_intact(rx: RunningReceiver, client: httpx.AsyncClient) -> None:
    """Still serving, and the event acknowledged before is still stored."""
    response = await deliver(client, rx, "evt_after")
    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    stored = {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
    assert {"evt_prior", "evt_after"} <= stored
    assert {r[0] for r in rx.query("SELECT event_id FROM _inbox")} >= {"evt_prior", "evt_after"}


async def raw_exchange(rx: RunningReceiver, request: bytes, *, then: bytes = b"") -> bytes:
    """Send raw bytes (framing httpx will not produce) and read the answer."""
    reader, writer = await asyncio.open_connection(rx.host, rx.port)
    try:
        writer.write(request)
        await writer.drain()
        if then:
            with suppress(ConnectionError):
                # The server may answer and close before reading it all: that is the point.
                writer.write(then)
                await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def status_of(raw: bytes) -> int:
    return int(raw.split(b"\r\n", 1)[0].split()[1])


# -- signatures ------------------------------------------------------------------------------


async def test_wrong_signature(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        body = envelope("evt_bad")
        response = await client.post(
            rx.url, content=body, headers=signed_headers(body, secret="not-the-secret")
        )
        assert response.status_code == 401
        assert response.json() == {"error": "invalid signature"}
        assert await last_audit(rx) == (
            "127.0.0.1",
            "POST",
            PATH,
            401,
            "signature:bad_signature",
            None,
            len(body),
        )
        await assert_intact(rx, client)
        assert "evt_bad" not in {r[0] for r in rx.query(KNOWN_EVENT_IDS)}


async def test_no_signature(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        body = envelope("evt_unsigned")
        response = await client.post(rx.url, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 401
        assert response.json() == {"error": "invalid signature"}
        assert (await last_audit(rx))[3:5] == (401, "signature:missing_signature")
        await assert_intact(rx, client)


async def test_signature_of_a_reserialized_body(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        body = envelope("evt_reser")  # json.dumps default separators: ", " and ": "
        reserialized = json.dumps(json.loads(body), separators=(",", ":")).encode()
        assert reserialized != body
        response = await client.post(rx.url, content=body, headers=signed_headers(reserialized))
        assert response.status_code == 401
        assert (await last_audit(rx))[3:5] == (401, "signature:bad_signature")
        await assert_intact(rx, client)


async def test_old_secret_after_rotation_removed_it(tmp_path: Path) -> None:
    async with receiver(tmp_path, secrets=("old-secret", SECRET)) as (rx, client):
        await prime(rx, client)
        body = envelope("evt_old_ok")
        ok = await client.post(rx.url, content=body, headers=signed_headers(body, secret="old-secret"))
        assert ok.status_code == 200  # both secrets active during the rotation
        live = rx.app.receiver
        live.update_settings(live.settings.cfg, (SECRET,))
        body = envelope("evt_old_late")
        response = await client.post(rx.url, content=body, headers=signed_headers(body, secret="old-secret"))
        assert response.status_code == 401
        assert (await last_audit(rx))[3:5] == (401, "signature:bad_signature")
        await assert_intact(rx, client)


async def test_replayed_standard_webhooks_delivery_outside_tolerance(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(b"standard-webhooks-key-32-bytes!!").decode()
    clock = FrozenClock()
    async with receiver(
        tmp_path, scheme="standard-webhooks", tolerance="5m", secrets=(secret,), clock=clock
    ) as (rx, client):
        body = envelope("evt_prior")
        headers = sign("standard-webhooks", secret, body, msg_id="msg_1", timestamp=int(clock.now))
        first = await client.post(
            rx.url, content=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert first.status_code == 200
        # The same captured delivery, sent again ten minutes later.
        clock.now += 600
        again = await client.post(
            rx.url, content=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert again.status_code == 401
        assert again.json() == {"error": "invalid signature"}
        assert (await last_audit(rx))[3:5] == (401, "signature:timestamp_outside_tolerance")
        fresh = envelope("evt_after")
        fresh_headers = sign("standard-webhooks", secret, fresh, msg_id="msg_2", timestamp=int(clock.now))
        ok = await client.post(
            rx.url, content=fresh, headers={**fresh_headers, "Content-Type": "application/json"}
        )
        assert ok.status_code == 200
        assert {"evt_prior", "evt_after"} <= {r[0] for r in rx.query(KNOWN_EVENT_IDS)}


# -- size --------------------------------------------------------------------------------------


def _big_body(size: int) -> bytes:
    return envelope("evt_big", data=order(note="x" * size))


async def test_body_over_the_cap_with_honest_content_length(tmp_path: Path) -> None:
    async with receiver(tmp_path, max_body="4KiB") as (rx, client):
        await prime(rx, client)
        body = _big_body(8192)
        response = await client.post(rx.url, content=body, headers=signed_headers(body))
        assert response.status_code == 413
        assert (await last_audit(rx))[3:5] == (413, "body_too_large")
        await assert_intact(rx, client)


async def test_content_length_above_the_cap_is_refused_before_the_body_is_sent(tmp_path: Path) -> None:
    async with receiver(tmp_path, max_body="4KiB") as (rx, client):
        await prime(rx, client)
        # Announces 10 MB and sends nothing: the answer must come without waiting for a body.
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000000\r\nX-Webhook-Signature: 00\r\n\r\n"
        ).encode()
        raw = await raw_exchange(rx, head)
        assert status_of(raw) == 413
        assert (await last_audit(rx))[3:7] == (413, "body_too_large", None, 0)
        await assert_intact(rx, client)


async def test_lying_short_content_length_with_a_body_over_the_cap(tmp_path: Path) -> None:
    async with receiver(tmp_path, max_body="4KiB") as (rx, client):
        await prime(rx, client)
        body = _big_body(20000)
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100\r\nX-Webhook-Signature: {signed_headers(body)['X-Webhook-Signature']}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(rx.host, rx.port)
        try:
            writer.write(head + body[:100])
            await writer.drain()
            # Only the announced 100 bytes are this request's body: they do not match the signature.
            first = await asyncio.wait_for(reader.read(65536), 10)
            assert status_of(first) == 401
            assert (await last_audit(rx))[3:7] == (401, "signature:bad_signature", None, 100)
            # The rest is not a body at all: the server refuses it as a request and hangs up.
            with suppress(ConnectionError):
                writer.write(body[100:])
                await writer.drain()
            rest = await asyncio.wait_for(reader.read(65536), 10)
            assert rest == b"" or status_of(rest) == 400
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
        await assert_intact(rx, client)
        assert "evt_big" not in {r[0] for r in rx.query(KNOWN_EVENT_IDS)}


async def test_chunked_body_over_the_cap(tmp_path: Path) -> None:
    async with receiver(tmp_path, max_body="4KiB") as (rx, client):
        await prime(rx, client)
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nX-Webhook-Signature: 00\r\n\r\n"
        ).encode()
        chunk = b"x" * 1024
        # Five 1 KiB chunks pass the cap; the stream is never finished, so only the cap can answer.
        chunks = b"".join(b"400\r\n" + chunk + b"\r\n" for _ in range(5))
        raw = await raw_exchange(rx, head, then=chunks)
        assert status_of(raw) == 413
        row = await last_audit(rx)
        assert row[3:5] == (413, "body_too_large")
        assert 4096 < row[6] <= 5 * 1024
        await assert_intact(rx, client)


# -- content ---------------------------------------------------------------------------------


async def test_wrong_content_type(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        body = envelope("evt_ct")
        for content_type in ("text/plain", "application/json; charset=latin-1", "application/jsonx"):
            response = await client.post(
                rx.url, content=body, headers={**signed_headers(body), "Content-Type": content_type}
            )
            assert response.status_code == 415, content_type
            assert (await last_audit(rx))[3:5] == (415, "unsupported_media_type")
        ok = await client.post(
            rx.url,
            content=body,
            headers={**signed_headers(body), "Content-Type": "application/json; charset=UTF-8"},
        )
        assert ok.status_code == 200
        await assert_intact(rx, client)


async def _post_signed(rx: RunningReceiver, client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(rx.url, content=body, headers=signed_headers(body))


async def test_malformed_json(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        response = await _post_signed(rx, client, b'{"eventId": "evt_m", "event": ')
        assert response.status_code == 400
        assert (await last_audit(rx))[3:5] == (400, "malformed_json")
        await assert_intact(rx, client)


async def test_json_that_is_not_an_object(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        response = await _post_signed(rx, client, b'[{"eventId": "evt_list", "event": "order.created"}]')
        assert response.status_code == 400
        assert (await last_audit(rx))[3:5] == (400, "not_an_object")
        await assert_intact(rx, client)


async def test_signed_body_nested_too_deep_is_acknowledged_and_dead_lettered(tmp_path: Path) -> None:
    # A 400 would be retried by the provider for about 31 hours: the body is signed, so it is
    # acknowledged and kept as a dead letter with its reason, under an id from its bytes.
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        depth = 30_000
        head = b'{"eventId": "evt_deep", "event": "order.created", "data": '
        past_parser = head + b"[" * depth + b"]" * depth + b"}"
        # Deep, but within what the parser handles: refused by the depth limit, not by luck.
        past_limit = head + b"[" * 32 + b"]" * 32 + b"}"
        # 32 levels in all: the envelope, the record and 30 nested lists.
        nested: Any = 1
        for _ in range(30):
            nested = [nested]
        at_limit = envelope("evt_deep_ok", data=order(7, nested=nested))
        for body in (past_parser, past_limit):
            response = await _post_signed(rx, client, body)
            assert response.status_code == 200, response.text
            assert response.json() == {"status": "accepted"}
            assert (await last_audit(rx))[3:5] == (200, "accepted")
        again = await _post_signed(rx, client, past_parser)
        assert again.json() == {"status": "duplicate"}
        response = await _post_signed(rx, client, at_limit)
        assert response.json() == {"status": "accepted"}
        await assert_intact(rx, client)
        await InboxWorker(rx.writer, None, fetch_thin=False).drain()
        letters = dict(rx.query("SELECT event_id, reason FROM _dead_letters"))
        assert letters == {
            "sha256:"
            + hashlib.sha256(past_parser).hexdigest(): "body is nested deeper than the JSON parser's limit",
            "sha256:" + hashlib.sha256(past_limit).hexdigest(): "body is nested deeper than 32 levels",
        }
        assert {r[0] for r in rx.query("SELECT id FROM orders")} == {1, 7}
        assert rx.query("SELECT count(*) FROM _inbox") == [(0,)]


async def test_missing_event_id(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        response = await _post_signed(
            rx, client, json.dumps({"event": "order.created", "data": order()}).encode()
        )
        assert response.status_code == 400
        assert (await last_audit(rx))[3:5] == (400, "missing_event_id")
        await assert_intact(rx, client)


async def test_non_utf8_bytes(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        response = await _post_signed(
            rx, client, b'{"eventId": "evt_\xff\xfe", "event": "order.created", "data": {}}'
        )
        assert response.status_code == 400
        assert (await last_audit(rx))[3:5] == (400, "not_utf8")
        # UTF-16 is valid JSON to json.loads(bytes), but not what the contract sends.
        response = await _post_signed(rx, client, envelope("evt_utf16").decode().encode("utf-16"))
        assert response.status_code == 400
        await assert_intact(rx, client)


async def test_unknown_event_type_is_acknowledged_and_recorded(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        body = envelope("evt_unknown", event="refund.issued", data={"id": 9})
        response = await _post_signed(rx, client, body)
        assert response.status_code == 200
        assert response.json() == {"status": "accepted"}
        assert await last_audit(rx) == ("127.0.0.1", "POST", PATH, 200, "accepted", "evt_unknown", len(body))
        await InboxWorker(rx.writer, None, fetch_thin=False).drain()
        assert rx.query("SELECT event_type, outcome FROM _events WHERE event_id='evt_unknown'") == [
            ("refund.issued", "ignored")
        ]
        assert rx.query("SELECT outcome FROM _events WHERE event_id='evt_prior'") == [("applied",)]
        response = await deliver(client, rx, "evt_after")
        assert response.status_code == 200


async def test_invalid_record_is_acknowledged_then_dead_lettered(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        record = order(7)
        del record["version"]
        body = envelope("evt_noversion", data=record)
        response = await _post_signed(rx, client, body)
        assert response.status_code == 200  # a provider must not retry it forever
        assert (await last_audit(rx))[3:6] == (200, "accepted", "evt_noversion")
        await InboxWorker(rx.writer, None, fetch_thin=False).drain()
        (letter,) = rx.query("SELECT event_id, event_type, reason, body FROM _dead_letters")
        assert letter[:2] == ("evt_noversion", "order.created")
        assert "version" in letter[2]
        assert bytes(letter[3]) == body
        assert rx.query("SELECT outcome FROM _events WHERE event_id='evt_noversion'") == [("invalid",)]
        assert rx.query("SELECT id FROM orders") == [(1,)]  # evt_prior applied, the invalid one not


# -- who is asking ---------------------------------------------------------------------------


async def test_flood_from_one_ip(tmp_path: Path) -> None:
    clock = FrozenClock()
    async with receiver(tmp_path, rate_limit="5/s", clock=clock) as (rx, client):
        await prime(rx, client)
        statuses = [(await deliver(client, rx, f"evt_flood_{i}")).status_code for i in range(4)]
        assert statuses == [200] * 4  # burst of one second's worth, minus the primer
        response = await deliver(client, rx, "evt_flood_x")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert (await last_audit(rx))[3:5] == (429, "rate_limited")
        assert "evt_flood_x" not in {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
        clock.now += 1.0  # a second later the bucket has refilled
        await assert_intact(rx, client)


def reconfigure(rx: RunningReceiver, **update: Any) -> None:
    """A SIGHUP-style settings swap on the running receiver."""
    cfg = rx.app.receiver.settings.cfg
    rx.app.receiver.update_settings(WebhookConfig.model_validate({**cfg.model_dump(), **update}), (SECRET,))


async def test_request_from_a_disallowed_ip(tmp_path: Path) -> None:
    async with receiver(tmp_path, allow_ips=["10.0.0.0/8", "127.0.0.0/8"]) as (rx, client):
        await prime(rx, client)
        reconfigure(rx, allow_ips=["10.0.0.0/8"])
        response = await deliver(client, rx, "evt_ip")
        assert response.status_code == 403
        assert response.json() == {"error": "forbidden"}
        assert await last_audit(rx) == ("127.0.0.1", "POST", PATH, 403, "ip_not_allowed", None, 0)
        reconfigure(rx, allow_ips=["10.0.0.0/8", "127.0.0.0/8"])
        await assert_intact(rx, client)
        assert "evt_ip" not in {r[0] for r in rx.query(KNOWN_EVENT_IDS)}


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    async with receiver(tmp_path, allow_ips=["127.0.0.0/8"], trusted_proxies=["192.0.2.0/24"]) as (
        rx,
        client,
    ):
        await prime(rx, client)
        reconfigure(rx, allow_ips=["10.0.0.0/8"])
        # The header claims an allowed address; the peer (loopback) is no trusted proxy.
        response = await deliver(client, rx, "evt_spoof", **{"X-Forwarded-For": "10.1.2.3"})
        assert response.status_code == 403
        assert (await last_audit(rx))[:5] == ("127.0.0.1", "POST", PATH, 403, "ip_not_allowed")
        # Once loopback is a trusted proxy, the right-most untrusted hop is the client.
        reconfigure(rx, allow_ips=["10.0.0.0/8"], trusted_proxies=["127.0.0.0/8"])
        response = await deliver(
            client, rx, "evt_proxied", **{"X-Forwarded-For": "203.0.113.9, 10.1.2.3, 127.0.0.5"}
        )
        assert response.status_code == 200
        assert (await last_audit(rx))[:5] == ("10.1.2.3", "POST", PATH, 200, "accepted")
        reconfigure(rx, allow_ips=["127.0.0.0/8"], trusted_proxies=[])
        await assert_intact(rx, client)
        assert "evt_spoof" not in {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
