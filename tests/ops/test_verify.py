"""`syncd verify` and `syncd resync` through click, against the simulator and a real store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina
from click.testing import CliRunner, Result

from syncd.cli import main
from syncd.sim.config import SimConfig
from syncd.sim.server import SimHandle, running_simulator
from syncd.store.db import Store
from syncd.store.writer import Writer
from tests.poll_helpers import mirror_versions, write_config_file

ENV = {"SYNCD_TEST_API_KEY": "test-key"}


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with running_simulator(
        SimConfig(seed=7, rate=0, max_lag=0, preload_orders=120, preload_customers=30)
    ) as s:
        yield s


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=ENV, catch_exceptions=False)


def _edit(path: Path, sql: str, *params: object) -> None:
    def job(store: Store) -> None:
        with store.db.atomic():
            store.conn.execute(sql, params)

    w = Writer(lambda: Store(path))
    w.start()
    try:
        w.call(job)
    finally:
        w.stop()


def test_resync_then_verify_matches(sim: SimHandle, tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    config = write_config_file(tmp_path / "syncd.toml", sim.base_url, db, page_size=40)
    synced = invoke("resync", "--config", str(config))
    assert synced.exit_code == 0, synced.output
    assert "orders: done: 120 listed in 3 pages, 120 written" in synced.output
    assert mirror_versions(db, "orders") == sim.truth("orders")["orders"]

    checked = invoke("verify", "--config", str(config))
    assert checked.exit_code == 0, checked.output
    assert "orders: 120 listed, 120 live in the mirror: OK" in checked.output


def test_verify_reports_missing_stale_extra_and_ahead(sim: SimHandle, tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    config = write_config_file(tmp_path / "syncd.toml", sim.base_url, db)
    assert invoke("resync", "orders", "--config", str(config)).exit_code == 0
    _edit(db, "DELETE FROM orders WHERE id IN (1, 2)")
    _edit(db, "UPDATE orders SET _version = 0 WHERE id = 3")
    _edit(db, "UPDATE orders SET _version = _version + 5 WHERE id = 4")
    _edit(db, "INSERT INTO orders (id, _version) VALUES (999999, 1)")

    result = invoke("verify", "--config", str(config), "--resource", "orders", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    orders = report["resources"]["orders"]
    assert report["ok"] is False
    assert orders["missing"] == {"count": 2, "sample": [1, 2]}
    assert orders["stale"] == {"count": 1, "sample": [3]}
    assert orders["extra"] == {"count": 1, "sample": [999999]}
    assert orders["ahead"] == {"count": 1, "sample": [4]}

    text = invoke("verify", "--config", str(config), "--resource", "orders")
    assert text.exit_code == 1
    assert "orders: 120 listed, 119 live in the mirror: DRIFT" in text.output
    assert "missing: 2" in text.output
    assert "ahead: 1 (mirror newer than the listing: listing lag, not drift)" in text.output


def test_ahead_alone_is_not_drift(sim: SimHandle, tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    config = write_config_file(tmp_path / "syncd.toml", sim.base_url, db)
    assert invoke("resync", "customers", "--config", str(config)).exit_code == 0
    _edit(db, "UPDATE customers SET _version = _version + 1 WHERE rowid = 1")
    result = invoke("verify", "--config", str(config), "--resource", "customers", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["resources"]["customers"]["ahead"]["count"] == 1


def test_verify_without_a_store_fails_clearly(sim: SimHandle, tmp_path: Path) -> None:
    config = write_config_file(tmp_path / "syncd.toml", sim.base_url, tmp_path / "none.db")
    result = CliRunner().invoke(main, ["verify", "--config", str(config)], env=ENV)
    assert result.exit_code == 1
    assert "no store at" in result.output


def test_resync_with_a_refused_key_exits_1(sim: SimHandle, tmp_path: Path) -> None:
    config = write_config_file(tmp_path / "syncd.toml", sim.base_url, tmp_path / "m.db")
    result = CliRunner().invoke(
        main, ["resync", "orders", "--config", str(config)], env={"SYNCD_TEST_API_KEY": "wrong"}
    )
    assert result.exit_code == 1
    assert "HTTP 401" in result.output


async def test_verify_tolerates_writes_racing_the_listing(tmp_path: Path) -> None:
    # A record changed while verify lists it can show up twice; its newer version counts.
    db = tmp_path / "mirror.db"
    with running_simulator(SimConfig(seed=8, rate=300, max_lag=0, preload_orders=400)) as s:
        config = write_config_file(tmp_path / "syncd.toml", s.base_url, db, page_size=20)
        await asyncio.sleep(0.3)
        s.control({"action": "pause_workload"})
        time.sleep(0.05)
        synced = await asyncio.to_thread(invoke, "resync", "--config", str(config))
        assert synced.exit_code == 0, synced.output
        checked = await asyncio.to_thread(invoke, "verify", "--config", str(config), "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["ok"] is True
