"""`FeedService` runs its sinks on a loop of their own (`SinkLoop`): the sinks deliver from
the `syncd-sinks` thread, a reload stops a removed sink there and starts an added one there,
and stopping the service ends the thread after every runner has stopped. The service on a
real store and writer, its http sinks pointed at real receivers on loopback."""

from __future__ import annotations

import threading
from pathlib import Path

from syncd.core.records import Change as RecordChange
from syncd.metrics import Metrics
from syncd.service.feed import FeedService, open_store
from syncd.sim.server import SimHandle
from syncd.store.apply import apply_batch
from syncd.store.writer import Writer
from tests.service.daemon_support import until
from tests.service.feed_support import feed_config, load, offsets, receiver, rewrite


def _sink_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "syncd-sinks"]


async def _apply_orders(writer: Writer, ids: range) -> None:
    batch = [
        RecordChange("orders", rid, 1, "2026-12-01T09:00:00.000Z", {"id": rid, "version": 1}, "webhook")
        for rid in ids
    ]
    await writer.run(lambda store: apply_batch(store, batch, synced_at="2026-12-01T09:00:01.000Z"))


async def test_sinks_run_on_their_own_thread_through_a_reload_and_a_stop(
    tmp_path: Path, sim: SimHandle
) -> None:
    db = tmp_path / "mirror.db"
    async with receiver() as one, receiver() as two:
        path = feed_config(tmp_path, sim, {"one": (one.url, {})})
        cfg = load(path, sim)
        writer = Writer(lambda: open_store(str(db), cfg.changes))
        writer.start()
        feed = FeedService(cfg, writer, str(db), Metrics())
        try:
            await feed.start()
            assert _sink_threads() == ["syncd-sinks"]
            await _apply_orders(writer, range(1, 3))
            await one.until(lambda: len(one.delivered) == 2)

            # "one" goes and "two" comes: both on the sinks' thread, neither on this loop.
            rewrite(path, {"two": (two.url, {})})
            await feed.reconfigure(load(path, sim))
            assert set(feed.runners) == {"two"}
            assert _sink_threads() == ["syncd-sinks"]
            await until(lambda: "one" not in offsets(db), "the removed sink's offset to be dropped")
            await until(lambda: "two" in offsets(db), "the added sink to start at the head")
            await _apply_orders(writer, range(3, 5))
            await two.until(lambda: len(two.delivered) == 2)
            # The added sink starts at the head; the removed one took nothing after it went.
            assert [r.body["record_id"] for r in two.delivered] == [3, 4]
            assert [r.body["record_id"] for r in one.delivered] == [1, 2]
            await until(lambda: offsets(db) == {"two": two.delivered[-1].seq}, "the offset to be committed")
        finally:
            await feed.stop(5.0)
            writer.stop()
        assert _sink_threads() == []
        assert feed.runners == {}
