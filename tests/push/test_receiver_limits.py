"""What an unsigned client can cost the public listener, over real HTTP on loopback: request
heads bounded in time, size and count, idle connections closed or evicted, every path
admitted and rate limited, rejections audited within a budget, logged values escaped.

Each test ends with a good delivery acknowledged and stored after the bad input."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.config import LogConfig
from syncd.logs import setup_logging
from tests.push.test_bad_inputs import FrozenClock, assert_intact, prime, reconfigure
from tests.webhook_support import (
    KNOWN_EVENT_IDS,
    PATH,
    RunningReceiver,
    envelope,
    running_receiver,
    signed_headers,
)

CAP = 4096
MAX_HEADERS = 12


@asynccontextmanager
async def receiver(tmp_path: Path, **kwargs: Any) -> AsyncIterator[tuple[RunningReceiver, httpx.AsyncClient]]:
    async with running_receiver(tmp_path, **kwargs) as rx, httpx.AsyncClient(timeout=10) as client:
        yield rx, client


@asynccontextmanager
async def connection(rx: RunningReceiver) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(rx.host, rx.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded wait)."""
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        data += chunk
    return data


def signed_request(event_id: str, pad_headers: dict[str, str]) -> tuple[bytes, int, int]:
    """A signed delivery as raw bytes, plus its field bytes (target + names + values) and
    field count as the listener counts them."""
    body = envelope(event_id)
    fields = {
        "Host": "127.0.0.1",
        **signed_headers(body, event_id=event_id),
        "Content-Length": str(len(body)),
        "Connection": "close",
        **pad_headers,
    }
    head = f"POST {PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    size = len(PATH) + sum(len(k) + len(v) for k, v in fields.items())
    return head.encode() + body, size, len(fields)


def status_of(raw: bytes) -> int:
    return int(raw.split(b"\r\n", 1)[0].split()[1])


async def exchange(rx: RunningReceiver, request: bytes) -> bytes:
    async with connection(rx) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return await closed_by_server(reader)


