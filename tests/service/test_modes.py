"""ModeControl between the poll reports, the receiver's state and the scheduler it steers:
switches are recorded and acted on (interval, catch-up poll, probes), reports are judged in
order and none is lost at stop, and a reload changes the interval of the current mode only.
The scheduler is a recording stand-in; the store is a real file behind the writer thread."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from syncd.config import Config
from syncd.metrics import Metrics
from syncd.ops import status as status_keys
from syncd.poll.poller import PollResult
from syncd.poll.scheduler import PollScheduler
from syncd.service.modes import ModeControl
from syncd.service.systemd import Notifier
from syncd.store.db import Store
from syncd.store.writer import Writer

RESOURCES = ("orders", "customers")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SchedulerStandIn:
    """What ModeControl uses of PollScheduler, recorded."""

    def __init__(self) -> None:
        self.resources = RESOURCES
        self.stopped: dict[str, str] = {}
        self.intervals: list[float] = []
        self.triggered = 0

    def set_interval(self, seconds: float) -> None:
        self.intervals.append(seconds)

    def trigger_now(self, resource: str | None = None) -> None:
        self.triggered += 1


def config(mode: str = "push", **poll: str) -> Config:
    return Config.model_validate(
        {
            "sync": {"mode": mode, "resources": list(RESOURCES)},
            "poll": {"interval": "10s", "safety_interval": "1h", **poll},
            "fallback": {"silence": "60s", "missed_ratio": 0.1, "recover_after": 1},
        }
    )


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(lambda: Store(tmp_path / "mirror.db"))
    w.start()
    yield w
    w.stop()


def make(
    writer: Writer, cfg: Config | None = None
) -> tuple[ModeControl, SchedulerStandIn, asyncio.Queue[PollResult], FakeClock]:
    scheduler, reports, clock = SchedulerStandIn(), asyncio.Queue[PollResult](), FakeClock()
    modes = ModeControl(
        cfg or config(),
        cast(PollScheduler, scheduler),
        reports,
        writer=writer,
        metrics=Metrics(),
        notifier=Notifier({}),
        clock=clock,
    )
    return modes, scheduler, reports, clock


def poll(resource: str, *, fresh: int, applied: int, **kwargs: Any) -> PollResult:
    return PollResult(resource, "incremental", fresh=fresh, applied=applied, **kwargs)


def _meta(store: Store) -> dict[str, str | None]:
    keys = (status_keys.META_MODE, status_keys.META_MODE_REASON, status_keys.META_MODE_SWITCHES)
    return {key: store.get_meta(key) for key in keys}


async def test_a_poll_that_finds_missed_changes_switches_to_fallback_and_catches_up(writer: Writer) -> None:
    modes, scheduler, _, _ = make(writer)
    # The first poll of each resource after a start is not judged.
    for resource in RESOURCES:
        await modes.poll_finished(poll(resource, fresh=50, applied=50))
    assert modes.mode == "push"
    assert modes.interval == 3600.0

    await modes.poll_finished(poll("orders", fresh=20, applied=10))
    assert modes.mode == "fallback"
    assert modes.interval == 10.0
    assert scheduler.intervals == [10.0]
    assert scheduler.triggered == 1
    meta = await writer.run(_meta)
    assert meta[status_keys.META_MODE] == "fallback"
    assert "missed" in (meta[status_keys.META_MODE_REASON] or "")
    assert meta[status_keys.META_MODE_SWITCHES] == "1"
    assert modes.status_text().startswith("mode fallback (missed:")


async def test_a_receiver_down_switches_and_a_healthy_poll_brings_push_back(writer: Writer) -> None:
    modes, scheduler, _, _ = make(writer)
    await modes.check(receiver_serving=False, last_delivery_at=None)
    assert modes.mode == "fallback"
    assert scheduler.triggered == 1
    for resource in RESOURCES:
        await modes.poll_finished(poll(resource, fresh=0, applied=0))
    await modes.check(receiver_serving=True, last_delivery_at=None)
    await modes.poll_finished(poll("orders", fresh=20, applied=0))
    assert modes.mode == "push"
    assert scheduler.intervals == [10.0, 3600.0]
    # Going back to push needs no catch-up poll.
    assert scheduler.triggered == 1
    meta = await writer.run(_meta)
    assert meta[status_keys.META_MODE] == "push"
    assert meta[status_keys.META_MODE_SWITCHES] == "2"


async def test_silence_probes_the_active_resources_and_a_delivery_resets_it(writer: Writer) -> None:
    modes, scheduler, _, clock = make(writer)
    assert modes.health is not None
    clock.now += 30
    await modes.check(receiver_serving=True, last_delivery_at=5.0)
    clock.now += 40
    await modes.check(receiver_serving=True, last_delivery_at=5.0)
    assert scheduler.triggered == 0, "a delivery 40s ago is not 60s of silence"
    scheduler.stopped["customers"] = "auth"
    clock.now += 30
    await modes.check(receiver_serving=True, last_delivery_at=5.0)
    assert scheduler.triggered == 1
    assert modes.health.probing


async def test_reports_are_judged_in_order_and_stop_judges_what_is_left(writer: Writer) -> None:
    modes, _, reports, _ = make(writer)
    modes.start()
    for resource in RESOURCES:
        reports.put_nowait(poll(resource, fresh=5, applied=5, cursor="2026-01-01T00:00:00Z"))
    reports.put_nowait(poll("orders", fresh=20, applied=20))
    await modes.stop()
    assert reports.empty()
    assert modes.mode == "fallback"
    assert set(modes.lags) == set(RESOURCES)


async def test_poll_mode_keeps_the_lag_and_never_switches(writer: Writer) -> None:
    modes, scheduler, _, _ = make(writer, config("poll"))
    assert modes.health is None
    await modes.check(receiver_serving=False, last_delivery_at=None)
    await modes.poll_finished(poll("orders", fresh=20, applied=20, cursor="2026-01-01T00:00:00Z"))
    assert modes.mode == "poll"
    assert modes.interval == 10.0
    assert "orders" in modes.lags
    assert scheduler.intervals == []
    assert modes.status_text().startswith("mode poll; poll every 10s; cursor lag ")


async def test_a_reload_changes_the_interval_of_the_current_mode_only(writer: Writer) -> None:
    modes, scheduler, _, _ = make(writer)
    modes.reconfigure(config(interval="20s"))
    assert scheduler.intervals == [], "push polls at the safety interval, which did not change"
    modes.reconfigure(config(interval="20s", safety_interval="30m"))
    assert scheduler.intervals == [1800.0]
    assert modes.interval == 1800.0
