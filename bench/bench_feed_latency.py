"""Change-to-sink latency through a running `syncd run` (issue 13: p99 < 100 ms at 1,000
changes/s, webhook received to sink answered).

Four processes: the simulator (the API the daemon polls), `syncd run` with one `http` sink,
a sink receiver (uvicorn, httptools, a raw ASGI app answering 204 that records when each
change arrived, keyed by its record id and version), and this one, which sends signed
webhooks at a steady rate, each a new version of an order (syncd.sim.loadgen's deliveries),
and records when each was sent and when syncd answered it. Latency: send to arrival at the
sink. Baseline: send to syncd's 2xx (the delivery durable in the inbox), the same webhooks.

Prints one JSON line: {"name": "change feed latency (syncd run)", "figures": [...], "notes": [...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httpx
import orjson

from syncd.signatures import sign
from syncd.sim.loadgen import delivery
from syncd.timefmt import to_epoch
from tests.e2e.conftest import (
    WEBHOOK_SECRET,
    DaemonProcess,
    SimProcess,
    daemon_sections,
    to_toml,
    wait_until,
)
from tests.e2e.soak import SOAK_SECTIONS, count

TARGET_P99_MS = 100.0
#: Webhooks sent before the measured ones (connections opened, caches filled).
WARMUP = 500
SINK_SECRET = "whsec_" + base64.b64encode(b"bench-feed-latency-secret-0123").decode()


# -- the sink's receiver (its own process) ------------------------------------------------------


def serve_sink(port: int) -> None:
    """Answer every POST 204, keeping (record id, version, the change's `at`, arrival time on
    the monotonic and the wall clock) per change; a GET answers what was kept, as JSON."""
    import uvicorn

    arrivals: list[tuple[Any, int, str, float, float]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived, arrived_wall = time.monotonic(), time.time()
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": orjson.dumps(arrivals)})
            return
        change = orjson.loads(body)
        arrivals.append((change["record_id"], change["version"], change["at"], arrived, arrived_wall))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


class SinkReceiver:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/syncd"
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-sink", str(self.port)])
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the sink receiver did not start") from None
                time.sleep(0.05)

    def arrivals(self) -> list[tuple[Any, int, str, float, float]]:
        """What the receiver recorded; then it is stopped."""
        try:
            kept = httpx.get(self.url, timeout=30).raise_for_status().json()
        finally:
            self.proc.terminate()
            self.proc.wait(30)
        return [
            (rid, int(version), str(at), float(mono), float(wall)) for rid, version, at, mono, wall in kept
        ]


class FeedDaemon(DaemonProcess):
    """`syncd run` with the benchmark's sink appended to its config (the e2e helper writes
    plain tables only)."""

    sinks = ""

    def write_config(self, sections: dict[str, dict[str, Any]] | str) -> None:
        super().write_config(sections if isinstance(sections, str) else to_toml(sections) + self.sinks)


#: (record id, version) -> (sent, 2xx or None) on the monotonic clock, and sent on the wall clock
Times = dict[tuple[int, int], tuple[float, float | None, float]]


# -- the sender -----------------------------------------------------------------------------------


async def steady(url: str, rate: float, count: int, ids: int, connections: int, *, start: int = 0) -> Times:
    """Deliveries `start .. start+count-1`, open loop: the i-th goes at begin + i/rate on
    whichever connection is free, so a slow answer does not lower the offered rate. Returns
    (send, 2xx) times per (record id, version)."""
    prepared = []
    for n in range(start, start + count):
        event_id, body = delivery(n, ids=ids)
        record = json.loads(body)["data"]
        headers = sign("petstore", WEBHOOK_SECRET, body, msg_id=event_id, timestamp=int(time.time()))
        headers["Content-Type"] = "application/json"
        prepared.append(((int(record["id"]), int(record["version"])), body, headers))
    times: Times = {}
    numbers = iter(range(count))
    began = time.monotonic() + 0.1

    async def worker(session: aiohttp.ClientSession) -> None:
        for n in numbers:
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key, body, headers = prepared[n]
            sent, sent_wall = time.monotonic(), time.time()
            acked: float | None = None
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        acked = time.monotonic()
            except (aiohttp.ClientError, TimeoutError):
                pass
            times[key] = (sent, acked, sent_wall)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase_figures(
    rate: float, times: Times, first_arrival: dict[tuple[int, int], tuple[str, float, float]], *, target: bool
) -> tuple[list[dict[str, Any]], str]:
    arrived = [(times[k], first_arrival[k]) for k in times if k in first_arrival]
    to_sink = [(mono - sent) * 1000 for (sent, _, _), (_, mono, _) in arrived]
    to_ack = [(acked - sent) * 1000 for sent, acked, _ in times.values() if acked is not None]
    # The breakdown, on the wall clock (the change's `at` is the mirror write's time, in ms).
    to_mirror = [(to_epoch(at) - sent_wall) * 1000 for (_, _, sent_wall), (at, _, _) in arrived]
    mirror_to_sink = [(wall - to_epoch(at)) * 1000 for _, (at, _, wall) in arrived]
    p50, p99 = quantile(to_sink, 0.5), quantile(to_sink, 0.99)
    ack50, ack99 = quantile(to_ack, 0.5), quantile(to_ack, 0.99)
    sends = [sent for sent, _, _ in times.values()]
    achieved = (len(sends) - 1) / (max(sends) - min(sends))
    # A sink that keeps up takes most changes while webhooks still come; a starved one takes
    # them after the last webhook, and then every latency is about the phase's length.
    during = sum(1 for _, (_, mono, _) in arrived if mono <= max(sends)) / len(arrived)
    figures = [
        {
            "metric": f"change-to-sink p99 at {rate:,.0f} webhooks/s",
            "value": round(p99, 1),
            "unit": "ms",
            "baseline": "webhook to syncd's 2xx, p99",
            "baseline_value": round(ack99, 1),
            "ratio": round(p99 / ack99, 2),
            "target": f"< {TARGET_P99_MS:.0f} ms" if target else None,
            "met": p99 < TARGET_P99_MS and len(to_sink) == len(to_ack) if target else None,
        },
        {
            "metric": f"change-to-sink p50 at {rate:,.0f} webhooks/s",
            "value": round(p50, 1),
            "unit": "ms",
            "baseline": "webhook to syncd's 2xx, p50",
            "baseline_value": round(ack50, 1),
            "ratio": round(p50 / ack50, 2),
            "target": None,
            "met": None,
        },
        {
            "metric": f"webhooks sent per second (offered {rate:,.0f})",
            "value": round(achieved, 1),
            "unit": "webhooks/s",
            "baseline": None,
            "baseline_value": None,
            "ratio": None,
            "target": f">= {0.95 * rate:,.0f}",
            "met": achieved >= 0.95 * rate,
        },
    ]
    note = (
        f"at {rate:g}/s: {len(sends):,} sent, {len(to_ack):,} acknowledged, {len(to_sink):,} reached the "
        f"sink (first arrival per record and version), {during:.0%} of them before the last webhook "
        f"was sent; max change-to-sink {max(to_sink):.1f} ms, "
        f"max ack {max(to_ack):.1f} ms; webhook to the mirror write's `at` p50 {quantile(to_mirror, 0.5):.1f} / "
        f"p99 {quantile(to_mirror, 0.99):.1f} ms, `at` to the sink p50 {quantile(mirror_to_sink, 0.5):.1f} / "
        f"p99 {quantile(mirror_to_sink, 0.99):.1f} ms"
    )
    return figures, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seconds a rate, to check the harness")
    parser.add_argument(
        "--rates",
        default="200,500,1000",
        help="webhooks per second, one phase each, in this order; the target is the highest rate's, "
        "the lower ones show the latency where the sink keeps up (run first: a backlog left by a "
        "rate the sink cannot take would be measured too)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="per rate")
    parser.add_argument("--ids", type=int, default=2000, help="orders the webhooks cycle over")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="time each stage inside the daemon (bench/feed_trace.py) and write the breakdown "
        "of the highest rate's phase as JSON to FILE",
    )
    parser.add_argument(
        "--syncd-tree",
        metavar="DIR",
        help="run the daemon from this source tree (e.g. a `git worktree` of another commit), "
        "for A/B rounds against the same sender, simulator and receiver",
    )
    parser.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return 0
    seconds = 3.0 if args.quick else args.seconds
    rates = [float(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-feed-latency-"))
    receiver = SinkReceiver()
    sim = SimProcess(["--rate", "0", "--preload-inventory", "0"], work / "sim.log")
    (work / "daemon").mkdir()
    sections = daemon_sections(sim.url, work / "daemon")
    for name, values in SOAK_SECTIONS.items():
        sections.setdefault(name, {}).update(values)
    FeedDaemon.sinks = (
        f'\n[[sinks]]\nname = "bench"\ntype = "http"\nurl = "{receiver.url}"\n'
        'secret_env = "SYNCD_SINK_SECRET"\non_failure = "block"\n'
    )
    env = {"SYNCD_SINK_SECRET": SINK_SECRET}
    paths = [args.syncd_tree] if args.syncd_tree else []
    if args.syncd_tree:
        # `python -m syncd` would put the working directory, this tree, first on sys.path.
        env["PYTHONSAFEPATH"] = "1"
    if args.trace:
        import feed_trace

        paths.append(feed_trace.sitecustomize_dir(str(work)))
        env["SYNCD_BENCH_TRACE"] = str(work / "trace.json")
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    daemon: FeedDaemon | None = None
    phases: list[tuple[float, Times]] = []
    try:
        daemon = FeedDaemon(work / "daemon", sections, env=env)
        url = daemon.webhook_url
        assert url is not None
        # Warm-up: the first deliveries open connections and fill caches; not measured.
        asyncio.run(steady(url, rates[0], WARMUP, args.ids, args.connections))
        first = (WARMUP // args.ids + 1) * args.ids
        for rate in rates:
            wait_until(lambda: caught_up(daemon), 120, interval=0.25, what="the sink to catch up")
            total = int(rate * seconds)
            print(f"bench_feed_latency: {total:,} webhooks at {rate:g}/s ...", file=sys.stderr, flush=True)
            # Whole rounds of versions past the ones before, so every webhook is a new state.
            phases.append(
                (rate, asyncio.run(steady(url, rate, total, args.ids, args.connections, start=first)))
            )
            first += (total // args.ids + 1) * args.ids
        wait_until(lambda: caught_up(daemon), 120, interval=0.25, what="the sink to catch up")
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()
        arrivals = receiver.arrivals()
    first_arrival: dict[tuple[int, int], tuple[str, float, float]] = {}
    for rid, version, at, mono, wall in arrivals:
        first_arrival.setdefault((int(rid), int(version)), (at, mono, wall))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    figures: list[dict[str, Any]] = []
    notes = [
        f"measured {today}, {os.cpu_count()} cores shared by the simulator, syncd run, the sink "
        f"receiver and the sender, and with other work (load average {load})",
        f"signed webhooks for {seconds:g}s at each rate over {args.connections} keep-alive connections "
        f"(open loop), each a new version of one of {args.ids:,} orders, after {WARMUP} not "
        "measured; one http sink (on_failure=block, batch_size 100) to a uvicorn receiver answering 204",
        "latency from just before the webhook's request was written to the sink receiver having read "
        "the change (it answers 204 at once); both clocks CLOCK_MONOTONIC on one machine",
    ]
    for rate, times in phases:
        more, note = phase_figures(rate, times, first_arrival, target=rate == max(rates))
        figures += more
        notes.append(note)
    if args.trace:
        write_trace(args.trace, work / "trace.json", phases[-1][1], first_arrival)
    print(json.dumps({"name": "change feed latency (syncd run)", "figures": figures, "notes": notes}))
    return 0


def write_trace(
    out: str,
    trace_path: Path,
    times: Times,
    first_arrival: dict[tuple[int, int], tuple[str, float, float]],
) -> None:
    import feed_trace

    trace = json.loads(trace_path.read_text())
    sent = {k: v[0] for k, v in times.items()}
    arrived = {k: v[1] for k, v in first_arrival.items()}
    window = (min(sent.values()), max(sent.values()))
    report = feed_trace.analyse(trace, sent, arrived, window)
    report["load average"] = os.getloadavg()
    Path(out).write_text(json.dumps(report, indent=1))


def caught_up(daemon: FeedDaemon) -> bool:
    """The inbox is drained and the sink's offset is the log's head."""
    db = daemon.workdir / "mirror.db"
    if count(db, "SELECT COUNT(*) FROM _inbox"):
        return False
    head = count(db, "SELECT seq FROM sqlite_sequence WHERE name = '_changes'")
    return count(db, "SELECT delivered_seq FROM _sink_offsets WHERE sink = 'bench'") == head


if __name__ == "__main__":
    sys.exit(main())