async def test_header_bytes_at_the_cap_pass_and_one_over_gets_431(tmp_path: Path) -> None:
    async with receiver(tmp_path, max_header_bytes=CAP, max_headers=MAX_HEADERS) as (rx, client):
        await prime(rx, client)
        _, base, _ = signed_request("evt_cap", {"X-Pad": ""})
        pad = "p" * (CAP - base)
        at_cap, size, _ = signed_request("evt_cap", {"X-Pad": pad})
        assert size == CAP
        assert status_of(await exchange(rx, at_cap)) == 200
        over, size, _ = signed_request("evt_ovr", {"X-Pad": pad + "p"})
        assert size == CAP + 1
        answer = await exchange(rx, over)
        assert status_of(answer) == 431
        assert b"connection: close" in answer
        # A value still unfinished past the cap is refused before the parser reports it.
        async with connection(rx) as (reader, writer):
            writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"b" * 2 * CAP)
            await writer.drain()
            assert status_of(await closed_by_server(reader)) == 431
        events = {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
        assert "evt_cap" in events
        assert "evt_ovr" not in events
        await assert_intact(rx, client)


async def test_header_count_at_the_bound_passes_and_one_over_gets_431(tmp_path: Path) -> None:
    async with receiver(tmp_path, max_headers=MAX_HEADERS) as (rx, client):
        await prime(rx, client)
        _, _, base = signed_request("evt_n", {})
        pads = {f"X-Pad-{i}": "v" for i in range(MAX_HEADERS - base)}
        at_bound, _, count = signed_request("evt_n", pads)
        assert count == MAX_HEADERS
        assert status_of(await exchange(rx, at_bound)) == 200
        over, _, count = signed_request("evt_n_over", {**pads, "X-One-More": "v"})
        assert count == MAX_HEADERS + 1
        assert status_of(await exchange(rx, over)) == 431
        events = {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
        assert "evt_n" in events
        assert "evt_n_over" not in events
        await assert_intact(rx, client)


async def test_a_head_never_finished_is_disconnected_after_the_header_timeout(tmp_path: Path) -> None:
    async with receiver(tmp_path, header_timeout="500ms", idle_timeout="1h") as (rx, client):
        await prime(rx, client)
        async with connection(rx) as (silent, _), connection(rx) as (partial, writer):
            writer.write(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl".encode())
            await writer.drain()
            # Closed without an answer: nothing was asked.
            assert await closed_by_server(silent) == b""
            assert await closed_by_server(partial) == b""
        await assert_intact(rx, client)


async def test_a_body_dripped_past_the_body_timeout_gets_408_and_a_close(tmp_path: Path) -> None:
    async with receiver(tmp_path, body_timeout="500ms", header_timeout="1h") as (rx, client):
        await prime(rx, client)
        request, _, _ = signed_request("evt_drip", {})
        head, body = request.split(b"\r\n\r\n", 1)
        # In pieces, but whole well within the timeout: delivered.
        async with connection(rx) as (reader, writer):
            quick, _, _ = signed_request("evt_pieces", {})
            quick_head, quick_body = quick.split(b"\r\n\r\n", 1)
            writer.write(quick_head + b"\r\n\r\n" + quick_body[:10])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(quick_body[10:])
            await writer.drain()
            assert status_of(await closed_by_server(reader)) == 200
        # Half a body, then nothing: the client is told and cut off.
        async with connection(rx) as (reader, writer):
            writer.write(head + b"\r\n\r\n" + body[: len(body) // 2])
            await writer.drain()
            answer = await closed_by_server(reader)
            assert status_of(answer) == 408
            assert b"connection: close" in answer
        events = {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
        assert "evt_pieces" in events
        assert "evt_drip" not in events
        await assert_intact(rx, client)


async def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with receiver(tmp_path, idle_timeout="500ms", header_timeout="1h") as (rx, client):
        await prime(rx, client)
        request, _, _ = signed_request("evt_keep", {})
        request = request.replace(b"Connection: close", b"Connection: keep-alive")
        async with connection(rx) as (reader, writer):
            writer.write(request)
            await writer.drain()
            answer = await closed_by_server(reader)
        assert status_of(answer) == 200
        assert answer.endswith(b'{"status":"accepted"}')
        await assert_intact(rx, client)


async def test_idle_connections_past_the_bound_make_room_for_a_delivery(tmp_path: Path) -> None:
    async with receiver(tmp_path, max_connections=16, header_timeout="1h") as (rx, client):
        await prime(rx, client)  # the client's connection stays open: one of the 16
        async with connection(rx) as (oldest, _):
            idle = [await asyncio.open_connection(rx.host, rx.port) for _ in range(15)]
            try:
                body = envelope("evt_room")
                async with httpx.AsyncClient(timeout=10) as fresh:
                    response = await fresh.post(rx.url, content=body, headers=signed_headers(body))
                assert response.status_code == 200
                assert await closed_by_server(oldest) == b""
            finally:
                for _, writer in idle:
                    writer.close()
                    with suppress(ConnectionError):
                        await writer.wait_closed()
        assert "evt_room" in {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
        await assert_intact(rx, client)


async def test_other_paths_are_admitted_and_rate_limited_like_deliveries(tmp_path: Path) -> None:
    clock = FrozenClock()
    async with receiver(tmp_path, rate_limit="3/s", clock=clock) as (rx, client):
        await prime(rx, client)
        base = f"http://{rx.host}:{rx.port}"
        statuses = [(await client.get(base + "/probe")).status_code for _ in range(3)]
        assert statuses == [404, 404, 429]
        clock.now += 1.0
        reconfigure(rx, allow_ips=["192.0.2.0/24"])
        assert (await client.get(base + "/probe")).status_code == 403
        reconfigure(rx, allow_ips=["127.0.0.0/8"])
        await assert_intact(rx, client)


async def test_ten_thousand_404s_write_a_bounded_number_of_audit_rows(tmp_path: Path) -> None:
    clock = FrozenClock()
    async with receiver(tmp_path, clock=clock) as (rx, client):
        await prime(rx, client)
        base = f"http://{rx.host}:{rx.port}"
        async with connection(rx) as (reader, writer):
            # Pipelined in rounds: the answers come back in order on the one connection.
            for start in range(0, 10_000, 500):
                writer.write(
                    b"".join(
                        b"GET /probe/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(start, start + 500)
                    )
                )
                await writer.drain()
                answers = b""
                while answers.count(b"HTTP/1.1 ") < 500:
                    answers += await asyncio.wait_for(reader.read(65536), 10)
                assert answers.count(b"HTTP/1.1 404 ") == 500
        await rx.flush_audit()
        assert rx.query("SELECT count(*) FROM _audit WHERE status = 404") == [(20,)]
        sampled = rx.metrics.registry.get_sample_value("syncd_webhook_audit_sampled_out_total")
        assert sampled == 10_000 - 20
        assert (
            rx.metrics.registry.get_sample_value(
                "syncd_webhook_requests_total", {"status": "404", "reason": "not_found"}
            )
            == 10_000
        )
        clock.now += 1.0  # one more row a second
        assert (await client.get(f"{base}/probe/last")).status_code == 404
        await rx.flush_audit()
        assert rx.query("SELECT count(*) FROM _audit WHERE status = 404") == [(21,)]
        await assert_intact(rx, client)
        await rx.flush_audit()
        assert rx.query("SELECT count(*) FROM _audit WHERE status = 200") == [(2,)]


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_path_with_line_breaks_and_escapes_is_logged_escaped(tmp_path: Path, fmt: str) -> None:
    out = io.StringIO()
    setup_logging(LogConfig.model_validate({"format": fmt, "level": "info"}), stream=out)
    async with receiver(tmp_path) as (rx, client):
        await prime(rx, client)
        forged = "/x%0a2024-01-01 00:00:00 ERROR syncd: forged%0d%1b[2J%e2%80%ae"
        response = await client.get(f"http://{rx.host}:{rx.port}{forged}")
        assert response.status_code == 404
        await assert_intact(rx, client)
    text = out.getvalue()
    for raw in ("\x1b", "\r", "\u202e"):
        assert raw not in text
    lines = [line for line in text.splitlines() if "forged" in line]
    assert len(lines) == 1
    shown = json.loads(lines[0])["msg"] if fmt == "json" else lines[0]
    assert (
        "/x\\n2024-01-01 00:00:00 ERROR syncd: forged\\r\\x1b[2J\\u202e from 127.0.0.1: 404 not_found"
        in shown
    )


async def test_a_reload_names_listener_limits_that_need_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiver(tmp_path, max_headers=MAX_HEADERS) as (rx, client):
        await prime(rx, client)
        with caplog.at_level(logging.WARNING, logger="syncd.push.receiver"):
            reconfigure(rx, max_headers=MAX_HEADERS + 1, rate_limit="1000/s")
        assert [r.getMessage() for r in caplog.records] == [
            "webhook.max_headers changed; it takes effect after a restart"
        ]
        await assert_intact(rx, client)
