"""The backlog bound: deliveries acknowledged and not yet applied are at most
`webhook.max_backlog` (and `webhook.max_backlog_bytes`); past either, 503 with Retry-After
until the worker applies some. Real receiver over loopback HTTP, real SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from syncd.config import load_config
from syncd.metrics import Metrics
from syncd.ops.status import collect_status
from syncd.push.backlog import Backlog
from syncd.push.inbox import Delivery, Inbox
from syncd.push.inbox_worker import InboxWorker
from syncd.service.admin import ReadinessInputs, judge_readiness
from syncd.store.db import Store
from syncd.store.writer import Writer
from tests.webhook_support import (
    KNOWN_EVENT_IDS,
    RunningReceiver,
    envelope,
    order,
    running_receiver,
    signed_headers,
)


async def post(client: httpx.AsyncClient, rx: RunningReceiver, body: bytes) -> httpx.Response:
    return await client.post(rx.url, content=body, headers=signed_headers(body))


def event(i: int) -> bytes:
    return envelope(f"evt_{i}", data=order(i))


def sized_body(event_id: str, size: int) -> bytes:
    """An order.created envelope of exactly `size` bytes (padded in a field of the record)."""
    body = envelope(event_id, data=order(1, note=""))
    padded = envelope(event_id, data=order(1, note="x" * (size - len(body))))
    assert len(padded) == size
    return padded


async def apply_all(rx: RunningReceiver) -> None:
    await InboxWorker(rx.writer, None, fetch_thin=False, backlog=rx.inbox.backlog).drain()


async def test_exactly_max_backlog_deliveries_are_accepted_then_503_until_some_are_applied(
    tmp_path: Path,
) -> None:
    async with running_receiver(tmp_path, max_backlog=3) as rx, httpx.AsyncClient() as client:
        # Five at once: the ones still waiting for their commit count too.
        answers = await asyncio.gather(*(post(client, rx, event(i)) for i in range(5)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200, 200, 200, 503, 503]
        refused = [r for r in answers if r.status_code == 503]
        assert all(r.headers["retry-after"] == "5" for r in refused)
        assert refused[0].json() == {"error": "temporarily unavailable"}
        assert rx.inbox.backlog.depth == 3
        assert rx.metrics.registry.get_sample_value("syncd_inbox_depth") == 3
        # Full, a repeat of a stored delivery is refused too (the provider retries it later).
        stored = sorted(r[0] for r in rx.query("SELECT event_id FROM _inbox"))
        assert len(stored) == 3
        repeat = await post(client, rx, envelope(stored[0]))
        assert repeat.status_code == 503
        await rx.flush_audit()
        assert rx.query("SELECT COUNT(*) FROM _audit WHERE reason='backlog_full'") == [(3,)]

        await apply_all(rx)
        assert (rx.inbox.backlog.depth, rx.inbox.backlog.bytes) == (0, 0)
        assert rx.metrics.registry.get_sample_value("syncd_inbox_bytes") == 0
        # Room again: exactly three more, then refused again.
        for i in range(5, 8):
            assert (await post(client, rx, event(i))).status_code == 200
        assert (await post(client, rx, event(8))).status_code == 503
        # A duplicate of an applied one is no new delivery, but the bound is checked first.
        assert (await post(client, rx, envelope(stored[0]))).status_code == 503
        await apply_all(rx)
        # Nothing acknowledged was lost: the six accepted are applied, the refused never stored.
        known = {r[0] for r in rx.query(KNOWN_EVENT_IDS)}
        assert known == {*stored, "evt_5", "evt_6", "evt_7"}
        assert rx.query("SELECT outcome, COUNT(*) FROM _events GROUP BY 1") == [("applied", 6)]


async def test_the_byte_bound_takes_bodies_up_to_it_exactly(tmp_path: Path) -> None:
    async with (
        running_receiver(tmp_path, max_backlog_bytes="2KiB") as rx,
        httpx.AsyncClient() as client,
    ):
        for i in range(4):
            assert (await post(client, rx, sized_body(f"evt_{i}", 512))).status_code == 200
        assert rx.inbox.backlog.bytes == 2048
        assert rx.metrics.registry.get_sample_value("syncd_inbox_bytes") == 2048
        refused = await post(client, rx, sized_body("evt_4", 512))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        await apply_all(rx)
        assert rx.inbox.backlog.bytes == 0
        # One body of exactly the bound fits an empty inbox; one byte more would not.
        assert (await post(client, rx, sized_body("evt_big", 2048))).status_code == 200
        assert (await post(client, rx, sized_body("evt_small", 400))).status_code == 503
        assert {r[0] for r in rx.query("SELECT event_id FROM _inbox")} == {"evt_big"}


async def test_a_restarted_inbox_counts_its_backlog_from_the_store(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    first = Writer(lambda: Store(db))
    first.start()
    inbox = Inbox(first, backlog=Backlog(10, 1024**3))
    await inbox.start()
    for i in range(2):
        await inbox.submit(Delivery(f"evt_{i}", 1.0, "c", {}, event(i)))
    await inbox.stop()
    first.stop()

    writer = Writer(lambda: Store(db))
    writer.start()
    try:
        metrics = Metrics()
        again = Inbox(writer, backlog=Backlog(2, 1024**3, metrics=metrics))
        await again.start()
        assert (again.backlog.depth, again.backlog.full) == (2, True)
        assert again.backlog.bytes == len(envelope("evt_0")) + len(envelope("evt_1"))
        assert metrics.registry.get_sample_value("syncd_inbox_depth") == 2
        await again.stop()
    finally:
        writer.stop()


def test_readiness_and_status_say_the_backlog_is_full(tmp_path: Path) -> None:
    full = ReadinessInputs(True, "push", 600.0, 1.0, 1.0, inbox_depth=3, inbox_bytes=900, backlog_full=True)
    ready, reason = judge_readiness(full, 2.0)
    assert not ready
    assert "inbox backlog full (3 deliveries, 900 bytes" in reason
    cfg_path = tmp_path / "syncd.toml"
    cfg_path.write_text(f'[store]\npath = "{tmp_path / "mirror.db"}"\n[webhook]\nmax_backlog = 1\n')
    cfg = load_config(cfg_path, env={}, require_secrets=False)
    store = Store(tmp_path / "mirror.db")
    with store.db.atomic():
        store.conn.execute(
            "INSERT INTO _inbox (event_id, received_at, client, headers, body, last_seen)"
            " VALUES ('evt_1', 1, 'c', '{}', x'7b7d', 1)"
        )
    store.close()
    backlog = collect_status(cfg)["inbox_backlog"]
    assert backlog == {"deliveries": 1, "bytes": 2, "max_deliveries": 1, "max_bytes": 1024**3, "full": True}
