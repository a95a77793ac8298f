"""JetStream: webhook acks/s of two `syncd receive` processes into a local three-node
cluster (R3 inbox stream) against one `syncd run` with its SQLite inbox, and the nats
sink's changes/s into the same cluster (R3 changes stream) and into one node (R1), where the
two cores are not also running two more servers' replication. Prints JSON (bench/collect.py).

    .venv/bin/python bench/bench_nats.py [--quick] [--rounds 3] [--duration 8]

Receivers. Each side gets 64 connections from wrk (pre-signed unique deliveries, as in
bench_receiver): split 32/32 over the two receivers, or all 64 to `syncd run`. The sides
alternate, rotating which goes first each round; medians are reported, with the CPU
seconds the syncd processes (and, for the nats side, the nats-servers) used per ack.

Sink. The change log is prefilled with N changes; a: a SinkRunner over the nats sink
(batches of 1000, each one atomic batch publish with one PubAck, offset past it); b: bare
nats-py publish_async of the same bodies, a batch of 1000 awaited at a time (a PubAck
each: the sink's one-by-one path, and what it did before atomic batches); c: the sink
forced one by one (a stream that does not allow atomic batches). The stream is deleted before each run, so
no run is deduplicated against the one before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import uvloop
from bench_feed import Clocks, Feed, deliver_all, figure, interleaved, prefill, runner_for
from bench_receiver import LUA, PATH, SECRET, body_for, run_wrk, signature

from syncd.config_nats import NatsConfig
from syncd.feed.nats import NatsSink, subject_of
from syncd.jetstream import MSG_ID, JetStreamLink, changes_stream, ensure_stream
from syncd.sim.cli import READY_PREFIX

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.nats_support import NatsCluster, free_port, make_cluster, require_nats_server  # noqa: E402

SINK_TARGET = 20_000.0
SINK_BATCH = 1000


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


class Syncd:
    """`syncd receive` or `syncd run` as a child process on a fixed webhook port."""

    def __init__(self, command: str, work: Path, sections: str) -> None:
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        config = work / "syncd.toml"
        config.write_text(
            f'[webhook]\nlisten = "127.0.0.1:{self.port}"\npath = "{PATH}"\nrate_limit = "1000000/s"\n'
            f'[admin]\nlisten = "127.0.0.1:0"\n[log]\nlevel = "info"\nformat = "json"\n{sections}'
        )
        env = {**os.environ, "PETSTORE_WEBHOOK_SECRET": SECRET, "PETSTORE_API_KEY": "bench-key"}
        self.log = (work / "syncd.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", command, "--config", str(config)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port, self.proc, f"syncd {command}")
        if command == "receive":
            deadline = time.monotonic() + 30
            while b"JetStream reachable" not in (work / "syncd.log").read_bytes():
                if time.monotonic() > deadline:
                    raise RuntimeError("syncd receive did not reach JetStream")
                time.sleep(0.05)

    def cpu(self) -> float:
        return _cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def start_sim(work: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "simulate", "--port", "0", "--api-key", "bench-key", "--rate", "1"],
        stdout=subprocess.PIPE,
        stderr=(work / "sim.log").open("w"),
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(READY_PREFIX):
            url = line[len(READY_PREFIX) :].strip()
            # Keep draining stdout so the simulator never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
            return proc, url
    raise RuntimeError("simulator did not start")


def write_deliveries(path: Path, prefix: str, n: int) -> None:
    with path.open("wb") as fh:
        for i in range(n):
            body = body_for(i, prefix)
            fh.write(signature(body).encode() + b"\t" + body + b"\n")


def _wrk_parallel(
    jobs: list[tuple[int, Path]], script: Path, duration: float, connections: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in jobs]

    def one(index: int, port: int, data: Path) -> None:
        results[index] = run_wrk(port, data, script, duration, connections, 1)

    threads = [threading.Thread(target=one, args=(i, port, data)) for i, (port, data) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def bench_receivers(
    cluster: NatsCluster, work: Path, rounds: int, duration: float, deliveries: int
) -> tuple[list[dict[str, Any]], list[str]]:
    script = work / "deliveries.lua"
    script.write_text(LUA.replace("__PATH__", PATH))
    servers = json.dumps(cluster.urls)
    nats_section = f"[nats]\nservers = {servers}\nreplicas = 3\n"
    receivers = [Syncd("receive", work / f"receive{i}", nats_section) for i in range(2)]
    sim, sim_url = start_sim(work)
    run = Syncd(
        "run",
        work / "run",
        f'[api]\nbase_url = "{sim_url}"\n[store]\npath = "{work / "run" / "mirror.db"}"\n'
        '[poll]\nsafety_interval = "1h"\n',
    )
    nats_pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
    sides: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    try:
        for r, order in interleaved(rounds):
            for side in order:
                if side == "a":
                    files = [work / f"a{r}-{i}.tsv" for i in range(2)]
                    for i, f in enumerate(files):
                        write_deliveries(f, f"a{r}r{i}", deliveries)
                    cpu0 = sum(x.cpu() for x in receivers)
                    nats0 = sum(_cpu(p) for p in nats_pids)
                    out = _wrk_parallel(
                        [(x.port, f) for x, f in zip(receivers, files, strict=True)], script, duration, 32
                    )
                    acks = sum(o["acks"] for o in out)
                    sides["a"].append(
                        {
                            "acks_per_s": sum(o["acks_per_s"] for o in out),
                            "cpu_us_per_ack": (sum(x.cpu() for x in receivers) - cpu0) / max(1, acks) * 1e6,
                            "nats_cpu_us_per_ack": (sum(_cpu(p) for p in nats_pids) - nats0)
                            / max(1, acks)
                            * 1e6,
                            "p99_ms": max(o["p99_ms"] for o in out),
                            "non2xx": sum(o["non2xx"] for o in out),
                        }
                    )
                else:
                    data = work / f"b{r}.tsv"
                    write_deliveries(data, f"b{r}", deliveries * 2)
                    cpu0 = run.cpu()
                    out = _wrk_parallel([(run.port, data)], script, duration, 64)
                    sides["b"].append(
                        {
                            "acks_per_s": out[0]["acks_per_s"],
                            "cpu_us_per_ack": (run.cpu() - cpu0) / max(1, out[0]["acks"]) * 1e6,
                            "p99_ms": out[0]["p99_ms"],
                            "non2xx": out[0]["non2xx"],
                        }
                    )
                print(f"round {r} {side}: {sides[side][-1]}", file=sys.stderr, flush=True)
    finally:
        for x in [*receivers, run]:
            x.stop()
        sim.terminate()
        sim.wait(10)

    def med(side: str, key: str) -> float:
        return statistics.median(x[key] for x in sides[side])

    a, b = med("a", "acks_per_s"), med("b", "acks_per_s")
    figures = [
        figure(
            "2 x syncd receive -> 3-node JetStream (R3), 64 connections",
            a,
            "acks/s",
            baseline="one syncd run, SQLite inbox, 64 connections",
            baseline_value=b,
        ),
        figure(
            "syncd CPU per ack: 2 receivers vs syncd run",
            med("a", "cpu_us_per_ack"),
            "us",
            baseline="syncd run (receiver, inbox, worker, audit)",
            baseline_value=med("b", "cpu_us_per_ack"),
        ),
    ]
    notes = [
        f"receivers: p99 {med('a', 'p99_ms'):.1f} ms, non-2xx {sum(x['non2xx'] for x in sides['a'])};"
        f" syncd run: p99 {med('b', 'p99_ms'):.1f} ms, non-2xx {sum(x['non2xx'] for x in sides['b'])}",
        f"the three nats-servers used {med('a', 'nats_cpu_us_per_ack'):.0f} us of CPU per ack (R3, file storage)",
        f"{rounds} interleaved rounds of {duration:g}s per side, medians; all processes on this host's 2 cores",
    ]
    return figures, notes


async def _reset_stream(cfg: NatsConfig) -> None:
    nc = await nats.connect(list(cfg.servers))
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(cfg.changes_stream)
    await nc.close()


async def bench_sink(
    cluster: NatsCluster, work: Path, n: int, rounds: int, replicas: int = 3
) -> tuple[list[dict[str, Any]], list[str]]:
    path = work / f"feed-r{replicas}.db"
    prefill(path, n)
    feed = Feed(path)
    items = feed.read_all()
    cfg = NatsConfig(servers=tuple(cluster.urls), replicas=replicas)
    where = "R3 stream on three local nodes" if replicas == 3 else f"R{replicas} stream on one local node"
    out: dict[str, list[Clocks]] = {"a": [], "b": [], "c": []}
    try:
        for r, order in interleaved(rounds, "abc"):
            for side in order:
                await _reset_stream(cfg)
                link = JetStreamLink(cfg, None, [changes_stream(cfg, 3600.0)], name="bench")
                await link.start()
                js = await link.wait_ready(30)
                if side in "ac":
                    sink = NatsSink(
                        f"nats{r}{side}", link, cfg.changes_stream, timeout=30, atomic=side == "a"
                    )
                    with Clocks() as clocks:
                        await deliver_all(feed, runner_for(feed, sink, SINK_BATCH), items[-1].seq)
                    await sink.aclose()
                else:
                    await ensure_stream(js, changes_stream(cfg, 3600.0), cfg)
                    with Clocks() as clocks:
                        for start in range(0, len(items), SINK_BATCH):
                            futures = [
                                await js.publish_async(
                                    subject_of(c),
                                    c.to_json(),
                                    headers={MSG_ID: c.webhook_id},
                                    stream=cfg.changes_stream,
                                )
                                for c in items[start : start + SINK_BATCH]
                            ]
                            await asyncio.gather(*futures)
                    await link.close()
                info = await _stream_messages(cfg)
                if info != n:
                    raise RuntimeError(f"side {side}: the stream holds {info} messages, not {n}")
                out[side].append(clocks)
                print(
                    f"sink R{replicas} round {r} {side}: {n / clocks.wall:,.0f}/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        feed.close()
    a = statistics.median(n / c.wall for c in out["a"])
    b = statistics.median(n / c.wall for c in out["b"])
    c1 = statistics.median(n / c.wall for c in out["c"])
    figures = [
        figure(
            f"nats sink, batches of {SINK_BATCH}, {where}",
            a,
            "changes/s",
            baseline="bare nats-py publish_async, same batches",
            baseline_value=b,
            target=f">= {SINK_TARGET:,.0f}/s",
            met=a >= SINK_TARGET,
        ),
        figure(
            f"nats sink one by one (stream without atomic batches), {where}",
            c1,
            "changes/s",
            baseline="bare nats-py publish_async, same batches",
            baseline_value=b,
        ),
    ]
    cpu_a = statistics.median(c.cpu / n * 1e6 for c in out["a"])
    cpu_b = statistics.median(c.cpu / n * 1e6 for c in out["b"])
    notes = [
        f"nats sink ({where}): {cpu_a:.1f} us of syncd CPU per change against {cpu_b:.1f} us for bare publishes;"
        f" {n:,} changes, {rounds} interleaved rounds, medians"
    ]
    return figures, notes


async def _stream_messages(cfg: NatsConfig) -> int:
    nc = await nats.connect(list(cfg.servers))
    try:
        return int((await nc.jetstream().stream_info(cfg.changes_stream)).state.messages)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--deliveries", type=int, default=40_000)
    parser.add_argument("--changes", type=int, default=100_000)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.deliveries, args.changes = 1, 2.0, 5_000, 5_000
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        work = Path(tmp)
        cluster = make_cluster(require_nats_server(), work / "nats", 3)
        cluster.start()
        try:
            figures, notes = bench_receivers(cluster, work, args.rounds, args.duration, args.deliveries)
            # uvloop: the loop `syncd run` runs its sinks on.
            sink_figures, sink_notes = uvloop.run(bench_sink(cluster, work, args.changes, args.rounds))
        finally:
            cluster.stop()
        # The same sink against one node: what the sink itself reaches when the cores are
        # not also running two more servers' replication (a cluster's nodes have their own
        # machines).
        single = make_cluster(require_nats_server(), work / "nats1", 1)
        single.start()
        try:
            one_figures, one_notes = uvloop.run(
                bench_sink(single, work, args.changes, args.rounds, replicas=1)
            )
        finally:
            single.stop()
        sink_figures += one_figures
        sink_notes += one_notes
    notes += sink_notes
    notes.append(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(json.dumps({"name": "bench_nats", "figures": figures + sink_figures, "notes": notes}))


if __name__ == "__main__":
    main()
