"""The mirror's consumer of the inbox stream against a real nats-server (one node for the
module): deliveries land in the SQLite inbox and are acked only after the commit; a commit
that fails acks nothing and the batch comes again; a message no receiver published is
terminated without holding up the rest; a repeat JetStream did not catch (another Msg-Id,
or past its window) is still one event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from syncd.config_nats import NatsConfig
from syncd.jetstream import JetStreamLink, inbox_stream
from syncd.push.consumer import InboxConsumer
from syncd.push.inbox import Delivery, Inbox
from syncd.push.jetstream_inbox import DELIVERY_HEADER, JetStreamInbox, delivery_headers
from syncd.store.db import Store
from syncd.store.writer import Writer
from tests.nats_support import NatsCluster, running_cluster
from tests.webhook_support import envelope

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats"), 1) as cluster:
        yield cluster


@pytest.fixture
async def cfg(server: NatsCluster) -> AsyncIterator[NatsConfig]:
    yield NatsConfig(servers=tuple(server.urls), replicas=1, batch_size=50, ack_wait="2s")
    nc = await nats.connect(server.urls[0])
    js = nc.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)
    await nc.close()


def delivery(n: int) -> Delivery:
    return Delivery(
        f"evt_{n}",
        time.time(),
        "127.0.0.1",
        {"content-type": "application/json"},
        envelope(f"evt_{n}"),
        "order.created",
    )


class Running:
    def __init__(self, cfg: NatsConfig, writer: Writer, problem: list[str]) -> None:
        self.link = JetStreamLink(cfg, None, [inbox_stream(cfg, 3600.0)], name="test")
        self.inbox = Inbox(writer, guard=lambda: problem[0] if problem else None)
        self.consumer = InboxConsumer(self.link, self.inbox, cfg, "mirror-test", fetch_wait=0.2)
        self.publisher = JetStreamInbox(self.link, cfg.inbox_stream, ack_timeout=2.0)


@contextlib.asynccontextmanager
async def consuming(cfg: NatsConfig, writer: Writer, problem: list[str]) -> AsyncIterator[Running]:
    r = Running(cfg, writer, problem)
    await r.link.start()
    await r.link.wait_ready(10)
    await r.inbox.start()
    task = asyncio.create_task(r.consumer.run())
    try:
        yield r
    finally:
        r.consumer.stop()
        await asyncio.wait_for(task, 10)
        await r.inbox.stop()
        await r.link.close()


def rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = Store.open_reader(tmp_path / "mirror.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def until(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def consumer_state(r: Running) -> tuple[int, int]:
    js = r.link.js
    assert js is not None
    info = await js.consumer_info(r.link.cfg.inbox_stream, "mirror-test")
    return info.num_pending, info.num_ack_pending


async def test_deliveries_are_committed_then_acked(cfg: NatsConfig, writer: Writer, tmp_path: Path) -> None:
    async with consuming(cfg, writer, []) as r:
        for n in range(120):
            assert await r.publisher.submit(delivery(n)) == "accepted"
        await until(lambda: r.consumer.consumed == 120)
        assert r.consumer.healthy
        for _ in range(50):
            if await consumer_state(r) == (0, 0):
                break
            await asyncio.sleep(0.05)
        assert await consumer_state(r) == (0, 0)
        assert r.inbox.last_delivery_at is not None
    assert rows(tmp_path, "SELECT COUNT(*) FROM _inbox") == [(120,)]
    stored = rows(tmp_path, "SELECT event_id, client, body FROM _inbox WHERE event_id = 'evt_7'")
    assert stored == [("evt_7", "127.0.0.1", envelope("evt_7"))]


async def test_a_failed_commit_acks_nothing_and_the_batch_comes_again(
    cfg: NatsConfig, writer: Writer, tmp_path: Path
) -> None:
    problem = ["store file replaced"]
    async with consuming(cfg, writer, problem) as r:
        for n in range(10):
            await r.publisher.submit(delivery(n))
        await until(lambda: r.inbox.last_failure is not None)
        assert r.consumer.consumed == 0
        assert rows(tmp_path, "SELECT COUNT(*) FROM _inbox") == [(0,)]
        problem.clear()
        await until(lambda: r.consumer.consumed == 10)
    assert rows(tmp_path, "SELECT COUNT(*) FROM _inbox") == [(10,)]


async def test_a_foreign_message_is_terminated_and_the_rest_committed(
    cfg: NatsConfig, writer: Writer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with consuming(cfg, writer, []) as r:
        js = r.link.js
        assert js is not None
        await js.publish("syncd.inbox.orders", b"{}", headers={"Nats-Msg-Id": "foreign"})
        await js.publish("syncd.inbox.orders", b"{}", headers={DELIVERY_HEADER: "not json"})
        await r.publisher.submit(delivery(1))
        await until(lambda: r.consumer.consumed == 1)
        await until(lambda: "no delivery" in caplog.text)
        for _ in range(50):
            if await consumer_state(r) == (0, 0):
                break
            await asyncio.sleep(0.05)
        assert await consumer_state(r) == (0, 0)
    assert rows(tmp_path, "SELECT event_id FROM _inbox") == [("evt_1",)]
    assert caplog.text.count("terminated") == 2


async def test_a_repeat_past_jetstreams_window_is_still_one_event(
    cfg: NatsConfig, writer: Writer, tmp_path: Path
) -> None:
    async with consuming(cfg, writer, []) as r:
        js = r.link.js
        assert js is not None
        headers = delivery_headers(delivery(5))
        await js.publish("syncd.inbox.orders", envelope("evt_5"), headers=headers)
        # The same event under another Msg-Id: what JetStream sees after its window.
        await js.publish("syncd.inbox.orders", envelope("evt_5"), headers={**headers, "Nats-Msg-Id": "later"})
        await until(lambda: r.consumer.consumed == 2)
    assert rows(tmp_path, "SELECT COUNT(*) FROM _inbox") == [(1,)]
    # One event, counted twice, wherever it is (waiting in the inbox or applied).
    assert rows(
        tmp_path,
        "SELECT deliveries FROM _inbox WHERE event_id = 'evt_5'"
        " UNION ALL SELECT deliveries FROM _events WHERE event_id = 'evt_5'",
    ) == [(2,)]
    assert json.loads(headers[DELIVERY_HEADER])["id"] == "evt_5"
