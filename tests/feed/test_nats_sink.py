"""The `nats` sink against a real nats-server with JetStream (one node, shared by the module):
subjects, Msg-Ids, PubAcks before the offset moves, deduplication of a redelivery, the
stream created when missing and never altered when it exists, and a server that is gone."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.js.errors
import orjson
import pytest
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from syncd.config_nats import NatsConfig
from syncd.feed.base import SinkError
from syncd.feed.log import ConnectionChangeLog
from syncd.feed.nats import NatsSink, _batch_headers, batch_frames, subject_of
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import SinkRunner
from syncd.jetstream import JetStreamLink, changes_stream
from tests.nats_support import NatsCluster, free_port, running_cluster

from .support import MIRROR, append_orders

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats"), 1) as cluster:
        yield cluster


_streams = iter(range(1_000_000))


@pytest.fixture
async def cfg(server: NatsCluster) -> AsyncIterator[NatsConfig]:
    # A stream per test, deleted after it: the server is shared, the tests' streams are not.
    n = next(_streams)
    cfg = NatsConfig(servers=tuple(server.urls), replicas=1, changes_stream=f"CHANGES_{n}")
    yield cfg
    nc = await nats.connect(server.urls[0])
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(cfg.changes_stream)
    await nc.close()


async def _sink(cfg: NatsConfig, *, timeout: float = 5.0) -> NatsSink:
    link = JetStreamLink(cfg, None, [changes_stream(cfg, 3600.0)], name="test-sink")
    return NatsSink("bus", link, cfg.changes_stream, timeout=timeout)


async def _stored(cfg: NatsConfig) -> list[tuple[str, str, dict[str, object]]]:
    """(subject, Msg-Id, change JSON) of every message in the stream, in stream order."""
    nc = await nats.connect(cfg.servers[0])
    try:
        js = nc.jetstream()
        info = await js.stream_info(cfg.changes_stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(cfg.changes_stream, seq)
            assert msg.headers is not None
            assert msg.data is not None
            out.append((msg.subject, msg.headers["Nats-Msg-Id"], orjson.loads(msg.data)))
        return out
    finally:
        await nc.close()


@pytest.fixture
async def sink(cfg: NatsConfig) -> AsyncIterator[NatsSink]:
    s = await _sink(cfg)
    yield s
    await s.aclose()


async def test_publishes_each_change_on_its_subject_with_its_msg_id(
    sink: NatsSink, cfg: NatsConfig, db: tuple[sqlite3.Connection, ConnectionChangeLog]
) -> None:
    conn, log = db
    # Past the 1000 changes of one atomic batch: three batches, committed in order.
    append_orders(conn, range(1, 2501))
    batch = await log.read_after(0, 2500)
    await sink.deliver(batch)
    assert sink.atomic
    stored = await _stored(cfg)
    assert [s[0] for s in stored] == ["syncd.changes.orders.order.created"] * 2500
    assert [s[1] for s in stored] == [f"{MIRROR}-{seq}" for seq in range(1, 2501)]
    assert [s[2]["seq"] for s in stored] == list(range(1, 2501))
    assert stored[0][2] == batch[0].to_dict()


async def test_a_redelivered_batch_is_stored_once(
    sink: NatsSink, cfg: NatsConfig, db: tuple[sqlite3.Connection, ConnectionChangeLog]
) -> None:
    conn, log = db
    append_orders(conn, range(1, 11))
    batch = await log.read_after(0, 10)
    await sink.deliver(batch[:6])
    # At least once: a crash before the offset was written delivers the batch again. An
    # atomic batch holding a Msg-Id the stream has is refused whole; it goes one by one.
    await sink.deliver(batch)
    await sink.deliver(batch[3:])
    assert [s[2]["seq"] for s in await _stored(cfg)] == list(range(1, 11))
    # Still atomic for the next batch that holds nothing already stored.
    assert sink.atomic


async def test_creates_a_missing_stream_with_the_configured_settings(sink: NatsSink, cfg: NatsConfig) -> None:
    link = JetStreamLink(cfg, None, [changes_stream(cfg, 1234.0)], name="t")
    await link.start()
    js = await link.wait_ready(10)
    info = await js.stream_info(cfg.changes_stream)
    await link.close()
    assert info.config.subjects == ["syncd.changes.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.num_replicas == 1
    assert info.config.duplicate_window == pytest.approx(120.0)
    assert info.config.max_age == pytest.approx(1234.0)
    assert info.config.allow_atomic is True


async def test_an_existing_stream_is_used_as_it_is(
    cfg: NatsConfig, server: NatsCluster, db: tuple[sqlite3.Connection, ConnectionChangeLog]
) -> None:
    nc = await nats.connect(server.urls[0])
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=cfg.changes_stream,
            subjects=["syncd.changes.>"],
            storage=StorageType.MEMORY,
            max_msgs=50_000,
            duplicate_window=30.0,
        )
    )
    sink = await _sink(cfg)
    conn, log = db
    append_orders(conn, range(1, 21))
    # It does not allow atomic batches: the sink publishes one by one, from then on.
    await sink.deliver(await log.read_after(0, 10))
    assert not sink.atomic
    await sink.deliver(await log.read_after(10, 10))
    await sink.aclose()
    info = await js.stream_info(cfg.changes_stream)
    await nc.close()
    assert info.state.messages == 20
    assert not info.config.allow_atomic
    assert info.config.storage == StorageType.MEMORY
    assert info.config.max_msgs == 50_000
    assert info.config.duplicate_window == pytest.approx(30.0)
    assert not info.config.max_age


async def test_the_runner_moves_the_offset_only_past_pubacks(
    sink: NatsSink, cfg: NatsConfig, db: tuple[sqlite3.Connection, ConnectionChangeLog]
) -> None:
    conn, log = db
    notifier = ChangeNotifier()
    runner = SinkRunner(sink, log, notifier, batch_size=64, start="beginning")
    task = asyncio.create_task(runner.run())
    append_orders(conn, range(1, 1001), notifier=notifier)
    for _ in range(400):
        if await log.offset("bus") == 1000:
            break
        await asyncio.sleep(0.05)
    runner.stop()
    await task
    assert await log.offset("bus") == 1000
    assert [s[2]["seq"] for s in await _stored(cfg)] == list(range(1, 1001))


async def test_no_server_fails_the_batch_and_delivers_nothing(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    cfg = NatsConfig(servers=(f"nats://127.0.0.1:{free_port()}",), replicas=1, connect_timeout="200ms")
    sink = await _sink(cfg, timeout=0.5)
    append_orders(conn, [1, 2])
    with pytest.raises(SinkError, match="bus") as err:
        await sink.deliver(await log.read_after(0, 2))
    await sink.aclose()
    assert err.value.delivered == 0


async def test_a_server_that_went_away_mid_stream_fails_with_what_was_acked(
    tmp_path: Path, db: tuple[sqlite3.Connection, ConnectionChangeLog]
) -> None:
    conn, log = db
    with running_cluster(tmp_path / "own", 1) as own:
        cfg = NatsConfig(servers=tuple(own.urls), replicas=1)
        sink = await _sink(cfg, timeout=1.0)
        append_orders(conn, range(1, 6))
        await sink.deliver(await log.read_after(0, 2))
        own.nodes[0].kill()
        with pytest.raises(SinkError) as err:
            await sink.deliver(await log.read_after(2, 3))
        assert err.value.delivered == 0
        assert "seq 3" in err.value.reason
        await sink.aclose()


async def test_batch_frames_are_the_bytes_nats_py_would_send(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    """The atomic batch's frames are built by syncd (nats-py's per-header checks cost most of
    the sink's CPU); they must stay byte for byte what the client's own publish encodes,
    for every event and resource, so a nats-py upgrade that changes the encoding fails here."""
    conn, log = db
    append_orders(conn, range(1, 4))
    changes = list(await log.read_after(0, 3))
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))

    client = Client()
    client._send_command = capture  # type: ignore[method-assign]
    client._flush_queue = None
    for index, change in enumerate(changes):
        payload = change.to_json()
        await client._send_publish(
            subject_of(change), "", payload, len(payload), _batch_headers(change, "b" * 32, index)
        )
    assert batch_frames(changes, "b" * 32) == b"".join(sent)
    assert batch_frames([], "b" * 32) == b""
