"""Soak: many webhook events through a running daemon. Memory stays flat after warm-up, the
inbox drains, and event ids and audit rows are pruned as configured. CI runs
SYNCD_SOAK_EVENTS (default 20,000); bench/bench_soak.py runs 1,000,000."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.e2e.conftest import DaemonProcess, SimProcess, wait_until
from tests.e2e.soak import SOAK_SECTIONS, count, run_soak

EVENTS = int(os.environ.get("SYNCD_SOAK_EVENTS", "20000"))

pytestmark = pytest.mark.slow


def test_soak_memory_flat_inbox_drains_retention_prunes(
    start_sim: Callable[..., SimProcess], start_daemon: Callable[..., DaemonProcess]
) -> None:
    sim = start_sim("--rate", "0", "--preload-inventory", "0")
    daemon = start_daemon(sim, **SOAK_SECTIONS)
    result = run_soak(daemon, EVENTS)
    print(
        f"soak: {result.acked} events acked at {result.rate:.0f}/s; RSS after warm-up "
        f"{result.rss_after_warmup / 2**20:.1f} MiB, end {result.rss_end / 2**20:.1f} MiB, "
        f"growth {result.growth / 2**20:+.1f} MiB"
    )
    assert result.acked == EVENTS
    assert result.growth < 20 * 2**20, f"RSS grew {result.growth / 2**20:.1f} MiB after warm-up"

    db = daemon.workdir / "mirror.db"
    # Every event landed in the mirror: 1,000 order ids, each at its last version.
    expected_versions = -(-EVENTS // 1000)
    assert count(db, "SELECT COUNT(*) FROM orders") == 1000
    assert count(db, "SELECT MAX(_version) FROM orders") == expected_versions
    # Retention is 5 s for both event ids and audit rows: with no new traffic, both empty out.
    wait_until(
        lambda: count(db, "SELECT COUNT(*) FROM _events") == 0, 60, interval=0.5, what="_events pruned"
    )
    wait_until(lambda: count(db, "SELECT COUNT(*) FROM _audit") == 0, 60, interval=0.5, what="_audit pruned")
