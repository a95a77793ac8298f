"""Reading the change log by resource, the way `syncd changes --resource` and a sink's reads
do (`changelog.read_after` in batches of 1000, from seq 0 to the head), against reading the
same log without the filter, in the same run: the filtered read should cost what the plain
one does, whatever the log's size, not grow with the square of a resource's changes.

The log: `--updates` rounds of bench_apply's 20,000 orders (one change each per round) and
2,000 customers, written by apply_batch with the log on. Interleaved rounds, CPU seconds,
medians.

Prints one JSON line: {"name": "change log reads by resource", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_apply import BATCH, changes

from syncd.core.records import Change
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.timefmt import format_epoch

ORDERS = 20_000
CUSTOMERS = 2_000


def fill(store: Store, rounds: int) -> None:
    for version in range(1, rounds + 1):
        items = changes(range(ORDERS), version)
        for start in range(0, ORDERS, BATCH):
            apply_batch(store, items[start : start + BATCH], synced_at=format_epoch())
    customers = [
        Change(
            "customers",
            f"cus_{i}",
            1,
            "2024-01-15T10:00:00.000Z",
            {
                "id": f"cus_{i}",
                "email": f"c{i}@example.com",
                "version": 1,
                "updatedAt": "2024-01-15T10:00:00.000Z",
            },
            "poll",
        )
        for i in range(CUSTOMERS)
    ]
    for start in range(0, CUSTOMERS, BATCH):
        apply_batch(store, customers[start : start + BATCH], synced_at=format_epoch())


def read_all(store: Store, resources: list[str] | None) -> tuple[int, float]:
    seq = count = 0
    started = time.process_time()
    while True:
        batch = changelog.read_after(store.conn, seq, 1000, resources=resources)
        count += len(batch)
        if len(batch) < 1000:
            return count, time.process_time() - started
        seq = batch[-1].seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=9, help="rounds of 20,000 order changes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-changes-read-") as tmp:
        store = Store(Path(tmp) / "mirror.db")
        try:
            fill(store, args.updates)
            seconds: dict[str, list[float]] = {"all": [], "orders": [], "customers": []}
            counts: dict[str, int] = {}
            sides = list(seconds)
            for r in range(args.rounds):
                k = r % len(sides)
                for side in sides[k:] + sides[:k]:
                    counts[side], cpu = read_all(store, None if side == "all" else [side])
                    seconds[side].append(cpu)
        finally:
            store.close()
    medians = {side: statistics.median(values) for side, values in seconds.items()}
    print(
        json.dumps(
            {
                "name": "change log reads by resource",
                "unit": "CPU s to read from seq 0 to the head",
                "changes": counts,
                "medians": {side: round(value, 3) for side, value in medians.items()},
                "orders_over_all": round(medians["orders"] / medians["all"], 2),
                "rounds": {side: [round(v, 3) for v in values] for side, values in seconds.items()},
                "load_average": {"start": load_start, "end": os.getloadavg()},
            }
        )
    )


if __name__ == "__main__":
    main()
