"""With no webhooks at all, polling alone produces the feed's derived events: an order the
upstream shipped is `order.shipped` (source poll), a customer the upstream removed is
`customer.deleted` after a full relist (source relist, with the last known data)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from syncd.api import PetstoreClient
from syncd.core.changes import Change, ChangeKind, ChangeSource
from syncd.feed.log import WriterChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import SinkRunner, Start
from syncd.poll.poller import Poller
from syncd.sim.clock import format_ms, now_ms
from syncd.sim.config import SimConfig
from syncd.sim.server import SimHandle, running_simulator
from syncd.sim.simulator import Simulator
from syncd.store import changelog
from syncd.store.db import Store
from syncd.store.writer import Writer
from tests.feed.support import until
from tests.poll_helpers import make_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_backoff")]


@pytest.fixture
async def client() -> AsyncIterator[list[PetstoreClient]]:
    made: list[PetstoreClient] = []
    yield made
    for c in made:
        await c.aclose()


def logged(path: Path) -> list[Change]:
    conn = Store.open_reader(path)
    try:
        return changelog.read_after(conn, 0, 100_000)
    finally:
        conn.close()


class ListSink:
    name = "app"

    def __init__(self) -> None:
        self.delivered: list[Change] = []

    async def deliver(self, batch: Sequence[Change]) -> None:
        self.delivered.extend(batch)


async def delivered_to_a_sink(writer: Writer, path: Path, events: Sequence[str]) -> list[Change]:
    """What a sink matching `events` receives of the whole log."""
    reader = Store.open_reader(path)
    try:
        log = WriterChangeLog(lambda fn: writer.run(lambda store: fn(store.conn)), reader)
        sink = ListSink()
        runner = SinkRunner(sink, log, ChangeNotifier(), events=events, start=Start.BEGINNING)
        task = asyncio.create_task(runner.run())
        head = changelog.head(reader)
        await until(lambda: runner.state.delivered == head)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sink.delivered
    finally:
        reader.close()


def ship(sim: Simulator, oid: int) -> dict[str, Any]:
    """Upstream ships order `oid`: a new version with status shipped, and no webhook goes
    anywhere (no endpoint is registered)."""
    record: dict[str, Any] = json.loads(sim.tables["orders"].get(oid) or b"null")
    ms = now_ms(sim.clock)
    record.update(status="shipped", version=record["version"] + 1)
    record["updatedAt"] = format_ms(ms)
    sim.record_changed("orders", oid, record, "order.shipped", ms)
    return record


def record_of(sim: SimHandle, resource: str, rid: Any) -> dict[str, Any]:
    body = sim.call(sim.simulator.tables[resource].get, rid)
    assert body is not None
    record: dict[str, Any] = json.loads(body)
    return record


async def test_polling_alone_gives_order_shipped_and_customer_deleted(
    tmp_path: Path, writer: Writer, client: list[PetstoreClient]
) -> None:
    path = tmp_path / "mirror.db"
    config = SimConfig(seed=5, rate=0, max_lag=0, preload_orders=30, preload_customers=12)
    with running_simulator(config) as sim:
        cfg = make_config(sim.base_url, path, lookback="1s", page_size=10)
        api = PetstoreClient(sim.base_url, sim.api_key, timeout=5)
        client.append(api)
        poller = Poller(api, writer, cfg)
        for resource in ("orders", "customers"):
            await poller.poll(resource)
        # The first sync of an empty mirror is not replayed as a flood of creates.
        assert logged(path) == []

        truth = sim.truth("orders")["orders"]
        oid = next(
            int(rid)
            for rid in sorted(truth, key=int)
            if record_of(sim, "orders", int(rid))["status"] != "shipped"
        )
        before = record_of(sim, "orders", oid)
        shipped = sim.call(ship, sim.simulator, oid)
        await poller.poll("orders")
        [change] = logged(path)
        assert (change.event, change.kind, change.source) == (
            "order.shipped",
            ChangeKind.UPDATED,
            ChangeSource.POLL,
        )
        assert change.record_id == oid
        assert (change.previous_version, change.version) == (before["version"], shipped["version"])
        assert change.changed == {"status": {"from": before["status"], "to": "shipped"}}
        assert change.data == shipped
        assert not change.initial

        # A customer removed upstream (there is no delete event): only a relist finds it.
        gone = sorted(sim.truth("customers")["customers"])[0]
        last_known = record_of(sim, "customers", gone)
        sim.call(sim.simulator.record_deleted, "customers", gone)
        await poller.poll("customers")
        assert len(logged(path)) == 1, "an incremental poll cannot see a deletion"
        # Later by the poller's clock, so the records synced just now are not spared.
        relister = Poller(api, writer, cfg, clock=lambda: time.time() + 120)
        result = await relister.full_relist("customers")
        assert result.tombstoned == 1
        shipped_change, deleted = logged(path)
        assert shipped_change == change
        assert (deleted.event, deleted.kind, deleted.source) == (
            "customer.deleted",
            ChangeKind.DELETED,
            ChangeSource.RELIST,
        )
        assert deleted.record_id == gone
        assert deleted.data == last_known
        assert deleted.version == deleted.previous_version == last_known["version"]
        assert deleted.changed is None
        assert deleted.seq == change.seq + 1

    # And a sink subscribed to those events gets both, as those events.
    delivered = await delivered_to_a_sink(writer, path, ["order.shipped", "customer.deleted"])
    assert delivered == [change, deleted]
