"""What `syncd demo` reports: the mirror against ground truth, change-to-mirror latency,
`syncd verify`'s verdict, and the push/poll comparison table."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from syncd.contract import RESOURCES as MIRROR_RESOURCES
from syncd.timefmt import to_epoch as parse_iso


@dataclass
class RunResult:
    mode: str
    db: Path
    changes: int
    api_requests: int
    bytes_received: int
    latencies: list[float]
    drift: dict[str, dict[str, int]]
    verify_exit: int | None
    verify_report: dict[str, Any] | None
    events_delivered: int
    notes: list[str] = field(default_factory=list)

    @property
    def total_drift(self) -> int:
        return sum(sum(v.values()) for v in self.drift.values())


def drift(truth: dict[str, dict[str, int]], db: Path) -> dict[str, dict[str, int]]:
    """missing / stale / extra per resource, mirror against the simulator's ground truth."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[str, dict[str, int]] = {}
        for r in MIRROR_RESOURCES:
            mirror = {
                str(rid): v for rid, v in conn.execute(f"SELECT id, _version FROM {r} WHERE _deleted = 0")
            }
            want = truth.get(r, {})
            out[r] = {
                "missing": sum(1 for k in want if k not in mirror),
                "stale": sum(1 for k, v in want.items() if k in mirror and mirror[k] < v),
                "extra": sum(1 for k in mirror if k not in want),
            }
        return out
    finally:
        conn.close()


def latencies(db: Path, since: float) -> list[float]:
    """Change-to-mirror latency of the last version of every record changed since `since`:
    when the daemon wrote it minus the upstream's updatedAt (both from this machine's clock)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = []
        for r in MIRROR_RESOURCES:
            for updated, synced in conn.execute(
                f"SELECT updatedAt, _synced_at FROM {r} WHERE _synced_at IS NOT NULL"
            ):
                if updated and synced and parse_iso(updated) >= since:
                    out.append(max(0.0, parse_iso(synced) - parse_iso(updated)))
        return out
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdict(result: RunResult) -> Table:
    """`syncd verify`'s report per resource (mirror against a full listing of the API), and
    beside it the check against the simulator's ground truth."""
    table = Table(title=f"Verdict ({result.mode} mode): syncd verify, mirror against a full listing")
    for col in ("resource", "listed", "mirror", "missing", "stale", "extra", "verify", "ground truth"):
        table.add_column(col, justify="left" if col in ("resource", "verify", "ground truth") else "right")
    reports = (result.verify_report or {}).get("resources", {})
    for r, d in result.drift.items():
        rep = reports.get(r)
        truth_ok = not sum(d.values())
        truth = "[green]matches[/]" if truth_ok else f"[red]drift ({sum(d.values())})[/]"
        if rep is None:
            table.add_row(r, "-", "-", "-", "-", "-", "[red]no report[/]", truth)
            continue
        table.add_row(
            r,
            str(rep["listed"]),
            str(rep["mirror_live"]),
            str(rep["missing"]["count"]),
            str(rep["stale"]["count"]),
            str(rep["extra"]["count"]),
            "[green]matches[/]" if rep["ok"] else "[red]drift[/]",
            truth,
        )
    return table


def compare_table(push: RunResult, poll: RunResult) -> Table:
    table = Table(title="push (webhooks + safety poll) versus poll-only, same seeded workload")
    table.add_column("measure")
    table.add_column("push", justify="right")
    table.add_column("poll", justify="right")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    rows = [
        ("changes made upstream", str(push.changes), str(poll.changes)),
        ("API requests made", str(push.api_requests), str(poll.api_requests)),
        (
            "requests per change",
            f"{push.api_requests / max(push.changes, 1):.3f}",
            f"{poll.api_requests / max(poll.changes, 1):.3f}",
        ),
        ("webhook deliveries received", str(push.events_delivered), str(poll.events_delivered)),
        ("bytes transferred to syncd", f"{push.bytes_received:,}", f"{poll.bytes_received:,}"),
        ("change-to-mirror p50", ms(percentile(push.latencies, 0.5)), ms(percentile(poll.latencies, 0.5))),
        ("change-to-mirror p99", ms(percentile(push.latencies, 0.99)), ms(percentile(poll.latencies, 0.99))),
        (
            "change-to-mirror max",
            ms(max(push.latencies, default=None)),
            ms(max(poll.latencies, default=None)),
        ),
        ("final drift (records)", str(push.total_drift), str(poll.total_drift)),
    ]
    for row in rows:
        table.add_row(*row)
    return table
