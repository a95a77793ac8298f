"""The inbox worker draining a backlog alone (no daemon), and the levers tried on it.
Prints JSON.

    PYTHONPATH=bench .venv/bin/python bench/bench_drain.py [--deliveries 50000] [--rounds 3]

A store file is filled with --deliveries acknowledged deliveries (bench_receiver's bodies,
committed as the receiver commits them), then drained by `InboxWorker.drain`, interleaved
rounds of:
- worker:    the worker as it is (batches of 500, parse then commit);
- batch5000: the same with batches of 5,000 (a tenth of the synced commits);
- pipelined: the next batch loaded and parsed while the writer commits this one (not how
             the worker runs: the what-if the numbers below answer).
Then `settle_inbox`'s two statements timed apart over the same backlog with 300,000
applied events already in `_events`, and the range DELETE that could replace the per-row
one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_receiver import body_for, figure

from syncd.push import inbox_worker
from syncd.push.inbox import Delivery, commit_deliveries
from syncd.store.db import Store
from syncd.store.writer import Writer

SETTLE = (
    "INSERT INTO _events (event_id, event_type, resource, record_id, version, outcome,"
    " processed_at, first_seen, last_seen, deliveries)"
    " SELECT event_id, COALESCE(?, event_type), COALESCE(?, resource), ?, ?, ?, ?,"
    " received_at, last_seen, deliveries FROM _inbox WHERE seq = ? AND true"
    " ON CONFLICT (event_id) DO UPDATE SET outcome=excluded.outcome"
)


def filled(path: Path, n: int, prefix: str) -> None:
    store = Store(path)
    now = time.time()
    deliveries = [
        Delivery(f"evt_{prefix}_{i}", now, "127.0.0.1", {"content-type": "application/json"},
                 body_for(i, prefix), "order.created")
        for i in range(n)
    ]  # fmt: skip
    for start in range(0, n, 1000):
        commit_deliveries(store, deliveries[start : start + 1000])
    store.close()


async def pipelined(worker: inbox_worker.InboxWorker, writer: Writer, batch: int) -> None:
    processor = worker._processor
    rows = await writer.run(inbox_worker.load_inbox, 0, batch)
    settled = await processor.prepare(rows) if rows else []
    while rows:
        following = asyncio.wrap_future(writer.submit(inbox_worker.load_inbox, rows[-1].seq or 0, batch))
        commit = asyncio.wrap_future(writer.submit(inbox_worker.commit_outcomes, settled, time.time()))
        rows = await following
        upcoming = await processor.prepare(rows) if rows else []
        await commit
        settled = upcoming


def drain(path: Path, kind: str) -> float:
    async def run() -> float:
        writer = Writer(lambda: Store(path))
        writer.start()
        batch = 5000 if kind == "batch5000" else 500
        worker = inbox_worker.InboxWorker(writer, None, fetch_thin=False, batch=batch)
        started = time.perf_counter()
        if kind == "pipelined":
            await pipelined(worker, writer, batch)
        else:
            await worker.drain()
        seconds = time.perf_counter() - started
        writer.stop()
        return seconds

    return asyncio.run(run())


def settle_split(path: Path, n: int) -> dict[str, float]:
    store = Store(path)
    with store.db.atomic():
        store.conn.executemany(
            "INSERT INTO _events (event_id, outcome, first_seen, last_seen, processed_at)"
            " VALUES (?, 'applied', 1, 1, 1)",
            [(f"evt_old_{i}",) for i in range(300_000)],
        )
    seqs = [r[0] for r in store.conn.execute("SELECT seq FROM _inbox ORDER BY seq")]
    insert = each = ranged = 0.0
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        rows = [("order.created", "orders", str(q), 1, "applied", 5.0, q) for q in chunk]
        with store.db.atomic():
            t0 = time.perf_counter()
            store.conn.executemany(SETTLE, rows)
            t1 = time.perf_counter()
            if start // 500 % 2:
                store.conn.execute("DELETE FROM _inbox WHERE seq BETWEEN ? AND ?", (chunk[0], chunk[-1]))
                ranged += time.perf_counter() - t1
            else:
                store.conn.executemany("DELETE FROM _inbox WHERE seq=?", [(q,) for q in chunk])
                each += time.perf_counter() - t1
            insert += t1 - t0
    store.close()
    half = n / 2
    return {"insert": insert / n * 1e6, "delete_each": each / half * 1e6, "delete_range": ranged / half * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deliveries", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.deliveries
    rates: dict[str, list[float]] = {"worker": [], "batch5000": [], "pipelined": []}
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        for r in range(args.rounds):
            kinds = list(rates) if r % 2 == 0 else list(rates)[::-1]
            for kind in kinds:
                path = Path(tmp) / f"{kind}{r}.db"
                filled(path, n, f"{kind}{r}")
                rates[kind].append(n / drain(path, kind))
                path.unlink()
        path = Path(tmp) / "settle.db"
        filled(path, n, "settle")
        split = settle_split(path, n)
    med = {k: statistics.median(v) for k, v in rates.items()}
    figures: list[dict[str, Any]] = [
        figure("worker alone: changes/s draining the backlog", med["worker"], "changes/s",
               target=">= 100,000 changes/s", met=med["worker"] >= 100_000),
        figure("batches of 5,000", med["batch5000"], "changes/s", baseline="worker", baseline_value=med["worker"]),
        figure("next batch parsed while this one commits", med["pipelined"], "changes/s", baseline="worker",
               baseline_value=med["worker"]),
        figure("settle_inbox: _events row, per delivery", split["insert"], "us"),
        figure("settle_inbox: per-row _inbox DELETE, per delivery", split["delete_each"], "us"),
        figure("a range DELETE instead, per delivery", split["delete_range"], "us", baseline="per-row DELETE",
               baseline_value=split["delete_each"]),
    ]  # fmt: skip
    notes = [
        f"{n} deliveries per drain, {args.rounds} interleaved rounds, medians; rounds: "
        + "; ".join(f"{k} " + ", ".join(f"{v:.0f}" for v in vs) for k, vs in rates.items()),
    ]
    print(json.dumps({"name": "inbox drain (worker alone)", "figures": figures, "notes": notes}))


if __name__ == "__main__":
    main()
