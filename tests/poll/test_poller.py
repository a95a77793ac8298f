"""The poller against the simulator: lag, ties, writes during paging, lookback, relists."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncd.api import PetstoreClient
from syncd.cli import main
from syncd.core.records import parse_record
from syncd.heap import LISTING_GEN0_THRESHOLD
from syncd.metrics import Metrics
from syncd.poll.poller import Poller
from syncd.sim.config import FaultConfig, SimConfig
from syncd.sim.server import SimHandle, running_simulator
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch
from syncd.timefmt import format_epoch as utc_iso
from syncd.timefmt import to_epoch as parse_iso
from tests.poll_helpers import cursor_of, drift, make_config, mirror_versions, write_config_file

RESOURCES = ("orders", "customers", "inventory")


pytestmark = pytest.mark.usefixtures("no_backoff")


@pytest.fixture
def retry_attempts() -> int:
    return 5


class Recorder:
    """A progress reporter that remembers what it was told (and can stop the poller)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.on_advance: list[object] = []
        self.poller: Poller | None = None
        self.stop_after: int | None = None

    def start(self, resource: str, kind: str) -> None:
        self.events.append(("start", resource, 0))

    def advance(self, resource: str, records: int, last_updated_at: str | None) -> None:
        self.events.append(("advance", resource, records))
        pages = sum(1 for e in self.events if e[0] == "advance")
        if self.stop_after is not None and pages >= self.stop_after and self.poller is not None:
            self.poller.stop()

    def finish(self, resource: str, records: int) -> None:
        self.events.append(("finish", resource, records))


@pytest.fixture
async def client_for() -> AsyncIterator[list[PetstoreClient]]:
    made: list[PetstoreClient] = []
    yield made
    for c in made:
        await c.aclose()


def _client(sim: SimHandle, made: list[PetstoreClient]) -> PetstoreClient:
    c = PetstoreClient(sim.base_url, sim.api_key, timeout=5)
    made.append(c)
    return c


async def _poll_during_workload(poller: Poller, seconds: float) -> int:
    cycles = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for resource in RESOURCES:
            await poller.poll(resource)
        cycles += 1
        await asyncio.sleep(0.05)
    return cycles


async def _quiesce(sim: SimHandle) -> None:
    status = await asyncio.to_thread(sim.control, {"action": "quiesce", "timeout": 10})
    assert status["pending_visibility"] == 0


async def test_converges_one_poll_after_the_workload_stops(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    sim_cfg = SimConfig(seed=3, rate=400, max_lag=0.5, preload_orders=300, preload_customers=40)
    with running_simulator(sim_cfg) as sim:
        # The lookback must exceed the visibility lag as the poller sees it: the simulator's
        # workload thread shares this process, so on a loaded machine a record stamped at T
        # can reach its table well after T + max_lag. 3 s leaves room for that.
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", lookback="3s", page_size=25)
        poller = Poller(_client(sim, client_for), writer, cfg)
        cycles = await _poll_during_workload(poller, 2.0)
        await _quiesce(sim)
        results = [await poller.poll(r) for r in RESOURCES]
        found = drift(sim, tmp_path / "mirror.db")
        deletions = (await asyncio.to_thread(sim.call, sim.simulator.stats.snapshot))["deletions"]
        # Hard deletes are for the full relist to find; then everything must match exactly. It
        # runs half a minute later (by its clock): records synced within the visibility lag
        # plus lookback of a listing are spared.
        relister = Poller(poller.client, writer, cfg, clock=lambda: time.time() + 30)
        # How many customers the workload deletes depends on the machine's speed; past
        # poll.tombstone_floor the mass-delete guard would hold the relist back.
        relisted = [await relister.full_relist(r, allow_mass_delete=True) for r in RESOURCES]
        after_relist = drift(sim, tmp_path / "mirror.db")
        config = write_config_file(tmp_path / "syncd.toml", sim.base_url, tmp_path / "mirror.db")
        verified = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["verify", "--config", str(config)],
            env={"SYNCD_TEST_API_KEY": "test-key"},
        )
    assert cycles >= 3
    assert all(r.kind == "incremental" for r in results)
    for resource in RESOURCES:
        assert found[resource]["wrong"] == [], resource
    assert found["orders"]["extra"] == []
    assert found["inventory"]["extra"] == []
    # Live extras can only be hard-deleted customers (some were deleted before any poll saw them).
    assert len(found["customers"]["extra"]) <= deletions.get("customers", 0)
    assert sum(r.tombstoned for r in relisted) == len(found["customers"]["extra"])
    assert all(after_relist[r] == {"wrong": [], "extra": []} for r in RESOURCES)
    assert verified.exit_code == 0, verified.output


