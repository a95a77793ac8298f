"""Run every benchmark script, print one table, rewrite bench/RESULTS.md.

`collect.py GROUP` runs only that group's scripts (GROUPS) and replaces only their rows and
notes. Sections written by hand (anything under a `## ` heading that is not a bullet list
of a benchmark's notes) are kept at the end by every rewrite.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: (script, full-size arguments, quick arguments)
BENCHES: list[tuple[str, list[str], list[str]]] = [
    ("bench_apply.py", [], ["--quick"]),
    ("bench_initial_sync.py", [], ["--quick"]),
    ("bench_receiver.py", [], ["--quick"]),
    ("bench_ack_path.py", [], ["--quick"]),
    ("bench_soak.py", [], ["--quick"]),
    ("bench_feed.py", [], ["--quick"]),
    ("bench_feed_latency.py", [], ["--quick"]),
    ("bench_nats.py", [], ["--quick"]),
]

#: `bench/run NAME`: only these scripts run, and RESULTS.md keeps every other benchmark's
#: figures from the last full run.
GROUPS: dict[str, list[str]] = {
    "feed": ["bench_feed.py", "bench_feed_latency.py"],
    "nats": ["bench_nats.py"],
    "ack": ["bench_receiver.py", "bench_ack_path.py"],
}


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


def table_rows(res: dict[str, Any]) -> list[str]:
    rows = []
    for f in res.get("figures", []):
        met = f.get("met")
        rows.append(
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
    return rows


def notes_section(res: dict[str, Any]) -> list[str]:
    if not res.get("notes"):
        return []
    return [f"## {res['name']}", *(f"- {n}" for n in res["notes"]), ""]


@dataclass
class Previous:
    """What an earlier RESULTS.md holds: its header's bullet lines, its table rows by
    benchmark (in order), and its `## ` sections by heading (in order)."""

    header: list[str] = field(default_factory=list)
    rows: dict[str, list[str]] = field(default_factory=dict)
    sections: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Previous:
        prev = cls()
        if not path.exists():
            return prev
        heading: str | None = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                heading = line[3:].strip()
                prev.sections[heading] = [line]
            elif heading is not None:
                prev.sections[heading].append(line)
            elif line.startswith("| ") and not line.startswith("| benchmark |"):
                prev.rows.setdefault(line[2:].split(" | ", 1)[0], []).append(line)
            elif line.startswith("- ") and not prev.rows:
                prev.header.append(line)
        return prev

    def is_notes(self, heading: str) -> bool:
        """Whether a section is a benchmark's notes (a bullet list under its name), not one
        written by hand (measurements made outside bench/run)."""
        lines = self.sections[heading][1:]
        return heading in self.rows or all(not line or line.startswith("- ") for line in lines)

    def hand_written(self) -> list[str]:
        """The hand-written sections: every rewrite keeps them, at the end."""
        return [line for name, lines in self.sections.items() if not self.is_notes(name) for line in lines]


TABLE_HEAD = [
    "Every figure is measured together with its baseline in the same run; the ratio is",
    "figure / baseline (for latencies and memory, lower is better and the ratio says so).",
    "",
    "| benchmark | metric | value | baseline | baseline value | ratio | target | met |",
    "|---|---|---|---|---|---|---|---|",
]


def render(results: list[dict[str, Any]], args: argparse.Namespace, prev: Previous) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# Benchmark results", ""]
    rows: dict[str, list[str]] = {}
    sections: dict[str, list[str]] = {}
    if args.group:
        # Only the group's benchmarks ran: theirs replace their rows and notes in place, the
        # rest stay as the last full run left them.
        command = f"bench/run {args.group}{' --quick' if args.quick else ''}"
        header = [line for line in prev.header if not line.startswith(f"- Re-run: `bench/run {args.group}")]
        out += [
            *header,
            f"- Re-run: `{command}` on {today}, {machine()}, for {', '.join(r['name'] for r in results)}",
        ]
        rows = {name: lines for name, lines in prev.rows.items()}
        sections = {name: lines for name, lines in prev.sections.items() if prev.is_notes(name)}
    else:
        out += [
            f"- Date: {today}",
            f"- Machine: {machine()}",
            f"- Command: `bench/run{' --quick' if args.quick else ''}`",
        ]
    for res in results:
        rows[res["name"]] = table_rows(res)
        sections[res["name"]] = notes_section(res)
    out += ["", *TABLE_HEAD]
    out += [line for lines in rows.values() for line in lines]
    out.append("")
    out += [line for lines in sections.values() for line in lines]
    out += prev.hand_written()
    while out[-1] == "":
        out.pop()
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", nargs="?", choices=sorted(GROUPS), help="run only this group's benchmarks")
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
        if args.group and script not in GROUPS[args.group]:
            continue
        print(f"== {script}", file=sys.stderr, flush=True)
        results.append(run_one(script, quick if args.quick else full))
    text = render(results, args, Previous.read(Path(args.output)))
    print(text)
    if not args.only:
        Path(args.output).write_text(text + "\n")
        print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
