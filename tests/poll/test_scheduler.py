"""PollScheduler on a real event loop against the simulator: first polls, trigger_now,
set_interval, auth failures that stop a resource, and shutdown that awaits polls in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import stamina

from syncd.api import PetstoreClient
from syncd.metrics import Metrics
from syncd.poll.poller import Poller, PollResult
from syncd.poll.scheduler import PollScheduler
from syncd.sim.config import FaultConfig, SimConfig
from syncd.sim.server import SimHandle, running_simulator
from syncd.store.db import Store
from syncd.store.writer import Writer
from tests.poll_helpers import cursor_of, make_config, mirror_versions

RESOURCES = ("orders", "customers", "inventory")


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


class Results:
    def __init__(self) -> None:
        self.items: list[PollResult] = []
        self._changed = asyncio.Event()

    async def __call__(self, result: PollResult) -> None:
        self.items.append(result)
        self._changed.set()

    def of(self, resource: str) -> list[PollResult]:
        return [r for r in self.items if r.resource == resource]

    async def wait_for(self, resource: str, count: int, timeout: float = 10.0) -> list[PollResult]:
        async with asyncio.timeout(timeout):
            while len(self.of(resource)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(resource)


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    faults = FaultConfig(forbidden_resources=("customers",))
    with running_simulator(SimConfig(seed=1, rate=0, max_lag=0, preload_orders=200, faults=faults)) as s:
        yield s


@pytest.fixture
async def parts(sim: SimHandle, tmp_path: Path) -> AsyncIterator[tuple[Poller, Metrics]]:
    writer = Writer(lambda: Store(tmp_path / "mirror.db"))
    writer.start()
    metrics = Metrics()
    client = PetstoreClient(sim.base_url, sim.api_key)
    cfg = make_config(sim.base_url, tmp_path / "mirror.db", page_size=50)
    yield Poller(client, writer, cfg, metrics=metrics), metrics
    await client.aclose()
    writer.stop()


async def test_schedules_polls_and_stops_a_resource_on_auth_errors(
    sim: SimHandle, parts: tuple[Poller, Metrics], tmp_path: Path
) -> None:
    poller, metrics = parts
    results = Results()
    sched = PollScheduler(
        poller,
        RESOURCES,
        interval=60,
        full_relist_interval=3600,
        jitter=0,
        metrics=metrics,
        on_result=results,
    )
    await sched.start()
    try:
        first = await results.wait_for("orders", 1)
        await results.wait_for("inventory", 1)
        assert first[0].initial
        assert first[0].seen == 200

        # The first poll of the refused resource stopped its jobs; no retry storm follows.
        async with asyncio.timeout(5):
            while "customers" not in sched.stopped:
                await asyncio.sleep(0.01)
        assert "HTTP 403" in sched.stopped["customers"]
        assert sched.next_run("poll", "customers") is None
        assert sched.next_run("relist", "customers") is None
        assert metrics.poll_errors.labels(resource="customers", kind="auth")._value.get() == 1
        conn = Store.open_reader(tmp_path / "mirror.db")
        last_error = conn.execute("SELECT last_error FROM _cursors WHERE resource='customers'").fetchone()[0]
        conn.close()
        assert "403" in last_error
        sched.trigger_now("customers")

        # trigger_now polls at once, long before the 60 s interval.
        sim.step(30)
        sched.trigger_now("orders")
        polls = await results.wait_for("orders", 2, timeout=5)
        assert polls[1].kind == "incremental"
        assert polls[1].fresh > 0
        assert mirror_versions(tmp_path / "mirror.db", "orders") == sim.truth("orders")["orders"]
        assert results.of("customers") == []

        # The relist job waits a full interval after the first sync.
        next_relist = sched.next_run("relist", "orders")
        assert next_relist is not None
        assert (next_relist - datetime.now(UTC)).total_seconds() > 3000
    finally:
        await sched.shutdown()
    requests = sim.call(sim.simulator.stats.snapshot)["requests"]
    assert {k: v for k, v in requests.items() if "customers" in k} == {"GET /customers 403": 1}


async def test_resume_stopped_polls_a_resource_again_once_its_key_is_accepted(
    sim: SimHandle, parts: tuple[Poller, Metrics]
) -> None:
    poller, _ = parts
    results = Results()
    sched = PollScheduler(
        poller, ("customers",), interval=60, full_relist_interval=3600, jitter=0, on_result=results
    )
    await sched.start()
    try:
        async with asyncio.timeout(5):
            while "customers" not in sched.stopped:
                await asyncio.sleep(0.01)
        # Nothing to resume while the key is still refused: resuming stops it again.
        sched.set_interval(30)
        assert sched.resume_stopped() == ["customers"]
        async with asyncio.timeout(5):
            while "customers" not in sched.stopped:
                await asyncio.sleep(0.01)
        # The operator fixes the key's scope (here: the API stops refusing it) and reloads.
        sim.control({"faults": {"forbidden_resources": []}})
        assert sched.resume_stopped() == ["customers"]
        polls = await results.wait_for("customers", 1, timeout=5)
        assert polls[0].initial
        assert sched.stopped == {}
        next_poll = sched.next_run("poll", "customers")
        assert next_poll is not None
        assert (next_poll - datetime.now(UTC)).total_seconds() <= 30  # the interval set meanwhile
    finally:
        await sched.shutdown()
    requests = sim.call(sim.simulator.stats.snapshot)["requests"]
    assert requests["GET /customers 403"] == 2


async def test_set_interval_reschedules_every_poll(parts: tuple[Poller, Metrics]) -> None:
    poller, _ = parts
    results = Results()
    sched = PollScheduler(
        poller, ("orders", "inventory"), interval=60, full_relist_interval=3600, jitter=0, on_result=results
    )
    await sched.start()
    try:
        await results.wait_for("orders", 1)
        before = sched.next_run("poll", "orders")
        assert before is not None
        assert (before - datetime.now(UTC)).total_seconds() > 50
        sched.set_interval(0.2)
        assert sched.interval == 0.2
        await results.wait_for("orders", 3, timeout=5)
        await results.wait_for("inventory", 3, timeout=5)
    finally:
        await sched.shutdown()
    with pytest.raises(ValueError, match="longer than 0s"):
        sched.set_interval(0)


async def test_shutdown_awaits_a_poll_in_flight(tmp_path: Path) -> None:
    with running_simulator(SimConfig(rate=0, max_lag=0, preload_orders=20000, preload_inventory=0)) as s:
        writer = Writer(lambda: Store(tmp_path / "mirror.db"))
        writer.start()
        results = Results()
        async with PetstoreClient(s.base_url, s.api_key) as client:
            cfg = make_config(s.base_url, tmp_path / "mirror.db", page_size=100)
            poller = Poller(client, writer, cfg)
            sched = PollScheduler(
                poller, ("orders",), interval=60, full_relist_interval=3600, jitter=0, on_result=results
            )
            await sched.start()
            async with asyncio.timeout(10):
                while cursor_of(tmp_path / "mirror.db", "orders") is None:
                    await asyncio.sleep(0.005)
            await sched.shutdown()
        writer.stop()
    [result] = results.of("orders")
    assert result.stopped
    assert 0 < result.seen < 20000
    # The poll was awaited, not cancelled: every page it saw is committed, and the cursor with it.
    assert len(mirror_versions(tmp_path / "mirror.db", "orders")) == result.seen
    assert cursor_of(tmp_path / "mirror.db", "orders") == result.cursor


class GatedPoller:
    """Stands in for Poller: the first poll waits at a gate and then fails; later ones succeed."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.stopping = False
        self.calls = 0
        self.first_started = asyncio.Event()
        self.gate = asyncio.Event()

    async def poll(self, resource: str) -> PollResult:
        self.calls += 1
        if self.calls == 1:
            self.first_started.set()
            await self.gate.wait()
            raise RuntimeError("the API answered 500")
        return PollResult(resource, "incremental")

    async def full_relist(self, resource: str) -> PollResult:
        return PollResult(resource, "full")

    def stop(self) -> None:
        self.stopping = True


async def test_a_poll_asked_for_while_one_fails_still_follows_it(writer: Writer) -> None:
    poller = GatedPoller(writer)
    results = Results()
    sched = PollScheduler(
        poller,  # type: ignore[arg-type]
        ("orders",),
        interval=3600,
        full_relist_interval=86400,
        jitter=0,
        on_result=results,
    )
    await sched.start()
    try:
        async with asyncio.timeout(10):
            await poller.first_started.wait()
        sched.trigger_now("orders")  # while the first poll runs: coalesced to follow it
        poller.gate.set()
        [result] = await results.wait_for("orders", 1)
    finally:
        await sched.shutdown()
    assert result.kind == "incremental"
    assert poller.calls == 2