async def test_lookback_zero_loses_late_visible_changes(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    # The fault lookback exists for: with since = the largest updatedAt seen, a change that
    # becomes visible after a later one has been listed is never read.
    sim_cfg = SimConfig(seed=3, rate=400, max_lag=0.5, preload_orders=300, preload_customers=40)
    with running_simulator(sim_cfg) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", lookback="0s", page_size=25)
        poller = Poller(_client(sim, client_for), writer, cfg)
        await _poll_during_workload(poller, 2.0)
        await _quiesce(sim)
        for r in RESOURCES:
            await poller.poll(r)
        found = drift(sim, tmp_path / "mirror.db")
    lost = sum(len(found[r]["wrong"]) for r in RESOURCES)
    assert lost > 0


async def test_first_sync_lists_everything_page_by_page(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    metrics = Metrics()
    recorder = Recorder()
    with running_simulator(SimConfig(rate=0, max_lag=0, preload_orders=1000)) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", page_size=100)
        poller = Poller(_client(sim, client_for), writer, cfg, metrics=metrics, progress=recorder)
        result = await poller.poll("orders")
        truth = sim.truth("orders")["orders"]
    assert result.kind == "full"
    assert result.initial
    assert (result.pages, result.seen, result.fresh, result.applied) == (10, 1000, 1000, 1000)
    assert mirror_versions(tmp_path / "mirror.db", "orders") == truth
    assert recorder.events[0] == ("start", "orders", 0)
    # One line per transaction; a writer that falls behind takes several pages at once.
    advanced = [e[2] for e in recorder.events if e[0] == "advance"]
    assert sum(advanced) == 1000
    assert all(n % 100 == 0 for n in advanced)
    assert recorder.events[-1] == ("finish", "orders", 1000)
    # The cursor is the largest updatedAt the API sent, not the client's clock.
    conn = Store.open_reader(tmp_path / "mirror.db")
    newest = conn.execute('SELECT MAX("updatedAt") FROM orders').fetchone()[0]
    conn.close()
    assert cursor_of(tmp_path / "mirror.db", "orders") == newest == result.cursor
    assert metrics.records.labels(source="poll", outcome="applied")._value.get() == 1000


class ThresholdRecorder(Recorder):
    """Remembers the collector's young-generation threshold at every committed page."""

    def __init__(self) -> None:
        super().__init__()
        self.thresholds: list[int] = []

    def advance(self, resource: str, records: int, last_updated_at: str | None) -> None:
        self.thresholds.append(gc.get_threshold()[0])
        super().advance(resource, records, last_updated_at)


async def test_full_listings_collect_young_objects_less_often_and_polls_do_not(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    before = gc.get_threshold()
    recorder = ThresholdRecorder()
    with running_simulator(SimConfig(rate=0, max_lag=0, preload_orders=300)) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", page_size=100)
        poller = Poller(_client(sim, client_for), writer, cfg, progress=recorder)
        assert (await poller.poll("orders")).initial
        assert recorder.thresholds
        assert set(recorder.thresholds) == {max(before[0], LISTING_GEN0_THRESHOLD)}
        assert gc.get_threshold() == before
        recorder.thresholds.clear()
        await poller.full_relist("orders")
        assert set(recorder.thresholds) == {max(before[0], LISTING_GEN0_THRESHOLD)}
        assert gc.get_threshold() == before
        sim.step(5)
        seen = []
        real_prepare = poller._prepare

        def prepare(*args: object) -> object:
            seen.append(gc.get_threshold()[0])
            return real_prepare(*args)  # type: ignore[arg-type]

        poller._prepare = prepare  # type: ignore[method-assign]
        result = await poller.poll("orders")
    assert result.kind == "incremental"
    assert seen
    assert set(seen) == {before[0]}


async def test_a_first_sync_without_a_progress_bar_logs_plain_lines(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient], caplog: pytest.LogCaptureFixture
) -> None:
    # The daemon's poller is given no reporter: its first sync still says how far it is.
    caplog.set_level("INFO", logger="syncd.poll.progress")
    with running_simulator(SimConfig(rate=0, max_lag=0, preload_orders=300)) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", page_size=100)
        await Poller(_client(sim, client_for), writer, cfg).poll("orders")
    lines = [r.getMessage() for r in caplog.records if r.name == "syncd.poll.progress"]
    assert lines[0] == "orders: first sync listing started"
    assert lines[-1].startswith("orders: listing done, 300 records in ")


async def test_applied_counts_what_webhooks_did_not_bring(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    with running_simulator(SimConfig(seed=5, rate=0, max_lag=0, preload_orders=50)) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", lookback="1s", page_size=20)
        poller = Poller(_client(sim, client_for), writer, cfg)
        await poller.poll("orders")
        before = sim.truth("orders")["orders"]
        sim.step(40)
        after = sim.truth("orders")["orders"]
        changed = sorted(int(rid) for rid, v in after.items() if before.get(rid) != v)
        assert len(changed) >= 4
        # Deliver half of the changes the way a webhook would.
        bodies = [sim.call(sim.simulator.tables["orders"].get, rid) for rid in changed[::2]]
        delivered = [parse_record("orders", json.loads(b), "webhook") for b in bodies]
        await writer.run(lambda s: apply_batch(s, delivered, synced_at=format_epoch()))
        result = await poller.poll("orders")
    assert result.kind == "incremental"
    assert result.applied == len(changed) - len(delivered)
    assert result.fresh == len(changed)
    assert result.counts["duplicate"] >= len(delivered)
    assert mirror_versions(tmp_path / "mirror.db", "orders") == after


async def test_expired_cursors_resume_the_listing(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    faults = FaultConfig(cursor_expire_rate=0.2)
    with running_simulator(SimConfig(seed=9, rate=0, max_lag=0, preload_orders=600, faults=faults)) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", page_size=20)
        poller = Poller(_client(sim, client_for), writer, cfg)
        result = await poller.poll("orders")
        truth = sim.truth("orders")["orders"]
    assert result.cursor_restarts > 0
    assert mirror_versions(tmp_path / "mirror.db", "orders") == truth


async def test_transient_api_faults_do_not_lose_records(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    faults = FaultConfig(api_5xx_rate=0.2, api_429_rate=0.1, retry_after=0, short_page_rate=0.3)
    with running_simulator(SimConfig(seed=2, rate=0, max_lag=0, preload_orders=400, faults=faults)) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", page_size=40)
        client = PetstoreClient(sim.base_url, sim.api_key, retry_attempts=10, max_rate_limited=100)
        client_for.append(client)
        result = await Poller(client, writer, cfg).poll("orders")
        truth = sim.truth("orders")["orders"]
    assert client.stats.retries > 0
    assert result.seen >= 400
    assert mirror_versions(tmp_path / "mirror.db", "orders") == truth


async def test_stop_commits_the_page_in_hand_and_returns(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    recorder = Recorder()
    recorder.stop_after = 2
    with running_simulator(SimConfig(rate=0, max_lag=0, preload_orders=500)) as sim:
        cfg = make_config(sim.base_url, tmp_path / "mirror.db", page_size=50)
        poller = Poller(_client(sim, client_for), writer, cfg, progress=recorder)
        recorder.poller = poller
        result = await poller.poll("orders")
    assert result.stopped
    assert 2 <= result.pages < 10
    assert result.seen == 50 * result.pages
    mirror = mirror_versions(tmp_path / "mirror.db", "orders")
    assert len(mirror) == result.seen
    conn = Store.open_reader(tmp_path / "mirror.db")
    newest = conn.execute('SELECT MAX("updatedAt") FROM orders').fetchone()[0]
    conn.close()
    assert result.cursor == cursor_of(tmp_path / "mirror.db", "orders") == newest


def _age_sync(store: Store, resource: str) -> None:
    # As if the first sync had happened an hour ago.
    with store.db.atomic():
        store.conn.execute(f"UPDATE {resource} SET _synced_at = ?", (utc_iso(time.time() - 3600),))


@pytest.mark.parametrize(
    ("visibility_lag", "age", "spared"),
    [
        # The spare window is api.visibility_lag plus poll.lookback (1 s) before the listing.
        ("10s", 10.5, True),
        ("10s", 11.5, False),
        ("0s", 0.5, True),
        ("0s", 1.5, False),
    ],
)
async def test_the_relist_spare_window_is_the_configured_visibility_lag_plus_lookback(
    tmp_path: Path,
    writer: Writer,
    client_for: list[PetstoreClient],
    visibility_lag: str,
    age: float,
    spared: bool,
) -> None:
    path = tmp_path / "mirror.db"
    with running_simulator(SimConfig(seed=4, rate=0, max_lag=0, preload_customers=5)) as sim:
        cfg = make_config(sim.base_url, path, lookback="1s", visibility_lag=visibility_lag)
        client = _client(sim, client_for)
        await Poller(client, writer, cfg).poll("customers")
        await writer.run(_age_sync, "customers")
        # Changed `age` seconds before the relist (by the poller's clock) and not listed yet.
        sim.control({"max_lag": 3600})
        synced = time.time()
        fresh_id = sim.call(sim.simulator.shop.register_customer, int(synced * 1000))
        body = sim.call(sim.simulator.tables["customers"].get, fresh_id)
        await writer.run(
            lambda s: apply_batch(
                s, [parse_record("customers", json.loads(body), "webhook")], synced_at=format_epoch(synced)
            )
        )
        relister = Poller(client, writer, cfg, clock=lambda: synced + age)
        result = await relister.full_relist("customers")
    assert (fresh_id in mirror_versions(path, "customers")) is spared
    assert result.tombstoned == (0 if spared else 1)


async def test_full_relist_tombstones_spares_and_restores(
    tmp_path: Path, writer: Writer, client_for: list[PetstoreClient]
) -> None:
    path = tmp_path / "mirror.db"
    with running_simulator(SimConfig(seed=4, rate=0, max_lag=0, preload_customers=20)) as sim:
        cfg = make_config(sim.base_url, path, lookback="1s", page_size=7)
        client = _client(sim, client_for)
        await Poller(client, writer, cfg).poll("customers")
        await writer.run(_age_sync, "customers")
        gone = sorted(sim.truth("customers")["customers"])[0]
        sim.call(sim.simulator.record_deleted, "customers", gone)
        # A customer registered just now, whose change listings will not show for 30 s, but a
        # webhook already brought into the mirror.
        sim.control({"max_lag": 30})
        fresh_id = sim.call(sim.simulator.shop.register_customer, int(time.time() * 1000))
        body = sim.call(sim.simulator.tables["customers"].get, fresh_id)
        await writer.run(
            lambda s: apply_batch(
                s, [parse_record("customers", json.loads(body), "webhook")], synced_at=format_epoch()
            )
        )

        first = await Poller(client, writer, cfg).full_relist("customers")
        live = mirror_versions(path, "customers")
        tombstoned = mirror_versions(path, "customers", deleted=True)
        assert first.tombstoned == 1
        assert gone in tombstoned
        assert gone not in live
        assert fresh_id in live  # changed within the lag window: spared

        # Much later (by the poller's clock) the unlisted customer is no longer spared...
        later = Poller(client, writer, cfg, clock=lambda: time.time() + 120)
        second = await later.full_relist("customers")
        assert second.tombstoned == 1
        assert fresh_id in mirror_versions(path, "customers", deleted=True)

        # ...and once the listing shows it, it is restored at the same version.
        sim.control({"action": "flush_visibility"})
        third = await Poller(client, writer, cfg).full_relist("customers")
        truth = sim.truth("customers")["customers"]
    assert third.counts["resurrected"] == 1
    assert third.tombstoned == 0
    assert mirror_versions(path, "customers") == truth
    assert mirror_versions(path, "customers", deleted=True) == {gone: 1}
    conn = Store.open_reader(path)
    generation, relisted_at = conn.execute(
        "SELECT relist_generation, last_full_relist_at FROM _cursors WHERE resource='customers'"
    ).fetchone()
    conn.close()
    assert generation == 3
    assert relisted_at is not None
    assert parse_iso(cursor_of(path, "customers") or "") > 0
