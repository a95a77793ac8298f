"""Poison records: each kind through the real pipeline, both paths.

Push: signed deliveries to the real receiver over loopback, drained by the running inbox
worker into a real SQLite file. Pull: the poller against a small API on loopback that
follows the contract except that one record of a page is hostile. Each test checks that
the bad record is mirrored under a mapped column or kept as a dead letter with its reason,
that the good records around it reach the mirror, that later events are not stuck, that
`syncd status` shows the dead letter, and that nothing stored before was lost.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import stamina
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from syncd.api import PetstoreClient
from syncd.cli import main
from syncd.config import WebhookConfig
from syncd.core.records import parse_record
from syncd.ops.status import collect_status
from syncd.poll.poller import Poller
from syncd.push.inbox_worker import InboxWorker
from syncd.push.replay import replay_dead_letters
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch
from tests.poll_helpers import cursor_of, make_config, write_config_file
from tests.webhook_support import envelope, order, running_receiver, serve_app, signed_headers

#: Columns of a fresh orders table: id, the contract's eight fields, seven bookkeeping ones.
ORDERS_COLUMNS = 16
COLUMN_LIMIT = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_COLUMN)


@dataclass(frozen=True)
class Poison:
    """A record built around `rid`; `columns` (column -> value) when it must be mirrored,
    `reason` (a part of it) when it must become a dead letter."""

    make: Callable[[int], dict[str, Any]]
    columns: dict[str, Any] | None = None
    reason: str | None = None


def _with(**extra: Any) -> Callable[[int], dict[str, Any]]:
    return lambda rid: order(rid, **extra)


def _replace(**fields: Any) -> Callable[[int], dict[str, Any]]:
    return lambda rid: {**order(rid), **fields}


def _many_fields(n: int) -> Callable[[int], dict[str, Any]]:
    return lambda rid: order(rid, **{f"f{i}": i for i in range(n)})


#: Strict JSON: what any parser reads the same.
COMMON: dict[str, Poison] = {
    "case collision Total/total": Poison(_with(Total=1.5), columns={"total": 59.99, "Total~2": 1.5}),
    "ID next to id": Poison(_with(ID="x-1"), columns={"ID~2": "x-1"}),
    "_VERSION and _deleted fields": Poison(
        _with(_VERSION=99, _deleted=1),
        columns={"_VERSION~2": 99, "_deleted~2": 1, "_version": 1, "_deleted": 0},
    ),
    "NUL in a field name": Poison(_with(**{"a\x00b": 7}), columns={"a\\x00b~2": 7}),
    "id 2**63": Poison(_replace(id=2**63), reason="outside the 64-bit integer range"),
    "version 2**63": Poison(_replace(version=2**63), reason="outside the 64-bit integer range"),
    "huge negative id": Poison(_replace(id=-(2**63) - 1), reason="outside the 64-bit integer range"),
    "value past SQLite's integers": Poison(_with(big=2**64 - 1), columns={"big": str(2**64 - 1)}),
    "too many fields": Poison(_many_fields(COLUMN_LIMIT), reason="more than SQLite's limit of"),
}
#: What the standard parser takes beyond strict JSON (NaN, 1e400, lone surrogates) and
#: integers past 64 bits, exactly; both paths parse as it does (syncd.jsonparse).
EXACT_PARSE: dict[str, Poison] = {
    "value past 64 bits": Poison(_with(big=2**70), columns={"big": str(2**70)}),
    "NaN value": Poison(_with(score=float("nan")), columns={"score": "NaN"}),
    "1e400 value": Poison(_with(score=float("inf")), columns={"score": float("inf")}),
    "version 1e400": Poison(_replace(version=float("inf")), reason="version must be an integer"),
    "lone surrogate in a value": Poison(_with(note="a\ud800b"), columns={"note": '"a\\ud800b"'}),
    "lone surrogate in a nested value": Poison(
        _with(extra={"k": "\udfff"}), columns={"extra": '{"k":"\\udfff"}'}
    ),
    "lone surrogate in a key": Poison(_with(**{"k\ud800": 1}), columns={"k\\ud800~2": 1}),
    "lone surrogate in the id": Poison(_replace(id="o\ud800"), reason="not valid Unicode"),
}
ALL_KINDS = {**COMMON, **EXACT_PARSE}


def mirror_row(db: Path, rid: Any) -> dict[str, Any] | None:
    conn = Store.open_reader(db)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM orders WHERE id=?", (rid,)).fetchone()
        return None if row is None else dict(row)
    finally:
        conn.close()


def dead_letters(db: Path) -> list[tuple[Any, ...]]:
    conn = Store.open_reader(db)
    try:
        return conn.execute("SELECT source, resource, record_id, reason, body FROM _dead_letters").fetchall()
    finally:
        conn.close()


def assert_outcome(db: Path, poison: Poison, rid: int, reason: str | None = None) -> None:
    row = mirror_row(db, rid)
    if poison.columns is not None:
        assert row is not None
        for column, value in poison.columns.items():
            assert row[column] == value, column
        assert dead_letters(db) == []
        return
    assert row is None
    (letter,) = dead_letters(db)
    assert (reason or poison.reason or "") in letter[3]
    cfg = make_config("http://127.0.0.1:9", db)
    status = collect_status(cfg)["dead_letters"]
    assert (status["total"], status["open"]) == (1, 1)
    assert (reason or poison.reason or "") in status["latest"][0]["reason"]


# -- push ----------------------------------------------------------------------------------


async def _wait(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", list(ALL_KINDS))
async def test_poison_webhook_costs_only_itself(tmp_path: Path, kind: str) -> None:
    poison = ALL_KINDS[kind]
    async with running_receiver(tmp_path) as rx, httpx.AsyncClient(timeout=30) as http:
        worker = InboxWorker(rx.writer, None, fetch_thin=False)
        task = asyncio.create_task(worker.run())
        try:

            async def deliver(event_id: str, data: dict[str, Any]) -> None:
                # json.dumps writes NaN, Infinity and lone surrogates (escaped) as they are.
                body = envelope(event_id, data=data)
                response = await http.post(
                    rx.url, content=body, headers=signed_headers(body, event_id=event_id)
                )
                assert response.status_code == 200, response.text
                # As the daemon's receiver does after each commit (else the worker looks
                # again only after its idle timeout).
                worker.wake()

            await deliver("evt_before", order(1))
            await _wait(lambda: worker.processed == 1)
            await deliver("evt_poison", poison.make(2))
            await deliver("evt_after", order(3))
            # The poison is settled and the event after it is not held up.
            await _wait(lambda: worker.processed == 3)
            assert rx.query("SELECT COUNT(*) FROM _inbox") == [(0,)]
            outcomes = dict(rx.query("SELECT event_id, outcome FROM _events"))
            assert outcomes["evt_before"] == outcomes["evt_after"] == "applied"
            assert outcomes["evt_poison"] == ("applied" if poison.columns is not None else "invalid")
            assert mirror_row(rx.db_path, 1) is not None
            assert mirror_row(rx.db_path, 3) is not None
            assert_outcome(rx.db_path, poison, 2)
            # Delivered again (a provider retry under a new id): nothing changes.
            before = mirror_row(rx.db_path, 2)
            await deliver("evt_poison_again", poison.make(2))
            await _wait(lambda: worker.processed == 4)
            again = dict(rx.query("SELECT event_id, outcome FROM _events"))["evt_poison_again"]
            assert again == ("duplicate" if poison.columns is not None else "invalid")
            assert mirror_row(rx.db_path, 2) == before
        finally:
            worker.stop()
            await task


async def test_replay_of_a_poison_webhook_stays_a_dead_letter_and_status_agrees(tmp_path: Path) -> None:
    async with running_receiver(tmp_path) as rx, httpx.AsyncClient(timeout=30) as http:
        body = envelope("evt_big", data=order(5, **{f"f{i}": i for i in range(COLUMN_LIMIT)}))
        assert (
            await http.post(rx.url, content=body, headers=signed_headers(body, event_id="evt_big"))
        ).status_code == 200
        await InboxWorker(rx.writer, None, fetch_thin=False).drain()
        cfg = make_config("http://127.0.0.1:9", rx.db_path)
        assert collect_status(cfg)["dead_letters"]["open"] == 1
        results = await replay_dead_letters(rx.writer, None, fetch_thin=False)
        assert [(r.event_id, r.outcome) for r in results] == [("evt_big", "invalid")]
        assert "more than SQLite's limit" in (results[0].reason or "")
        # Replayed and still invalid: still open for status, and offered again by replay.
        dead = collect_status(cfg)["dead_letters"]
        assert (dead["total"], dead["open"]) == (1, 1)
        assert dead["latest"][0]["event_id"] == "evt_big"
        again = await replay_dead_letters(rx.writer, None, fetch_thin=False)
        assert [r.event_id for r in again] == ["evt_big"]


@pytest.mark.parametrize(
    ("extra", "stored"),
    [(COLUMN_LIMIT - ORDERS_COLUMNS, True), (COLUMN_LIMIT - ORDERS_COLUMNS + 1, False)],
    ids=["at the column limit", "one past it"],
)
async def test_column_limit_bound(tmp_path: Path, extra: int, stored: bool) -> None:
    async with running_receiver(tmp_path) as rx, httpx.AsyncClient(timeout=30) as http:
        wide = order(2, **{f"f{i}": i for i in range(extra)})
        for event_id, data in (("evt_1", order(1)), ("evt_wide", wide), ("evt_3", order(3))):
            body = envelope(event_id, data=data)
            response = await http.post(rx.url, content=body, headers=signed_headers(body, event_id=event_id))
            assert response.status_code == 200
        await InboxWorker(rx.writer, None, fetch_thin=False).drain()
        assert rx.query("SELECT id FROM orders ORDER BY id") == (
            [(1,), (2,), (3,)] if stored else [(1,), (3,)]
        )
        (columns,) = rx.query("SELECT COUNT(*) FROM pragma_table_info('orders')")
        assert columns == ((COLUMN_LIMIT,) if stored else (ORDERS_COLUMNS,))
        letters = rx.query("SELECT event_id, reason FROM _dead_letters")
        if stored:
            assert letters == []
            row = mirror_row(rx.db_path, 2)
            assert row is not None
            assert row[f"f{extra - 1}"] == extra - 1
        else:
            assert [(e, f"needs {COLUMN_LIMIT + 1} columns" in r) for e, r in letters] == [("evt_wide", True)]


async def test_case_variants_all_survive_and_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    record = order(1, Total=2.5, TOTAL="x", ToTaL=None, Status="S")
    async with running_receiver(tmp_path) as rx, httpx.AsyncClient(timeout=30) as http:
        body = envelope("evt_1", data=record)
        assert (
            await http.post(rx.url, content=body, headers=signed_headers(body, event_id="evt_1"))
        ).status_code == 200
        await InboxWorker(rx.writer, None, fetch_thin=False).drain()
    row = mirror_row(db, 1)
    assert row is not None
    assert (row["total"], row["Total~2"], row["TOTAL~3"], row["ToTaL~4"]) == (59.99, 2.5, "x", None)
    assert (row["status"], row["Status~2"]) == ("placed", "S")
    # The mapping is kept: after a restart, contents read back under the fields' own names.
    store = Store(db)
    try:
        content = store.mirror_contents("orders", [1])[1]
        assert (content["total"], content["Total"], content["TOTAL"], content["Status"]) == (
            59.99,
            2.5,
            "x",
            "S",
        )
        assert "ToTaL" not in content  # NULL, as the record had it
        assert store.field_columns("orders")["Total"] == "Total~2"
        result = apply_batch(store, [parse_record("orders", record, "webhook")], synced_at=format_epoch())
        assert result.counts == {"duplicate": 1}
        # A new spelling arriving later takes the next free suffix; old ones keep theirs.
        later = order(2, tOTAL=3)
        apply_batch(store, [parse_record("orders", later, "webhook")], synced_at=format_epoch())
        assert store.field_columns("orders")["tOTAL"] == "tOTAL~5"
        assert store.mirror_contents("orders", [2])[2]["tOTAL"] == 3
    finally:
        store.close()


# -- pull ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_backoff() -> Any:
    with stamina.set_testing(True, attempts=2, cap=True):
        yield


class HostileApi:
    """The listing contract (`since`, `limit`, `next_cursor`), serving `records` in pages,
    oldest first; every record is served as given, poison included."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.requests = 0

    async def list_orders(self, request: Request) -> Response:
        self.requests += 1
        limit = int(request.query_params.get("limit", "50"))
        start = int(request.query_params.get("cursor", "0"))
        since = request.query_params.get("since")
        chosen = [r for r in self.records if since is None or r["updatedAt"] >= since]
        page = chosen[start : start + limit]
        more = start + limit < len(chosen)
        payload = {"data": page, "has_more": more, "next_cursor": str(start + limit) if more else None}
        return Response(json.dumps(payload), media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/orders", self.list_orders)])


@asynccontextmanager
async def hostile_api(records: list[dict[str, Any]]) -> AsyncIterator[tuple[HostileApi, str]]:
    api = HostileApi(records)
    async with serve_app(api.app(), WebhookConfig()) as (host, port):
        yield api, f"http://{host}:{port}"


def stamped(record: dict[str, Any], second: int) -> dict[str, Any]:
    return {**record, "updatedAt": f"2024-01-15T10:30:{second:02d}.000Z"}


@pytest.mark.parametrize("kind", list(ALL_KINDS))
async def test_poison_in_a_listing_page_costs_only_itself(tmp_path: Path, kind: str) -> None:
    poison = ALL_KINDS[kind]
    db = tmp_path / "mirror.db"
    store = Store(db)
    apply_batch(store, [parse_record("orders", stamped(order(100), 1), "poll")], synced_at=format_epoch())
    store.close()
    # Page size 2: the poison shares a page with a good record, and good pages follow.
    records = [
        stamped(order(1), 10),
        stamped(poison.make(2), 11),
        stamped(order(3), 12),
        stamped(order(4), 13),
    ]
    async with hostile_api(records) as (api, url):
        cfg = make_config(url, db, page_size=2)
        writer = Writer(lambda: Store(db))
        writer.start()
        client = PetstoreClient(url, "test-key", timeout=5)
        try:
            poller = Poller(client, writer, cfg)
            result = await poller.poll("orders")
            assert result.pages == 2
            for rid in (100, 1, 3, 4):
                assert mirror_row(db, rid) is not None, rid
            assert_outcome(db, poison, 2)
            # Every record the cursor passed is mirrored or a dead letter, so it may pass them all.
            assert cursor_of(db, "orders") == "2024-01-15T10:30:13.000Z"
            assert result.counts["invalid"] == (0 if poison.columns is not None else 1)
            # The next poll is not refused, and a later change is mirrored.
            api.records.append(stamped(order(5), 20))
            await poller.poll("orders")
            assert mirror_row(db, 5) is not None
            assert len(dead_letters(db)) == (0 if poison.columns is not None else 1)
            if poison.columns is None:
                # The letter keeps the record and its resource, and replay re-applies it.
                (source, resource, _, _, body) = dead_letters(db)[0]
                assert (source, resource) == ("poll", "orders")
                assert json.loads(body)["updatedAt"] == records[1]["updatedAt"]
                results = await replay_dead_letters(writer, None, fetch_thin=False)
                assert [r.outcome for r in results] == ["invalid"]
        finally:
            await client.aclose()
            writer.stop()


async def test_a_poll_dead_letter_replays_once_it_can_be_stored(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    records = [stamped(order(1), 10), stamped(order(2, **{f"f{i}": i for i in range(10)}), 11)]
    async with hostile_api(records) as (_, url):
        cfg = make_config(url, db)
        writer = Writer(lambda: Store(db))
        writer.start()
        client = PetstoreClient(url, "test-key", timeout=5)
        try:
            # A tighter column limit than SQLite's default makes the ten new fields too many.
            writer.call(lambda store: store.conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, 20))
            await Poller(client, writer, cfg).poll("orders")
            assert mirror_row(db, 1) is not None
            assert mirror_row(db, 2) is None
            assert collect_status(cfg)["dead_letters"]["open"] == 1
            writer.call(lambda store: store.conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, COLUMN_LIMIT))
            results = await replay_dead_letters(writer, None, fetch_thin=False)
            assert [r.outcome for r in results] == ["applied"]
            row = mirror_row(db, 2)
            assert row is not None
            assert (row["_source"], row["f9"]) == ("poll", 9)
            assert collect_status(cfg)["dead_letters"]["open"] == 0
            assert await replay_dead_letters(writer, None, fetch_thin=False) == []
        finally:
            await client.aclose()
            writer.stop()


