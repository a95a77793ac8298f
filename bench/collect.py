"""Run every benchmark script, print one table, rewrite bench/RESULTS.md.

Each script prints, as the last line of its stdout, one JSON object:
    {"name": str, "figures": [{"metric": str, "value": float, "unit": str,
      "baseline": str | null, "baseline_value": float | null, "ratio": float | null,
      "target": str | null, "met": bool | null}], "notes": [str]}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: (script, full-size arguments, quick arguments)
BENCHES: list[tuple[str, list[str], list[str]]] = [
    ("bench_apply.py", [], ["--quick"]),
    ("bench_initial_sync.py", [], ["--quick"]),
    ("bench_receiver.py", [], ["--quick"]),
    ("bench_soak.py", [], ["--quick"]),
]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def run_one(script: str, args: list[str]) -> dict[str, Any]:
    path = HERE / script
    if not path.exists():
        return {"name": script, "figures": [], "notes": [f"{script} is missing"]}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, cwd=HERE.parent, check=False
    )
    elapsed = time.monotonic() - started
    sys.stderr.write(proc.stderr[-4000:])
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {
            "name": script,
            "figures": [],
            "notes": [
                f"{script} failed (exit {proc.returncode}) after {elapsed:.0f}s: {proc.stderr.strip()[-300:]}"
            ],
        }
    result.setdefault("notes", []).append(f"took {elapsed:.0f}s")
    return result


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmark results",
        "",
        f"- Date: {today}",
        f"- Machine: {machine()}",
        f"- Command: `bench/run{' --quick' if args.quick else ''}`",
        "",
        "Every figure is measured together with its baseline in the same run; the ratio is",
        "figure / baseline (for latencies and memory, lower is better and the ratio says so).",
        "",
        "| benchmark | metric | value | baseline | baseline value | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for f in res.get("figures", []):
            met = f.get("met")
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    res["name"],
                    f["metric"],
                    fmt(f.get("value"), f.get("unit", "")),
                    f.get("baseline") or "-",
                    fmt(f.get("baseline_value"), f.get("unit", "")),
                    "-" if f.get("ratio") is None else f"{f['ratio']:.2f}x",
                    f.get("target") or "-",
                    "-" if met is None else ("yes" if met else "**no**"),
                )
            )
    out.append("")
    for res in results:
        if res.get("notes"):
            out.append(f"## {res['name']}")
            out.extend(f"- {n}" for n in res["notes"])
            out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: checks the harness, not the targets"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run only scripts whose name contains this"
    )
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    results = []
    for script, full, quick in BENCHES:
        if args.only and not any(o in script for o in args.only):
            continue
        print(f"== {script}", file=sys.stderr, flush=True)
        results.append(run_one(script, quick if args.quick else full))
    text = render(results, args)
    print(text)
    if not args.only:
        Path(args.output).write_text(text + "\n")
        print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
