"""The soak driver, shared by tests/e2e/test_soak.py (CI size) and bench/bench_soak.py
(1,000,000 events): signed unique deliveries through a running `syncd run`, the daemon's RSS
sampled after warm-up and as events pass, and the inbox watched until it drains."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from syncd.sim.loadgen import send
from tests.e2e.conftest import WEBHOOK_SECRET, DaemonProcess, wait_until

#: Settings a soak daemon runs with: retention short enough to watch pruning happen.
SOAK_SECTIONS = {
    "webhook": {"rate_limit": "1000000/s", "dedupe_retention": "5s", "audit_retention": "5s"},
    "poll": {"interval": "30s", "safety_interval": "10m", "jitter": "0s"},
    "fallback": {"silence": "10m"},
}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


@dataclass
class SoakResult:
    events: int
    acked: int = 0
    seconds: float = 0.0
    rss_after_warmup: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)
    """(events sent so far, RSS bytes)"""

    @property
    def growth(self) -> int:
        return self.rss_end - self.rss_after_warmup

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0


def inbox_drained(db: Path, timeout: float) -> None:
    wait_until(
        lambda: count(db, "SELECT COUNT(*) FROM _inbox") == 0,
        timeout,
        interval=0.2,
        what="the inbox to drain",
    )


def run_soak(daemon: DaemonProcess, events: int, *, chunks: int = 20, concurrency: int = 32) -> SoakResult:
    assert daemon.webhook_url is not None
    db = daemon.workdir / "mirror.db"
    result = SoakResult(events)
    warmup = max(events // 10, 2_000)
    first = asyncio.run(send(daemon.webhook_url, WEBHOOK_SECRET, warmup, concurrency=concurrency))
    inbox_drained(db, 120)
    result.rss_after_warmup = rss_bytes(daemon.pid)
    result.acked = first.acked
    sent = warmup
    step = max((events - warmup) // chunks, 1)
    began = time.monotonic()
    while sent < events:
        n = min(step, events - sent)
        part = asyncio.run(send(daemon.webhook_url, WEBHOOK_SECRET, n, start=sent, concurrency=concurrency))
        result.acked += part.acked
        sent += n
        rss = rss_bytes(daemon.pid)
        result.samples.append((sent, rss))
        result.rss_peak = max(result.rss_peak, rss)
    result.seconds = time.monotonic() - began
    inbox_drained(db, 300)
    result.rss_end = rss_bytes(daemon.pid)
    result.rss_peak = max(result.rss_peak, result.rss_end)
    return result
