"""Apply with the change log on and off, two source trees of syncd against each other in the
same run: a before/after that holds on a loaded machine.

Each measurement is a fresh process with one tree first on `PYTHONPATH` (its `syncd` and its
`bench/`): a warm-up of 5,000 orders, then bench_feed's `apply_phases` (inserts, updates,
duplicates of `--records` orders in batches of 1000) on a fresh file, under the collector
settings `syncd run` applies with unless `--collector default`. Rounds interleave every
(tree, log on/off) pair, rotated so none always runs first.

    python bench/compare_trees.py /path/to/before /path/to/after --rounds 12

Prints one JSON line: CPU us per change, medians over the rounds, per tree, log and phase,
and each tree's median of the rounds' off/on ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PHASES = ("inserts", "updates", "duplicates")

_CHILD = r"""
import contextlib, json, sys, tempfile
from pathlib import Path
import syncd, bench_feed
from syncd.heap import serving_heap
tree, records, log, collector = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on", sys.argv[4]
if not syncd.__file__.startswith(tree):
    raise SystemExit(f"imported {syncd.__file__}, not the tree {tree}")
heap = serving_heap() if collector == "daemon" else contextlib.nullcontext()
with tempfile.TemporaryDirectory() as tmp, heap:
    bench_feed.apply_phases(Path(tmp) / "warm.db", 5000, record=log)
    out = bench_feed.apply_phases(Path(tmp) / "apply.db", records, record=log)
print(json.dumps({phase: clocks.cpu for phase, clocks in out.items()}))
"""


def measure(tree: str, records: int, log: str, collector: str) -> dict[str, float]:
    tree = os.path.abspath(tree)
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{os.path.join(tree, 'bench')}")
    with tempfile.TemporaryDirectory() as cwd:  # nothing of the caller's directory on sys.path
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, tree, str(records), log, collector],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
    return {phase: cpu / records * 1e6 for phase, cpu in json.loads(done.stdout).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--collector", choices=("daemon", "default"), default="daemon")
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    sides = [(name, log) for name in trees for log in ("on", "off")]
    us: dict[tuple[str, str, str], list[float]] = {}
    load_start = os.getloadavg()
    for r in range(args.rounds):
        k = r % len(sides)
        for name, log in sides[k:] + sides[:k]:
            for phase, value in measure(trees[name], args.records, log, args.collector).items():
                us.setdefault((name, log, phase), []).append(value)
    result: dict[str, object] = {
        "name": "apply, two trees",
        "unit": "CPU us per change",
        "rounds": args.rounds,
        "collector": args.collector,
        "load_average": {"start": load_start, "end": os.getloadavg()},
    }
    for name, tree in trees.items():
        figures: dict[str, object] = {"tree": os.path.abspath(tree)}
        for phase in PHASES:
            on, off = us[(name, "on", phase)], us[(name, "off", phase)]
            figures[phase] = {
                "on": round(statistics.median(on), 2),
                "off": round(statistics.median(off), 2),
                "off_over_on": round(statistics.median(x / o for o, x in zip(on, off, strict=True)), 3),
            }
        result[name] = figures
    print(json.dumps(result))


if __name__ == "__main__":
    main()
