"""Durable acknowledgements of the whole daemon against the bare HMAC endpoint (issue 15).
Prints JSON.

    .venv/bin/python bench/bench_ack_path.py [--quick] [--rounds 3] [--duration 10] [--burst 60]

Three servers, each its own process, measured in interleaved rounds (the order alternates):
- daemon: `syncd run` as users run it (config.example.toml's settings, the simulator as its
          API, polling, a safety poll every 10 s, a full relist every minute, the admin
          listener, the audit trail, the change log, the simulator's own webhooks);
- bare:   a plain Starlette endpoint that checks the HMAC and answers 200 (the baseline);
- app:    the receiver app, inbox and worker alone in a process (bench_receiver's "real"): a
          breakdown of what the daemon's other parts cost, not a baseline.
wrk -c64 replays unique pre-signed deliveries (bench_receiver's Lua script). CPU is the
server process's (all threads) during the wrk window; the daemon's CPU applying the backlog
the window left is measured after it, until the inbox is empty, and reported apart.

Then a burst: wrk at full rate for --burst seconds against the daemon; from its end, the time
until the inbox is empty (the mirror holds every acknowledged delivery) and the apply rate
while catching up. Then event-to-mirror at a steady 1,000 events/s through the daemon, from
its syncd_event_to_mirror_seconds histogram (bucket bounds: 25 ms, 50 ms, 100 ms, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from bench_receiver import LUA, PATH, SECRET, Server, body_for, figure, run_wrk, signature, steady

from tests.e2e.conftest import DaemonProcess, SimProcess, daemon_sections
from tests.e2e.soak import count

#: config.example.toml's values, but for the listen addresses, a webhook rate limit one
#: client (wrk) can be served under, and intervals short enough that a safety poll and a
#: relist happen while it is measured.
SECTIONS: dict[str, dict[str, Any]] = {
    "poll": {
        "interval": "30s",
        "safety_interval": "10s",
        "lookback": "15s",
        "page_size": 500,
        "full_relist_interval": "1m",
        "jitter": "1s",
    },
    "webhook": {"rate_limit": "1000000/s", "path": PATH},
    "fallback": {"silence": "5m", "missed_ratio": 0.05, "recover_after": 2},
    # JSON (the harness reads the ready line from it), at config.example.toml's level.
    "log": {"level": "info", "format": "json"},
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_deliveries(path: Path, prefix: str, n: int) -> None:
    with path.open("wb") as fh:
        for i in range(n):
            body = body_for(i, prefix)
            fh.write(signature(body).encode() + b"\t" + body + b"\n")


class Daemon:
    """The simulator and `syncd run` on it, the daemon registered for the simulator's webhooks."""

    def __init__(self, work: Path) -> None:
        self.sim = SimProcess(
            ["--rate", "20", "--preload-orders", "2000", "--preload-customers", "200"], work / "sim.log"
        )
        (work / "daemon").mkdir()
        sections = daemon_sections(self.sim.url, work / "daemon")
        for name, values in SECTIONS.items():
            sections.setdefault(name, {}).update(values)
        self.proc = DaemonProcess(work / "daemon", sections, env={"PETSTORE_WEBHOOK_SECRET": SECRET})
        assert self.proc.webhook_url is not None
        self.port = int(self.proc.webhook_url.split(":")[2].split("/")[0])
        self.pid = self.proc.pid
        self.db = work / "daemon" / "mirror.db"
        self.sim.register_webhook(self.proc.webhook_url, secret=SECRET)

    def backlog(self) -> int:
        return count(self.db, "SELECT COUNT(*) FROM _inbox")

    def drain(self, timeout: float = 600.0) -> tuple[float, float, int]:
        """Until the inbox is empty: (seconds, daemon CPU seconds, deliveries it held at the start)."""
        start, cpu, backlog = time.monotonic(), cpu_seconds(self.pid), self.backlog()
        while self.backlog():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the inbox did not drain in {timeout:.0f}s")
            time.sleep(0.05)
        return time.monotonic() - start, cpu_seconds(self.pid) - cpu, backlog

    def histogram(self) -> dict[float, float]:
        text = httpx.get(f"{self.proc.admin_url}/metrics", timeout=10).text
        buckets: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith("syncd_event_to_mirror_seconds_bucket"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        return buckets

    def stop(self) -> None:
        self.proc.stop(30)
        self.sim.stop()


def p99_bound(before: dict[float, float], after: dict[float, float]) -> tuple[float, float]:
    """(the smallest bucket bound holding 99% of the observations between two scrapes, count)."""
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    for le in sorted(after):
        if after[le] - before.get(le, 0.0) >= 0.99 * total:
            return le, total
    return float("inf"), total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs, to check the harness")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--burst", type=float, default=60)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steady-seconds", type=float, default=10)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.burst, args.steady_seconds = 1, 3, 10, 3
    per_round = int(args.duration * 9000)
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "app": [], "daemon": []}
    catchups: list[tuple[float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ack-path-") as tmp:
        work = Path(tmp)
        script = work / "deliveries.lua"
        script.write_text(LUA.replace("__PATH__", PATH))
        daemon = Daemon(work)
        try:
            bare = Server("bare", work)
            app = Server("real", work)
            try:
                kinds = ["bare", "app", "daemon"]
                for r in range(args.rounds):
                    for kind in kinds if r % 2 == 0 else kinds[::-1]:
                        data = work / "round.tsv"
                        write_deliveries(data, f"{kind}{r}", per_round)
                        port, pid = (
                            (daemon.port, daemon.pid)
                            if kind == "daemon"
                            else (bare.port, bare.proc.pid)
                            if kind == "bare"
                            else (app.port, app.proc.pid)
                        )
                        cpu = cpu_seconds(pid)
                        res = run_wrk(port, data, script, args.duration, args.connections, args.threads)
                        res["cpu_us_per_ack"] = round((cpu_seconds(pid) - cpu) / max(1, res["acks"]) * 1e6, 1)
                        if kind == "daemon":
                            seconds, cpu_after, backlog = daemon.drain()
                            res["backlog_after"] = backlog
                            res["apply_cpu_us_per_ack"] = round(cpu_after / max(1, res["acks"]) * 1e6, 1)
                            catchups.append((seconds, cpu_after, backlog))
                        results[kind].append(res)
                        print(kind, r, json.dumps(res), file=sys.stderr, flush=True)
                        data.unlink()
            finally:
                bare.stop()
                app.stop()

            # The burst: as fast as the daemon takes it, then the catch-up.
            data = work / "burst.tsv"
            # Unique deliveries for 16,000 acks/s (the bare endpoint's rate on a fast host):
            # once wrk runs out it starts over, and repeats are duplicates, cheaper to ack.
            write_deliveries(data, "burst", int(args.burst * 16_000))
            cpu = cpu_seconds(daemon.pid)
            burst = run_wrk(daemon.port, data, script, args.burst, args.connections, args.threads)
            burst_cpu = cpu_seconds(daemon.pid) - cpu
            data.unlink()
            catch_seconds, catch_cpu, burst_backlog = daemon.drain()
            stored = count(daemon.db, "SELECT COUNT(*) FROM _events WHERE event_id LIKE 'evt_burst_%'")
            print(
                "burst", json.dumps(burst), catch_seconds, burst_backlog, stored, file=sys.stderr, flush=True
            )

            before = daemon.histogram()
            with asyncio.Runner() as runner:
                sent = runner.run(steady(daemon.port, 1000, args.steady_seconds))
            time.sleep(1)
            p99_le, observed = p99_bound(before, daemon.histogram())
            print("steady", json.dumps(sent), p99_le, observed, file=sys.stderr, flush=True)
        finally:
            daemon.stop()

    def med(kind: str, key: str) -> float:
        return float(statistics.median(r[key] for r in results[kind]))

    d_acks, b_acks, a_acks = med("daemon", "acks_per_s"), med("bare", "acks_per_s"), med("app", "acks_per_s")
    d_cpu, b_cpu = med("daemon", "cpu_us_per_ack"), med("bare", "cpu_us_per_ack")
    d_p99 = med("daemon", "p99_ms")
    non2xx = sum(r["non2xx"] + r["socket_errors"] for r in results["daemon"])
    apply_rate = burst_backlog / catch_seconds if catch_seconds else float("inf")
    figures = [
        figure("syncd run durable acks/s (median of rounds)", d_acks, "acks/s",
               baseline="bare starlette endpoint, HMAC check only", baseline_value=b_acks,
               target=">= 0.85x", met=d_acks >= 0.85 * b_acks),
        figure("syncd run ack latency p99 (median of rounds)", d_p99, "ms", baseline="bare",
               baseline_value=med("bare", "p99_ms"), target="< 50 ms", met=d_p99 < 50),
        figure("syncd run non-2xx and socket errors, all rounds", non2xx, "responses", target="0",
               met=non2xx == 0),
        figure("syncd run CPU per durable ack, during the window", d_cpu, "us", baseline="bare",
               baseline_value=b_cpu, target="<= 1.25x", met=d_cpu <= 1.25 * b_cpu),
        figure("syncd run CPU per ack applying the window's backlog after it", med("daemon", "apply_cpu_us_per_ack"),
               "us", baseline="bare, per ack", baseline_value=b_cpu),
        figure("receiver app alone (inbox and worker, no daemon): acks/s", a_acks, "acks/s",
               baseline="bare", baseline_value=b_acks),
        figure(f"burst of {args.burst:g}s: durable acks/s", burst["acks_per_s"], "acks/s",
               baseline="bare, rounds' median", baseline_value=b_acks),
        figure("burst: time from its end until the mirror has every acknowledged delivery", catch_seconds, "s"),
        figure("burst: apply rate while catching up", apply_rate, "changes/s", target=">= 100,000 changes/s",
               met=apply_rate >= 100_000),
        figure("event-to-mirror p99 at 1000 events/s through syncd run (histogram bound)", p99_le * 1000, "ms",
               target="< 50 ms", met=p99_le <= 0.05 and sent["ok"] == sent["sent"]),
    ]  # fmt: skip
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    notes = [
        f"measured {today}, {os.cpu_count()} cores shared by wrk, the three servers, the simulator and "
        f"other work (load average {load}); {args.rounds} interleaved rounds of wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration:g}s, unique pre-signed deliveries, medians",
        "rounds (acks/s, p99 ms, CPU us/ack): "
        + "; ".join(
            f"{kind} "
            + ", ".join(f"{r['acks_per_s']:.0f}/{r['p99_ms']:.1f}/{r['cpu_us_per_ack']:.0f}" for r in rs)
            for kind, rs in results.items()
        ),
        "daemon backlog left by each round and its drain (s, CPU s, deliveries): "
        + ", ".join(f"{s:.1f}/{c:.1f}/{b}" for s, c, b in catchups),
        f"burst: {burst['acks']} acked ({burst['non2xx']} non-2xx, {burst['socket_errors']} socket errors), "
        f"p99 {burst['p99_ms']:.1f} ms, {burst_cpu / max(1, burst['acks']) * 1e6:.0f} us CPU per ack during it; "
        f"{burst_backlog} unapplied at its end, drained in {catch_seconds:.1f}s using {catch_cpu:.1f} CPU s; "
        f"{stored} burst events in _events",
        f"steady 1000/s: {sent['ok']} of {sent['sent']} acked ({sent['statuses']}), achieved "
        f"{sent['achieved_rate']}/s; {observed:g} event-to-mirror observations; p99 at or under {p99_le * 1000:g} ms",
    ]
    if args.quick:
        notes.append("--quick: one short round, figures are indicative only")
    print(json.dumps({"name": "ack path (syncd run)", "figures": figures, "notes": notes}))


if __name__ == "__main__":
    main()
