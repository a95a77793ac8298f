"""The poll path against a hostile API over loopback: timestamps that are no instants, leap
seconds, offsets, records stamped in the future, listings that never end, relists that would
erase the mirror. Each through the real poller and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from syncd import timefmt
from syncd.api import PetstoreClient
from syncd.cli import main
from syncd.config import Config
from syncd.errors import ListingLoopError
from syncd.metrics import Metrics
from syncd.ops.status import collect_status
from syncd.poll.poller import Poller, PollResult
from syncd.poll.scheduler import PollScheduler
from syncd.sim.config import SimConfig
from syncd.sim.server import running_simulator
from syncd.store.db import Store
from syncd.store.schema import META_RELIST_HELD
from syncd.store.writer import Writer
from tests.hostile_listing import API_KEY, Listing, running_hostile_api
from tests.poll_helpers import cursor_of, make_config, mirror_versions

#: A fixed "now" for the poller's clock, a whole second (HTTP dates have second precision).
NOW = float(int(time.time()) - 86_400)


pytestmark = pytest.mark.usefixtures("no_backoff")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "mirror.db"


@pytest.fixture
def writer(store_path: Path) -> Iterator[Writer]:
    w = Writer(lambda: Store(store_path))
    w.start()
    yield w
    w.stop()


@pytest.fixture
def listing() -> Listing:
    return Listing()


@pytest.fixture
def base_url(listing: Listing) -> Iterator[str]:
    with running_hostile_api(listing) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[PetstoreClient]:
    async with PetstoreClient(base_url, API_KEY, timeout=5) as c:
        yield c


def config(base_url: str, store_path: Path, *, page_size: int = 2, **poll: Any) -> Config:
    cfg = make_config(base_url, store_path, page_size=page_size, api_key=API_KEY)
    return cfg.model_copy(update={"poll": cfg.poll.model_copy(update=poll)})


def rec(rid: int, stamp: str, version: int = 1) -> dict[str, Any]:
    return {"id": rid, "status": "placed", "total": float(rid), "updatedAt": stamp, "version": version}


def iso(ts: float) -> str:
    return timefmt.format_epoch(ts)


def put(listing: Listing, rid: int, at: float, stamp: str | None = None, version: int = 1) -> None:
    listing.put("orders", at, rec(rid, iso(at) if stamp is None else stamp, version))


def frozen(at: float = NOW) -> Any:
    return lambda: at


def status_of(store_path: Path, base_url: str, resource: str = "orders") -> dict[str, Any]:
    cfg = config(base_url, store_path)
    report: dict[str, Any] = collect_status(cfg, now=NOW)["resources"][resource]
    return report


def write_config_file(tmp_path: Path, base_url: str, store_path: Path, **poll: Any) -> Path:
    lines = [f"{key} = {json.dumps(value)}" for key, value in poll.items()]
    path = tmp_path / "syncd.toml"
    path.write_text(
        f'[api]\nbase_url = "{base_url}"\napi_key_env = "SYNCD_TEST_API_KEY"\ntimeout = "5s"\n'
        f'[store]\npath = "{store_path}"\n[sync]\nmode = "poll"\nresources = ["orders", "customers"]\n'
        '[poll]\nlookback = "1s"\n' + "".join(line + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


async def cli(args: list[str], api_key: str = API_KEY) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, main, args, env={"SYNCD_TEST_API_KEY": api_key})


# -- item: timestamps are instants ---------------------------------------------------------


async def test_non_date_and_leap_second_never_poison_the_cursor(
    tmp_path: Path, listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    day = datetime.fromtimestamp(NOW, UTC).date() - timedelta(days=1)
    leap = f"{day.isoformat()}T23:59:60Z"
    leap_at = datetime(day.year, day.month, day.day, 23, 59, 59, 999_000, UTC).timestamp()
    put(listing, 1, leap_at - 120)
    put(listing, 2, leap_at, leap)  # a leap second: a real instant, clamped to :59.999
    put(listing, 3, leap_at + 31, "2024-13-45T10:00:00Z")  # no date at all, listed last
    put(listing, 4, leap_at + 30)
    poller = Poller(client, writer, config(base_url, store_path), clock=frozen())
    first = await poller.poll("orders")
    # The good records around the bad one are mirrored; the bad one moves nothing.
    assert set(mirror_versions(store_path, "orders")) == {"1", "2", "4"}
    assert first.cursor == cursor_of(store_path, "orders") == iso(leap_at + 30)
    # verify lists the raw records, the non-date one too: reported, never a traceback.
    path = write_config_file(tmp_path, base_url, store_path)
    verified = await cli(["verify", "--config", str(path), "--resource", "orders"])
    assert verified.exception is None or isinstance(verified.exception, SystemExit), verified.output
    assert "missing: 1" in verified.output

    # The leap second as the newest record: it becomes the cursor, normalized.
    listing.remove("orders", {4})
    other_writer = Writer(lambda: Store(tmp_path / "second.db"))
    other_writer.start()
    try:
        other = Poller(client, other_writer, config(base_url, tmp_path / "second.db"), clock=frozen())
        await other.poll("orders")
        assert cursor_of(tmp_path / "second.db", "orders") == f"{day.isoformat()}T23:59:59.999Z"
        # Polling goes on from it: the next poll asks since = cursor - lookback.
        put(listing, 5, leap_at + 60)
        again = await other.poll("orders")
    finally:
        other_writer.stop()
    assert again.kind == "incremental"
    assert listing.requests[-1][1]["since"] == iso(leap_at - 1)
    assert "5" in mirror_versions(tmp_path / "second.db", "orders")
    report = status_of(tmp_path / "second.db", base_url)
    assert report["cursor_problem"] is None
    assert report["lag_seconds"] is not None


async def test_offsets_are_ordered_as_instants_not_as_strings(
    listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    day = datetime.fromtimestamp(NOW, UTC).date() - timedelta(days=1)
    nine_z = datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC).timestamp()
    # 10:00+05:30 is 04:30Z: earlier than 09:00Z, though its string sorts after it.
    put(listing, 1, nine_z - 4.5 * 3600, f"{day.isoformat()}T10:00:00+05:30")
    put(listing, 2, nine_z, f"{day.isoformat()}t09:00:00.000000000z")
    poller = Poller(client, writer, config(base_url, store_path), clock=frozen())
    await poller.poll("orders")
    assert cursor_of(store_path, "orders") == f"{day.isoformat()}T09:00:00.000Z"
    # A later change stamped with an offset moves it on, as its instant says.
    put(listing, 3, nine_z + 900, f"{day.isoformat()}T14:45:00+05:30")
    second = await poller.poll("orders")
    assert listing.requests[-1][1]["since"] == f"{day.isoformat()}T08:59:59.000Z"
    assert second.fresh == 1
    assert cursor_of(store_path, "orders") == f"{day.isoformat()}T09:15:00.000Z"
    assert set(mirror_versions(store_path, "orders")) == {"1", "2", "3"}


async def test_future_records_are_mirrored_but_never_move_the_cursor_date_header(
    listing: Listing,
    base_url: str,
    client: PetstoreClient,
    writer: Writer,
    store_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The API's clock runs an hour behind this host's: its Date header is what counts.
    api_now = NOW - 3600
    listing.date = api_now
    put(listing, 1, api_now - 60)
    put(listing, 2, api_now + 300)  # exactly poll.max_clock_skew ahead: trusted
    put(listing, 3, api_now + 300.001)  # one millisecond past it
    put(listing, 4, timefmt.to_epoch("2999-01-01T00:00:00Z"))
    metrics = Metrics()
    poller = Poller(client, writer, config(base_url, store_path), metrics=metrics, clock=frozen())
    with caplog.at_level(logging.WARNING, logger="syncd.poll.poller"):
        first = await poller.poll("orders")
        assert cursor_of(store_path, "orders") == iso(api_now + 300)
        # Later, by the API's clock: polling goes on past the far-future record.
        listing.date = api_now + 100
        put(listing, 5, api_now + 350)
        second = await poller.poll("orders")
    assert set(mirror_versions(store_path, "orders")) == {"1", "2", "3", "4", "5"}
    assert cursor_of(store_path, "orders") == iso(api_now + 350)
    assert (first.future, second.future) == (2, 0)
    assert metrics.future_timestamps.labels(resource="orders")._value.get() == 2
    warned = [r.getMessage() for r in caplog.records if "max_clock_skew" in r.getMessage()]
    assert len(warned) == 2  # once per record, not once per poll
    assert all("Date header" in w for w in warned)
    # Status shows the real lag, not 0.
    assert status_of(store_path, "http://127.0.0.1:1")["lag_seconds"] == pytest.approx(NOW - (api_now + 350))


async def test_a_date_header_far_ahead_of_this_host_vouches_for_nothing(
    listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    # An upstream clock that jumped stamps its records and its Date header alike.
    listing.date = timefmt.to_epoch("2999-01-01T00:00:00Z")
    put(listing, 1, NOW - 60)
    put(listing, 2, NOW + 600)  # 2 x poll.max_clock_skew ahead of this host: the most trusted
    put(listing, 3, NOW + 600.001)
    put(listing, 4, timefmt.to_epoch("2999-01-01T00:00:00Z"))
    result = await Poller(client, writer, config(base_url, store_path), clock=frozen()).poll("orders")
    assert result.future == 2
    assert cursor_of(store_path, "orders") == iso(NOW + 600)
    assert set(mirror_versions(store_path, "orders")) == {"1", "2", "3", "4"}


async def test_future_records_without_a_date_header_use_the_local_clock(
    listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    listing.date = None
    put(listing, 1, NOW - 60)
    put(listing, 2, NOW + 60)  # exactly poll.max_clock_skew (1m here) ahead: trusted
    put(listing, 3, NOW + 60.001)
    metrics = Metrics()
    cfg = config(base_url, store_path, max_clock_skew=60.0)
    poller = Poller(client, writer, cfg, metrics=metrics, clock=frozen())
    result = await poller.poll("orders")
    assert result.future == 1
    assert cursor_of(store_path, "orders") == iso(NOW + 60)
    assert set(mirror_versions(store_path, "orders")) == {"1", "2", "3"}
    # Once the clock has caught up, the record is trusted like any other.
    later = Poller(client, writer, cfg, metrics=metrics, clock=frozen(NOW + 1))
    put(listing, 3, NOW + 60.001, version=2)
    await later.poll("orders")
    assert cursor_of(store_path, "orders") == iso(NOW + 60.001)
    assert mirror_versions(store_path, "orders")["3"] == 2


def _store_cursor(store: Store, resource: str, cursor: str) -> None:
    with store.db.atomic():
        store.set_cursor(resource, cursor)


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ("2016-12-31T23:59:60Z", None),  # an older syncd committed a leap second: it is an instant
        ("2024-13-45T00:00:00Z", "is not an instant"),
        ("2999-01-01T00:00:00.000Z", "in the future"),
    ],
)
async def test_an_old_bad_cursor_in_the_store_is_reported_and_recovered(
    tmp_path: Path,
    listing: Listing,
    base_url: str,
    client: PetstoreClient,
    writer: Writer,
    store_path: Path,
    stored: str,
    problem: str | None,
) -> None:
    put(listing, 1, NOW - 600)
    poller = Poller(client, writer, config(base_url, store_path), clock=frozen())
    await poller.poll("orders")
    await writer.run(_store_cursor, "orders", stored)
    put(listing, 2, NOW - 300)  # changed after the bad cursor was stored

    report = status_of(store_path, base_url)
    if problem is None:
        assert report["cursor_problem"] is None
        assert report["lag_seconds"] is not None
    else:
        assert problem in report["cursor_problem"]
        assert report["lag_seconds"] is None
    path = write_config_file(tmp_path, base_url, store_path)
    shown = await cli(["status", "--config", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "Traceback" not in shown.output
    verified = await cli(["verify", "--config", str(path), "--resource", "orders"])
    assert verified.exit_code == 1, verified.output  # record 2 is missing until the next poll
    assert "missing: 1" in verified.output

    result = await poller.poll("orders")
    if problem is None:
        assert result.kind == "incremental"
        assert cursor_of(store_path, "orders") == iso(NOW - 300)
    else:
        assert result.cursor_reset is not None
        assert problem in result.cursor_reset
        assert cursor_of(store_path, "orders") == iso(NOW - 300)
        assert set(mirror_versions(store_path, "orders")) == {"1", "2"}
    assert status_of(store_path, base_url)["cursor_problem"] is None


# -- item: listings that never end ----------------------------------------------------------


async def test_a_repeated_next_cursor_ends_the_listing_with_an_error_status_shows(
    tmp_path: Path, listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    for i in range(10):
        put(listing, i + 1, NOW - 100 + i)
    listing.loop_at = 2  # page 3 (records 5, 6) names itself as the next page, forever
    metrics = Metrics()
    poller = Poller(client, writer, config(base_url, store_path), metrics=metrics, clock=frozen())
    results: list[PollResult] = []
    sched = PollScheduler(
        poller,
        ("orders",),
        interval=3600,
        full_relist_interval=86400,
        jitter=0,
        metrics=metrics,
        on_result=results.append,
    )
    await sched.start()
    try:
        async with asyncio.timeout(10):
            while status_of(store_path, base_url)["last_error"] is None:
                await asyncio.sleep(0.01)
        report = status_of(store_path, base_url)
        assert "repeated next_cursor 'c_4'" in report["last_error"]
        assert metrics.listings_aborted.labels(resource="orders", reason="repeated_cursor")._value.get() == 1
        assert metrics.poll_errors.labels(resource="orders", kind="ListingLoopError")._value.get() == 1
        # The pages before the loop are committed, the cursor with them.
        assert set(mirror_versions(store_path, "orders")) == {"1", "2", "3", "4", "5", "6"}
        assert cursor_of(store_path, "orders") == iso(NOW - 95)
        # The API mends: the next poll starts again normally from the cursor.
        listing.loop_at = None
        sched.trigger_now("orders")
        async with asyncio.timeout(10):
            while not results:
                await asyncio.sleep(0.01)
    finally:
        await sched.shutdown()
    assert results[0].kind == "incremental"
    assert len(mirror_versions(store_path, "orders")) == 10
    assert status_of(store_path, base_url)["last_error"] is None


async def test_max_pages_at_the_bound(
    listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    for i in range(6):
        put(listing, i + 1, NOW - 100 + i)
    metrics = Metrics()
    cfg = config(base_url, store_path, page_size=2, max_pages=3)
    poller = Poller(client, writer, cfg, metrics=metrics, clock=frozen())
    exactly = await poller.poll("orders")  # 3 pages of 2: exactly the bound, allowed
    assert exactly.pages == 3
    for i in range(6, 14):
        put(listing, i + 1, NOW - 50 + i)
    with pytest.raises(ListingLoopError, match="max_pages=3"):
        await poller.poll("orders")  # 7 pages from since: ended after 3
    assert metrics.listings_aborted.labels(resource="orders", reason="too_many_pages")._value.get() == 1
    assert len(mirror_versions(store_path, "orders")) == 6 + 4  # the 3 pages before are kept
    # Each poll makes progress from where the last committed; nothing is lost.
    resumed = await Poller(client, writer, config(base_url, store_path, max_pages=100), clock=frozen()).poll(
        "orders"
    )
    assert resumed.kind == "incremental"
    assert len(mirror_versions(store_path, "orders")) == 14


# -- item: relists that would erase the mirror ------------------------------------------------


def _age(store: Store, resource: str) -> None:
    # As if the first sync had been an hour ago: outside the relist's spare window.
    old = iso(time.time() - 3600)
    with store.db.atomic():
        store.conn.execute(f"UPDATE {resource} SET _synced_at = ?", (old,))


async def test_relist_tombstones_exactly_the_ratio_and_holds_back_past_it(
    listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    for i in range(20):
        put(listing, i + 1, NOW - 7200 + i)
    metrics = Metrics()
    cfg = config(base_url, store_path, page_size=50, max_tombstone_ratio=0.1, tombstone_floor=0)
    poller = Poller(client, writer, cfg, metrics=metrics)
    await poller.poll("orders")
    await writer.run(_age, "orders")
    listing.remove("orders", {1, 2})  # 2 of 20: exactly the ratio, allowed
    at_bound = await poller.full_relist("orders")
    assert (at_bound.tombstoned, at_bound.held_back) == (2, None)

    listing.remove("orders", {3, 4})  # 2 of 18: past the ratio
    held = await poller.full_relist("orders")
    assert held.tombstoned == 0
    assert held.held_back is not None
    assert "would delete 2 of 18" in held.held_back
    assert metrics.relists_held_back.labels(resource="orders")._value.get() == 1
    assert len(mirror_versions(store_path, "orders")) == 18
    report = status_of(store_path, base_url)
    assert "relist held back: would delete 2 of 18" in (report["relist_held_back"] or "")
    # Polls go on meanwhile, and the listed records stay current.
    put(listing, 5, NOW - 10, version=2)
    await poller.poll("orders")
    assert mirror_versions(store_path, "orders")["5"] == 2

    allowed = await poller.full_relist("orders", allow_mass_delete=True)
    assert allowed.tombstoned == 2
    assert set(mirror_versions(store_path, "orders", deleted=True)) == {"1", "2", "3", "4"}
    assert status_of(store_path, base_url)["relist_held_back"] is None


async def test_small_mirrors_and_empty_listings(
    listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    for i in range(3):
        put(listing, i + 1, NOW - 7200 + i)
    cfg = config(base_url, store_path)  # defaults: ratio 0.1, floor 10
    poller = Poller(client, writer, cfg)
    await poller.poll("orders")
    await writer.run(_age, "orders")
    listing.remove("orders", {1})  # 1 of 3 is 33%, but within the floor: a tiny shop's delete
    one = await poller.full_relist("orders")
    assert (one.tombstoned, one.held_back) == (1, None)

    listing.remove("orders", {2, 3})  # the listing comes back empty
    empty = await poller.full_relist("orders")
    assert empty.tombstoned == 0
    assert empty.held_back is not None
    assert "would delete 2 of 2" in empty.held_back
    assert set(mirror_versions(store_path, "orders")) == {"2", "3"}
    # The API recovers: the next relist finds nothing to delete and clears the note.
    put(listing, 2, NOW - 7199)
    put(listing, 3, NOW - 7198)
    fine = await poller.full_relist("orders")
    assert (fine.tombstoned, fine.held_back) == (0, None)
    assert status_of(store_path, base_url)["relist_held_back"] is None


async def test_resync_allow_mass_delete_through_the_cli(tmp_path: Path) -> None:
    store_path = tmp_path / "mirror.db"
    with running_simulator(SimConfig(seed=6, rate=0, max_lag=0, preload_customers=40)) as sim:
        path = write_config_file(tmp_path, sim.base_url, store_path)
        first = await cli(["resync", "customers", "--config", str(path)], api_key=sim.api_key)
        assert first.exit_code == 0, first.output
        store = Store(store_path)
        try:
            _age(store, "customers")
        finally:
            store.close()
        gone = sorted(sim.truth("customers")["customers"])[:12]  # 30%: past the ratio and the floor
        for rid in gone:
            sim.call(sim.simulator.record_deleted, "customers", rid)

        held = await cli(["resync", "customers", "--config", str(path)], api_key=sim.api_key)
        assert held.exit_code == 1
        assert "relist held back: would delete 12 of 40" in held.output
        assert "--allow-mass-delete" in held.output
        assert len(mirror_versions(store_path, "customers")) == 40
        shown = await cli(["status", "--config", str(path)], api_key=sim.api_key)
        assert "relist held back" in shown.output

        applied = await cli(
            ["resync", "customers", "--allow-mass-delete", "--config", str(path)], api_key=sim.api_key
        )
        assert applied.exit_code == 0, applied.output
        assert "12 tombstoned" in applied.output
        truth = sim.truth("customers")["customers"]
    assert mirror_versions(store_path, "customers") == truth
    assert set(mirror_versions(store_path, "customers", deleted=True)) == set(gone)
    conn = Store.open_reader(store_path)
    try:
        row = conn.execute(
            "SELECT value FROM _meta WHERE key = ?", (META_RELIST_HELD + "customers",)
        ).fetchone()
    finally:
        conn.close()
    assert row is None


async def test_verify_ends_a_looping_listing_with_a_clear_error(
    tmp_path: Path, listing: Listing, base_url: str, client: PetstoreClient, writer: Writer, store_path: Path
) -> None:
    for i in range(6):
        put(listing, i + 1, NOW - 100 + i)
    await Poller(client, writer, config(base_url, store_path), clock=frozen()).poll("orders")
    listing.loop_at = 0  # the first page names itself as the next one
    path = write_config_file(tmp_path, base_url, store_path)
    listing.page_cap = 2  # verify asks for 1000 a page
    verified = await cli(["verify", "--config", str(path), "--resource", "orders"])
    assert verified.exit_code == 1
    assert "Traceback" not in verified.output
    assert "repeated next_cursor" in verified.output