def test_status_and_replay_commands_show_a_poll_dead_letter(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"

    async def poll_once() -> str:
        # The id is shown in the reason: markup and terminal escapes must come out inert.
        hostile = [
            stamped(order(1), 10),
            stamped(order(2**63), 11),
            stamped(order("[red]\x1b[2J", 2**63), 12),
        ]
        async with hostile_api(hostile) as (_, url):
            writer = Writer(lambda: Store(db))
            writer.start()
            client = PetstoreClient(url, "test-key", timeout=5)
            try:
                await Poller(client, writer, make_config(url, db)).poll("orders")
            finally:
                await client.aclose()
                writer.stop()
            return url

    url = asyncio.run(poll_once())
    # Replaying a listed record re-applies it; the API (gone by now) is not asked.
    config = write_config_file(tmp_path / "syncd.toml", url, db)
    env = {"SYNCD_TEST_API_KEY": "test-key", "COLUMNS": "240"}
    status = CliRunner(env=env).invoke(main, ["status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert "2 (2 open)" in status.output
    assert "id 9223372036854775808 is outside the 64-bit integer range" in status.output
    assert "[red]\\x1b[2J" in status.output
    assert "\x1b" not in status.output
    replay = CliRunner(env=env).invoke(main, ["replay", "--config", str(config), "--all"])
    assert replay.exit_code == 0, replay.output
    assert "orders record 9223372036854775808: invalid" in replay.output
    assert "0 replayed, 2 still dead letters" in replay.output
    assert "orders record [red]\\x1b[2J: invalid" in replay.output
    assert "\x1b" not in replay.output
    assert mirror_row(db, 1) is not None


async def test_a_relist_does_not_tombstone_a_record_whose_listed_copy_is_a_dead_letter(
    tmp_path: Path,
) -> None:
    db = tmp_path / "mirror.db"
    store = Store(db)
    apply_batch(
        store,
        [parse_record("orders", stamped(order(rid), 1), "poll") for rid in (1, 2, 3, 4)],
        synced_at=format_epoch(),
    )
    store.close()
    # Record 2 comes back at a version SQLite cannot hold, 3 with too many fields; 4 is gone.
    too_wide = {f"f{i}": i for i in range(COLUMN_LIMIT)}
    records = [
        stamped(order(1), 10),
        stamped(order(2, version=2**63), 11),
        stamped(order(3, version=2, **too_wide), 12),
    ]
    async with hostile_api(records) as (_, url):
        writer = Writer(lambda: Store(db))
        writer.start()
        client = PetstoreClient(url, "test-key", timeout=5)
        try:
            # An hour on: the stored copies are past the visibility window that spares them.
            later = time.time() + 3600
            result = await Poller(client, writer, make_config(url, db), clock=lambda: later).full_relist(
                "orders"
            )
        finally:
            await client.aclose()
            writer.stop()
    assert result.tombstoned == 1
    rows = {
        rid: (version, deleted)
        for rid, version, deleted in read_rows(db, "SELECT id, _version, _deleted FROM orders")
    }
    assert rows == {1: (1, 0), 2: (1, 0), 3: (1, 0), 4: (1, 1)}
    assert len(dead_letters(db)) == 2


def read_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = Store.open_reader(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
