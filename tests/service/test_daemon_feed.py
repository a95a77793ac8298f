"""The daemon runs the change feed: the real daemon in-process against the simulator, its
http sinks pointed at real Standard Webhooks receivers on loopback. Webhooks and polls become
signed sink deliveries in seq order; SIGHUP adds, removes and changes sinks and makes
offset resets; pruning keeps what the slowest sink has not taken and what retention keeps;
status and /metrics show the sinks."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncd.feed.runner import Backoff
from syncd.ops.status import collect_status
from syncd.service.feed import FeedOptions
from syncd.sim.config import SimConfig
from syncd.sim.server import SimHandle, running_simulator
from syncd.store import changelog
from syncd.store.schema import META_SINK_RESET
from syncd.timefmt import format_epoch
from tests.service.daemon_support import polled_since, running, until
from tests.service.feed_support import (
    feed_config,
    load,
    loader,
    mirror_id,
    offsets,
    read,
    receiver,
    rewrite,
    send_order,
    seqs,
)
from tests.webhook_support import PATH


async def _ready(daemon_db: Path, resources: tuple[str, ...], since: float) -> None:
    # The first full listing of an empty mirror runs at start; webhooks sent after it are
    # never mistaken for records the listing does not have.
    await until(lambda: polled_since(daemon_db, resources, since), "the first polls")


async def test_webhooks_become_signed_sink_deliveries_in_seq_order(tmp_path: Path, sim: SimHandle) -> None:
    db = tmp_path / "mirror.db"
    async with receiver() as app:
        path = feed_config(tmp_path, sim, {"app": (app.url, {"events": ["order.*"]})})
        cfg = load(path, sim)
        started = time.time()
        async with running(cfg, load=loader(path, sim)) as (daemon, _), httpx.AsyncClient() as http:
            assert daemon.running is not None
            assert daemon.running.push is not None
            url = daemon.running.push.listener.url + PATH
            await _ready(db, cfg.sync.resources, started)
            steps = [
                (900001, 1, "placed", "order.created"),
                (900002, 1, "placed", "order.created"),
                (900001, 2, "approved", "order.updated"),
                (900001, 3, "shipped", "order.shipped"),
                # A duplicate delivery and a stale copy are no new state: no change.
                (900001, 3, "shipped", "order.shipped"),
                (900001, 2, "approved", "order.updated"),
                (900002, 2, "cancelled", "order.cancelled"),
            ]
            for n, (oid, version, status, event) in enumerate(steps):
                await send_order(http, url, f"evt_{n}", oid, version, status, event)
            await app.until(lambda: len(app.delivered) >= 5)
            mirror = mirror_id(db)
            got = app.delivered
            assert seqs(got) == sorted(seqs(got))
            assert len(set(seqs(got))) == len(got) == 5
            assert all(r.verified for r in got)
            assert all(r.webhook_id == f"{mirror}-{r.seq}" for r in got)
            assert all(r.content_type == "application/json" for r in got)
            assert [(r.body["record_id"], r.body["event"]) for r in got] == [
                (900001, "order.created"),
                (900002, "order.created"),
                (900001, "order.updated"),
                (900001, "order.shipped"),
                (900002, "order.cancelled"),
            ]
            shipped = got[3].body
            assert shipped["changed"]["status"] == {"from": "approved", "to": "shipped"}
            assert shipped["source"] == "webhook"
            assert shipped["mirror"] == mirror
            await until(lambda: offsets(db).get("app") == got[-1].seq, "the offset to be committed")


@pytest.fixture
def stocked_sim() -> Iterator[SimHandle]:
    # Records to mirror first: a poll into an empty mirror is its initial sync, which the
    # log leaves out (changes.include_initial = false).
    with running_simulator(SimConfig(rate=0, max_lag=0, preload_orders=5, preload_customers=2)) as handle:
        yield handle


async def test_a_poll_mode_daemon_delivers_order_shipped_found_by_polling(
    tmp_path: Path, stocked_sim: SimHandle
) -> None:
    db = tmp_path / "mirror.db"
    sim = stocked_sim
    async with receiver() as app:
        path = feed_config(tmp_path, sim, {"app": (app.url, {})}, mode="poll")
        cfg = load(path, sim)
        started = time.time()
        async with running(cfg) as _:
            await _ready(db, cfg.sync.resources, started)
            ms = int(time.time() * 1000)
            record = {
                "id": 700001,
                "customer": "poll@example.com",
                "status": "approved",
                "total": 3.0,
                "currency": "USD",
                "items": [],
                "createdAt": format_epoch(ms / 1000),
                "updatedAt": format_epoch(ms / 1000),
                "version": 2,
            }
            sim.call(sim.simulator.record_changed, "orders", 700001, dict(record), "order.updated", ms)
            await app.until(lambda: any(r.body["record_id"] == 700001 for r in app.delivered))
            shipped = {**record, "status": "shipped", "version": 3, "updatedAt": format_epoch(ms / 1000 + 1)}
            sim.call(sim.simulator.record_changed, "orders", 700001, shipped, "order.shipped", ms + 1000)
            await app.until(lambda: any(r.body["event"] == "order.shipped" for r in app.delivered))
            mine = [r.body for r in app.delivered if r.body["record_id"] == 700001]
            assert [(c["event"], c["source"], c["version"]) for c in mine] == [
                ("order.created", "poll", 2),
                ("order.shipped", "poll", 3),
            ]
            assert mine[1]["changed"] == {"status": {"from": "approved", "to": "shipped"}}


def _the_daemon_handles(sig: signal.Signals) -> None:
    # SIGHUP's default action ends the test process: send it only to a daemon that has its
    # own handler installed.
    assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None), sig


async def test_sighup_adds_removes_and_changes_sinks(tmp_path: Path, sim: SimHandle) -> None:
    db = tmp_path / "mirror.db"
    async with receiver() as one, receiver() as two, receiver() as three:
        path = feed_config(
            tmp_path,
            sim,
            {"one": (one.url, {}), "two": (two.url, {"events": ["order.created"]})},
        )
        cfg = load(path, sim)
        started = time.time()
        async with running(cfg, load=loader(path, sim)) as (daemon, _), httpx.AsyncClient() as http:
            assert daemon.running is not None
            assert daemon.running.push is not None
            url = daemon.running.push.listener.url + PATH
            await _ready(db, cfg.sync.resources, started)
            await send_order(http, url, "e1", 900001, 1, "placed", "order.created")
            await one.until(lambda: len(one.delivered) == 1)
            await two.until(lambda: len(two.delivered) == 1)
            assert set(offsets(db)) == {"one", "two"}

            # "one" goes, "three" comes, "two" takes every event from now on.
            rewrite(path, {"two": (two.url, {}), "three": (three.url, {})})
            _the_daemon_handles(signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)
            await until(lambda: set(daemon.running.feed.runners) == {"two", "three"}, "the sinks to change")
            await until(lambda: "one" not in offsets(db), "the removed sink's offset to be dropped")
            assert daemon.cfg.sinks[0].events == ("*",)
            await send_order(http, url, "e2", 900001, 2, "shipped", "order.shipped")
            await two.until(lambda: len(two.delivered) == 2)
            await three.until(lambda: len(three.delivered) == 1)
            # The changed sink kept its offset: nothing redelivered, the new change taken.
            assert [r.body["event"] for r in two.delivered] == ["order.created", "order.shipped"]
            # The added sink starts at the head: only what came after it.
            assert [r.body["event"] for r in three.delivered] == ["order.shipped"]
            assert len(one.delivered) == 1
            # The offset commits just after the receiver answered.
            want = {"two": two.delivered[-1].seq, "three": three.delivered[-1].seq}
            await until(lambda: offsets(db) == want, "the offsets to be committed")


async def test_sighup_makes_the_offset_resets_left_in_meta(tmp_path: Path, sim: SimHandle) -> None:
    db = tmp_path / "mirror.db"
    async with receiver() as app:
        path = feed_config(tmp_path, sim, {"app": (app.url, {})})
        cfg = load(path, sim)
        started = time.time()
        async with running(cfg, load=loader(path, sim)) as (daemon, _), httpx.AsyncClient() as http:
            assert daemon.running is not None
            assert daemon.running.push is not None
            url = daemon.running.push.listener.url + PATH
            await _ready(db, cfg.sync.resources, started)
            for n in range(3):
                await send_order(http, url, f"e{n}", 900001 + n, 1, "placed", "order.created")
            await app.until(lambda: len(app.delivered) == 3)
            first = app.delivered[0].seq
            # What `syncd sinks reset app --to SEQ` leaves for the running daemon, written
            # by another connection as the CLI would.
            conn = sqlite3.connect(db)
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)",
                    (META_SINK_RESET + "app", str(first)),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", (META_SINK_RESET + "nope", "1")
                )
            conn.close()
            assert await daemon.reload()
            await app.until(lambda: len(app.delivered) == 5)
            assert seqs(app.delivered) == [first, first + 1, first + 2, first + 1, first + 2]
            # Redeliveries carry the same webhook-id as the first time.
            assert app.delivered[3].webhook_id == app.delivered[1].webhook_id
            meta = read(db, lambda c: dict(c.execute("SELECT key, value FROM _meta")))
            assert not any(key.startswith(META_SINK_RESET) for key in meta)
            await until(lambda: offsets(db) == {"app": first + 2}, "the offset to be committed")


async def test_pruning_keeps_what_the_slowest_sink_has_not_taken_and_what_retention_keeps(
    tmp_path: Path, sim: SimHandle
) -> None:
    db = tmp_path / "mirror.db"
    now = [time.time()]
    options = FeedOptions(clock=lambda: now[0])

    def slow_decide(request: object, attempt: int) -> str | None:
        # Takes the first two changes, then holds the third open.
        return None if getattr(request, "seq", 0) <= first[0] + 1 else "hang"

    first = [0]
    async with receiver() as fast, receiver(slow_decide) as slow:
        path = feed_config(
            tmp_path,
            sim,
            {"fast": (fast.url, {}), "slow": (slow.url, {})},
            changes='retention = "1h"\nprune_interval = "1h"',
        )
        cfg = load(path, sim)
        started = time.time()
        async with running(cfg, feed_options=options) as (daemon, _), httpx.AsyncClient() as http:
            assert daemon.running is not None
            assert daemon.running.push is not None
            url = daemon.running.push.listener.url + PATH
            await _ready(db, cfg.sync.resources, started)
            first[0] = read(db, changelog.head) + 1
            for n in range(5):
                await send_order(http, url, f"e{n}", 900001 + n, 1, "placed", "order.created")
            await fast.until(lambda: len(fast.delivered) == 5)
            await slow.until(lambda: len(slow.requests) == 3)
            await until(lambda: offsets(db).get("slow") == first[0] + 1, "the slow sink's offset")
            feed = daemon.running.feed
            # Within retention nothing goes, whoever has taken it.
            assert await feed.prune() == 0
            # Past retention, only what both sinks have taken goes.
            now[0] += 2 * 3600
            assert await feed.prune() == 2
            assert read(db, changelog.oldest) == first[0] + 2
            assert read(db, changelog.entries) == 3
            slow._release.set()


async def test_status_and_metrics_show_the_sinks(tmp_path: Path, sim: SimHandle) -> None:
    db = tmp_path / "mirror.db"
    # Fails every change, then sits in a backoff longer than the test.
    options = FeedOptions(backoff=Backoff(initial=3600.0, maximum=3600.0), state_period=0.02)
    async with receiver() as good, receiver(lambda request, attempt: 503) as bad:
        path = feed_config(tmp_path, sim, {"good": (good.url, {}), "bad": (bad.url, {})})
        cfg = load(path, sim)
        started = time.time()
        async with running(cfg, feed_options=options) as (daemon, _), httpx.AsyncClient() as http:
            assert daemon.running is not None
            assert daemon.running.push is not None
            url = daemon.running.push.listener.url + PATH
            await _ready(db, cfg.sync.resources, started)
            for n in range(3):
                await send_order(http, url, f"e{n}", 900001 + n, 1, "placed", "order.created")
            await send_order(http, url, "e3", 900001, 2, "shipped", "order.shipped")
            await good.until(lambda: len(good.delivered) == 4)
            await bad.until(lambda: len(bad.requests) == 1)

            def bad_state() -> object:
                return collect_status(cfg)["sinks"]["bad"]["state"]

            await until(lambda: bad_state() == "retrying", "the failing sink's state in the store")
            report = collect_status(cfg)
            head = good.delivered[-1].seq
            assert report["changes"]["head_seq"] == head
            assert report["changes"]["entries"] == 4
            assert report["sinks"]["good"]["lag"] == 0
            assert report["sinks"]["good"]["state"] == "ok"
            sick = report["sinks"]["bad"]
            assert sick["lag"] == 4
            assert sick["attempts"] == 1
            assert sick["last_error"].endswith("HTTP 503: failed 503")
            assert sick["state_stale"] is False

            text = (await http.get(daemon.running.admin.url + "/metrics")).text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            assert samples[("syncd_changes_total", (("event", "order.created"), ("resource", "orders")))] == 3
            assert samples[("syncd_changes_total", (("event", "order.shipped"), ("resource", "orders")))] == 1
            assert samples[("syncd_sink_lag", (("sink", "good"),))] == 0
            assert samples[("syncd_sink_lag", (("sink", "bad"),))] == 4
            delivered = samples[("syncd_sink_deliveries_total", (("outcome", "delivered"), ("sink", "good")))]
            assert delivered == 4
            assert samples[("syncd_sink_deliveries_total", (("outcome", "failed"), ("sink", "bad")))] >= 1
            assert samples[("syncd_sink_delivery_seconds_count", (("sink", "good"),))] >= 1
