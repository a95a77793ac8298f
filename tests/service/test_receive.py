"""`syncd receive` against a real nats-server with JetStream (one node for the module): a
delivery is answered 200 only once the stream holds it; every bad input of today's receiver
gets its answer and leaves the stream as it was; JetStream gone or too slow is 503 with
Retry-After; audit is JSON log lines; /readyz follows JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import StreamConfig

from syncd.config import Config, load_config
from syncd.push.jetstream_inbox import from_message, msg_id
from syncd.service.receive import ReceiveServer
from tests.nats_support import NatsCluster, make_cluster, require_nats_server, running_cluster
from tests.webhook_support import PATH, SECRET, envelope, signed_headers

pytestmark = pytest.mark.slow

_streams = iter(range(1_000_000))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats"), 1) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
async def clean_streams(server: NatsCluster) -> AsyncIterator[None]:
    """Streams of one test are gone before the next: they all take syncd.inbox.>."""
    yield
    nc = await nats.connect(server.urls[0])
    js = nc.jetstream()
    for name in await js.streams_info():
        await js.delete_stream(name.config.name)
    await nc.close()


def receive_config(tmp_path: Path, servers: list[str], **webhook: Any) -> Config:
    stream = f"INBOX_{next(_streams)}"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in webhook.items())
    text = (
        f'[webhook]\nlisten = "127.0.0.1:0"\npath = "{PATH}"\n{extra}'
        f'[admin]\nlisten = "127.0.0.1:0"\n'
        f"[nats]\nservers = {json.dumps(servers)}\nreplicas = 1\ninbox_stream = {json.dumps(stream)}\n"
        f'connect_timeout = "500ms"\n'
    )
    path = tmp_path / "receive.toml"
    path.write_text(text)
    return load_config(path, env={"PETSTORE_WEBHOOK_SECRET": SECRET}, require_secrets=False)


@contextlib.asynccontextmanager
async def running(
    cfg: Config, *, wait_nats: bool = True, audit: io.BytesIO | None = None
) -> AsyncIterator[ReceiveServer]:
    srv = ReceiveServer(cfg, audit_stream=audit or io.BytesIO())
    task = asyncio.create_task(srv.serve())
    for _ in range(600):
        if srv.webhook is not None and srv.webhook.serving:
            break
        assert not task.done(), "syncd receive exited during startup"
        await asyncio.sleep(0.01)
    if wait_nats:
        await srv.link.wait_ready(20)
    try:
        yield srv
    finally:
        srv.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            asyncio.get_running_loop().remove_signal_handler(sig)


async def stream_messages(url: str, stream: str) -> list[Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


async def post(srv: ReceiveServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    assert srv.webhook is not None
    async with httpx.AsyncClient(base_url=srv.webhook.url, timeout=10) as client:
        return await client.post(PATH, content=body, headers=headers)


async def test_a_delivery_is_in_the_stream_before_its_200(server: NatsCluster, tmp_path: Path) -> None:
    cfg = receive_config(tmp_path, server.urls)
    async with running(cfg) as srv:
        body = envelope("evt_1")
        first = await post(srv, body, signed_headers(body))
        again = await post(srv, body, signed_headers(body))
        messages = await stream_messages(server.urls[0], cfg.nats.inbox_stream)
    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    # JetStream's duplicate window: the same event id is stored once.
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert len(messages) == 1
    msg = messages[0]
    assert msg.subject == "syncd.inbox.orders"
    assert msg.headers["Nats-Msg-Id"] == "evt_1"
    # The raw body, byte for byte: what the signature was checked over.
    assert msg.data == body
    delivery = from_message(msg.headers, msg.data)
    assert (delivery.event_id, delivery.event_type, delivery.client) == (
        "evt_1",
        "order.created",
        "127.0.0.1",
    )
    assert delivery.headers["content-type"] == "application/json"
    assert not any("signature" in key for key in delivery.headers)


async def test_event_ids_a_header_cannot_carry_are_deduplicated_by_their_hash(
    server: NatsCluster, tmp_path: Path
) -> None:
    cfg = receive_config(tmp_path, server.urls)
    odd = "evt\r\nNats-Msg-Id: forged é"
    async with running(cfg) as srv:
        body = envelope(odd, "webhook.test", {})
        assert (await post(srv, body, signed_headers(body))).status_code == 200
        assert (await post(srv, body, signed_headers(body))).json() == {"status": "duplicate"}
        messages = await stream_messages(server.urls[0], cfg.nats.inbox_stream)
    assert len(messages) == 1
    assert messages[0].subject == "syncd.inbox.other"
    assert messages[0].headers["Nats-Msg-Id"] == msg_id(odd) != odd
    assert msg_id(odd).startswith("sha256:")
    assert from_message(messages[0].headers, messages[0].data).event_id == odd


BAD = [
    ("bad signature", lambda b: {**signed_headers(b), "X-Webhook-Signature": "00" * 32}, None, 401),
    ("wrong content type", lambda b: {**signed_headers(b), "Content-Type": "text/plain"}, None, 415),
    ("malformed JSON", lambda b: signed_headers(b), b'{"eventId": "evt_x", ', 400),
    ("not an object", lambda b: signed_headers(b), b"[1, 2]", 400),
    ("no event id", lambda b: signed_headers(b), b'{"event": "order.created", "data": {}}', 400),
    ("too large", lambda b: signed_headers(b), b'{"eventId": "evt_big", "pad": "' + b"x" * 4096 + b'"}', 413),
]


async def test_bad_inputs_get_their_answer_and_leave_the_stream_alone(
    server: NatsCluster, tmp_path: Path
) -> None:
    cfg = receive_config(tmp_path, server.urls, max_body="2KiB")
    trail = io.BytesIO()
    async with running(cfg, audit=trail) as srv:
        good = envelope("evt_good")
        assert (await post(srv, good, signed_headers(good))).status_code == 200
        answers = {}
        for what, headers, body, _ in BAD:
            sent = body if body is not None else envelope("evt_bad")
            answers[what] = (await post(srv, sent, headers(sent))).status_code
        messages = await stream_messages(server.urls[0], cfg.nats.inbox_stream)
    assert answers == {what: status for what, _, _, status in BAD}
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ["evt_good"]
    lines = [json.loads(line) for line in trail.getvalue().splitlines()]
    assert {line["logger"] for line in lines} == {"syncd.audit"}
    audit = [line["audit"] for line in lines]
    assert (audit[0]["status"], audit[0]["event_id"]) == (200, "evt_good")
    assert sorted(a["status"] for a in audit[1:]) == sorted(s for *_, s in BAD)
    assert all(a["path"] == PATH and a["at"].endswith("Z") for a in audit)


async def test_allowlist_and_rate_limit(server: NatsCluster, tmp_path: Path) -> None:
    cfg = receive_config(tmp_path, server.urls, rate_limit="1/m")
    async with running(cfg) as srv:
        answers = []
        for n in range(2):
            body = envelope(f"evt_r{n}")
            answers.append(await post(srv, body, signed_headers(body)))
        messages = await stream_messages(server.urls[0], cfg.nats.inbox_stream)
    assert [r.status_code for r in answers] == [200, 429]
    assert int(answers[1].headers["retry-after"]) >= 1
    assert len(messages) == 1
    only = (ipaddress.ip_network("10.0.0.0/8"),)
    denied = cfg.model_copy(update={"webhook": cfg.webhook.model_copy(update={"allow_ips": only})})
    async with running(denied) as srv:
        body = envelope("evt_denied")
        assert (await post(srv, body, signed_headers(body))).status_code == 403
        assert len(await stream_messages(server.urls[0], denied.nats.inbox_stream)) == 1


async def test_jetstream_gone_or_slow_is_503_with_retry_after(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "own", 1) as own:
        cfg = receive_config(tmp_path, own.urls, ack_timeout="500ms")
        node = own.nodes[0]
        async with running(cfg) as srv:
            admin = srv.admin
            assert admin is not None
            async with httpx.AsyncClient(base_url=admin.url) as client:
                assert (await client.get("/readyz")).status_code == 200
                # Slow: the server stops answering (SIGSTOP), the PubAck never comes in time.
                assert node.proc is not None
                node.proc.send_signal(signal.SIGSTOP)
                try:
                    body = envelope("evt_slow")
                    slow = await post(srv, body, signed_headers(body))
                finally:
                    node.proc.send_signal(signal.SIGCONT)
                # Gone: killed; the connection drops and /readyz says so.
                node.kill()
                for _ in range(200):
                    if (await client.get("/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                ready = await client.get("/readyz")
                body = envelope("evt_gone")
                gone = await post(srv, body, signed_headers(body))
                metrics = (await client.get("/metrics")).text
    assert (slow.status_code, slow.headers["retry-after"]) == (503, "1")
    assert (gone.status_code, gone.headers["retry-after"]) == (503, "5")
    assert ready.status_code == 503
    assert "NATS" in ready.json()["reason"]
    assert 'syncd_webhook_requests_total{reason="jetstream_unavailable",status="503"} 2.0' in metrics
    assert "syncd_jetstream_connected 0.0" in metrics


async def test_starts_without_nats_and_serves_once_it_is_up(tmp_path: Path) -> None:
    cluster = make_cluster(require_nats_server(), tmp_path / "late", 1)
    cfg = receive_config(tmp_path, cluster.urls)
    async with running(cfg, wait_nats=False) as srv:
        body = envelope("evt_early")
        early = await post(srv, body, signed_headers(body))
        cluster.start()
        try:
            await srv.link.wait_ready(30)
            late = await post(srv, body, signed_headers(body))
            existing = await stream_messages(cluster.urls[0], cfg.nats.inbox_stream)
        finally:
            cluster.stop()
    assert early.status_code == 503
    assert late.status_code == 200
    assert len(existing) == 1


async def test_an_existing_inbox_stream_is_not_altered(server: NatsCluster, tmp_path: Path) -> None:
    cfg = receive_config(tmp_path, server.urls)
    nc = await nats.connect(server.urls[0])
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=cfg.nats.inbox_stream, subjects=["syncd.inbox.>"], max_msgs=777, duplicate_window=10.0
        )
    )
    async with running(cfg) as srv:
        body = envelope("evt_e")
        assert (await post(srv, body, signed_headers(body))).status_code == 200
    info = await js.stream_info(cfg.nats.inbox_stream)
    await nc.close()
    assert (info.config.max_msgs, info.config.duplicate_window, info.state.messages) == (777, 10.0, 1)
