"""The change feed (issue 13): apply with the change log on against off, the `http` and
`exec` sinks' throughput, and memory while a sink is down and the log grows.

- apply: bench_apply's workloads (inserts, updates, re-read duplicates, batches of 1000)
  on `Store(path)` against `Store(path, record_changes=False)`, interleaved rounds, each on
  a fresh file; the ratio is the median of the rounds' ratios, on CPU time (this process is
  single-threaded there) and on wall-clock time. Both sides run under the collector
  settings `syncd run` applies with (`serving_heap`); `--apply-collector default` measures
  them under CPython's.
- http: a log pre-filled with changes, delivered by a `SinkRunner` with an `HttpSink` to a
  receiver in another process (uvicorn, httptools, a raw ASGI app answering 204), the way
  the daemon assembles it (the store's writer thread, a reader connection). Baseline: the
  same bodies as bare POSTs with the sink's client (aiohttp) over one keep-alive
  connection, interleaved; bare httpx POSTs are a reference (the sink's earlier client).
- exec: the same with a `CommandSink` running `cat` per batch of 100. Baseline: the same
  JSON Lines written to one long-lived `cat`.
- rss: a writer appending 1,000,000 changes with apply_batch while a runner's sink always
  fails (`on_failure = "block"`), RSS sampled every 100,000 changes, each in a fresh
  process. Baseline: the same appends with no runner.

Prints one JSON line: {"name": "change feed", "figures": [...], "notes": [...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop
from bench_apply import BATCH, changes

from syncd.core.changes import Change
from syncd.feed.base import SinkError
from syncd.feed.command import CommandSink
from syncd.feed.http import HttpSink
from syncd.feed.log import WriterChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import Backoff, OnFailure, SinkRunner, Start
from syncd.heap import serving_heap
from syncd.store import changelog
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch

APPLY_TARGET = 0.7
HTTP_TARGET = 2_000.0
EXEC_TARGET = 20_000.0
RSS_GROWTH_TARGET_MB = 20.0
SECRET = "whsec_" + base64.b64encode(b"bench-feed-secret-0123456789").decode()
MB = 10**6


def figure(
    metric: str,
    value: float,
    unit: str,
    *,
    baseline: str | None = None,
    baseline_value: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
    met: bool | None = None,
) -> dict[str, Any]:
    if ratio is None and baseline_value:
        ratio = value / baseline_value
    return {
        "metric": metric,
        "value": round(value, 1),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": None if baseline_value is None else round(baseline_value, 1),
        "ratio": None if ratio is None else round(ratio, 3),
        "target": target,
        "met": met,
    }


class Clocks:
    """Wall-clock and CPU seconds of a stretch of work: this process's (all threads) and,
    with `children`, those of the child processes it waited for in between."""

    def __init__(self, *, children: bool = False) -> None:
        self.children = children
        self.wall = self.cpu = 0.0

    def _cpu(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        total = own.ru_utime + own.ru_stime
        if self.children:
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            total += kids.ru_utime + kids.ru_stime
        return total

    def __enter__(self) -> Clocks:
        self._wall0, self._cpu0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = self._cpu() - self._cpu0


def interleaved(rounds: int, sides: str = "ab") -> Iterator[tuple[int, str]]:
    """Round numbers with the order the sides run in, rotated every round so none always
    runs first (a warmer cache, a quieter moment)."""
    for r in range(rounds):
        k = r % len(sides)
        yield r, sides[k:] + sides[:k]


# -- apply with the log on and off -----------------------------------------------------------


def apply_phases(path: Path, n: int, *, record: bool) -> dict[str, Clocks]:
    """bench_apply's three phases on a fresh store: insert n orders, update them, see them
    again (duplicates)."""
    store = Store(path, record_changes=record)
    out: dict[str, Clocks] = {}
    try:
        ids = range(n)
        for phase, items in (
            ("inserts", changes(ids, 1)),
            ("updates", changes(ids, 2)),
            ("duplicates", changes(ids, 2)),
        ):
            with Clocks() as clocks:
                for start in range(0, n, BATCH):
                    apply_batch(store, items[start : start + BATCH], synced_at=format_epoch())
            out[phase] = clocks
        logged = changelog.head(store.conn)
    finally:
        store.close()
    if logged != (2 * n if record else 0):
        raise RuntimeError(f"the change log holds {logged} changes after {n} inserts and {n} updates")
    return out


def bench_apply_log(
    tmp: Path, n: int, rounds: int, *, collector: str = "daemon"
) -> tuple[list[dict[str, Any]], list[str]]:
    """`collector`: "daemon" runs both sides under the garbage-collector settings `syncd run`
    applies with (`serving_heap`); "default" under CPython's, which charge the log about 3 us
    per update of collections the daemon does not make."""
    runs: dict[str, list[dict[str, Clocks]]] = {"a": [], "b": []}
    heap = serving_heap if collector == "daemon" else contextlib.nullcontext
    for r, order in interleaved(rounds):
        for side in order:
            path = tmp / f"apply-{side}-{r}.db"
            with heap():
                runs[side].append(apply_phases(path, n, record=side == "a"))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    figures, notes = [], []
    for phase in ("inserts", "updates", "duplicates"):
        on, off = [r[phase] for r in runs["a"]], [r[phase] for r in runs["b"]]
        cpu_ratio = statistics.median(o.cpu / x.cpu for o, x in zip(on, off, strict=True))
        wall_ratio = statistics.median(o.wall / x.wall for o, x in zip(on, off, strict=True))
        on_cpu = n / statistics.median(o.cpu for o in on)
        off_cpu = n / statistics.median(x.cpu for x in off)
        figures.append(
            figure(
                f"apply {phase} with the change log, per CPU second",
                on_cpu,
                "changes/CPU-s",
                baseline="change log off",
                baseline_value=off_cpu,
                ratio=1 / cpu_ratio,
                target=f">= {APPLY_TARGET}x",
                met=1 / cpu_ratio >= APPLY_TARGET,
            )
        )
        figures.append(
            figure(
                f"apply {phase} with the change log, wall clock",
                n / statistics.median(o.wall for o in on),
                "changes/s",
                baseline="change log off",
                baseline_value=n / statistics.median(x.wall for x in off),
                ratio=1 / wall_ratio,
                target=f">= {APPLY_TARGET}x",
                met=1 / wall_ratio >= APPLY_TARGET,
            )
        )
        notes.append(
            f"apply {phase}, per-round ratios on/off (CPU): "
            + ", ".join(f"{x.cpu / o.cpu:.2f}" for o, x in zip(on, off, strict=True))
        )
    notes.insert(
        0,
        f"apply: {n:,} orders per phase, {rounds} rounds, log on and off interleaved, each on a "
        "fresh file (WAL, synchronous=FULL); ratio = median of the rounds' ratios; collector: "
        + ("the daemon's (serving_heap)" if collector == "daemon" else "CPython's default"),
    )
    return figures, notes


# -- the sinks' throughput -------------------------------------------------------------------


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an HTTP receiver can do: read the request, answer 204."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def serve_receiver(port: int) -> None:
    import uvicorn

    uvicorn.run(
        receiver_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """`serve_receiver` in a process of its own (its own GIL)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/syncd"
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-receiver", str(self.port)])
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the receiver did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def prefill(path: Path, n: int) -> None:
    """A store whose change log holds n changes (orders created, in batches)."""
    store = Store(path)
    try:
        for start in range(0, n, BATCH):
            apply_batch(store, changes(range(start, min(n, start + BATCH)), 1), synced_at=format_epoch())
        if changelog.head(store.conn) != n:
            raise RuntimeError("prefill: the log does not hold what was applied")
    finally:
        store.close()


class Feed:
    """The daemon's assembly of the feed on one store: the writer thread (which wakes the
    notifier after appends) and a change log read on a reader connection."""

    def __init__(self, path: Path) -> None:
        self.writer = Writer(lambda: Store(path))
        self.writer.start()
        self.reader = Store.open_reader(path)
        self.notifier = ChangeNotifier()
        self.writer.call(lambda store: store.recorder.add_listener(self.notifier.notify_threadsafe))
        self.log = WriterChangeLog(lambda fn: self.writer.run(lambda store: fn(store.conn)), self.reader)

    def read_all(self) -> list[Change]:
        return changelog.read_after(self.reader, 0, 10**9)

    def close(self) -> None:
        self.reader.close()
        self.writer.stop()


async def deliver_all(feed: Feed, runner: SinkRunner, head: int) -> None:
    """Run `runner` until it has taken every change up to `head`."""
    task = asyncio.create_task(runner.run())
    try:
        while (runner.state.delivered or 0) < head:
            if task.done():
                task.result()
                raise RuntimeError(f"sink {runner.name} stopped at {runner.state.delivered}")
            if runner.state.attempts:
                raise RuntimeError(f"sink {runner.name} is failing: {runner.state.last_error}")
            await asyncio.sleep(0.005)
    finally:
        runner.stop()
        await task


def runner_for(feed: Feed, sink: Any, batch_size: int) -> SinkRunner:
    return SinkRunner(sink, feed.log, feed.notifier, batch_size=batch_size, start=Start.BEGINNING)


async def http_rounds(feed: Feed, url: str, rounds: int) -> dict[str, list[Clocks]]:
    """a: the sink; b: bare aiohttp POSTs over one connection (the sink's client, without
    the sink: signing, the runner, the offsets); d: bare httpx POSTs (a reference: the
    sink's earlier client, for the same requests)."""
    items = feed.read_all()
    bodies = [c.to_json() for c in items]
    sides = "abd"
    out: dict[str, list[Clocks]] = {side: [] for side in sides}
    for r, order in interleaved(rounds, sides):
        for side in order:
            if side == "a":
                sink = HttpSink(f"http{r}{side}", url, SECRET)
                try:
                    with Clocks() as clocks:
                        await deliver_all(feed, runner_for(feed, sink, 100), items[-1].seq)
                finally:
                    await sink.aclose()
            elif side == "b":
                connector = aiohttp.TCPConnector(limit=1)
                async with aiohttp.ClientSession(connector=connector) as session:
                    headers = {"content-type": "application/json"}
                    with Clocks() as clocks:
                        for body in bodies:
                            async with session.post(url, data=body, headers=headers) as answer:
                                await answer.read()
                                if answer.status != 204:
                                    raise RuntimeError(f"receiver answered {answer.status}")
            else:  # d
                limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
                async with httpx.AsyncClient(limits=limits) as client:
                    headers = {"content-type": "application/json"}
                    with Clocks() as clocks:
                        for body in bodies:
                            response = await client.post(url, content=body, headers=headers)
                            if response.status_code != 204:
                                raise RuntimeError(f"receiver answered {response.status_code}")
            out[side].append(clocks)
    return out


async def exec_rounds(feed: Feed, rounds: int, batch: int) -> dict[str, list[Clocks]]:
    """a: the sink; b: one long-lived cat; c: a cat per batch started by subprocess.run in a
    worker thread (a reference: CPython's spawn, where the event loop's is uvloop's)."""
    items = feed.read_all()
    out: dict[str, list[Clocks]] = {"a": [], "b": [], "c": []}
    for r, order in interleaved(rounds, "abc"):
        for side in order:
            if side == "a":
                sink = CommandSink(f"exec{r}", ["cat"])
                with Clocks(children=True) as clocks:
                    await deliver_all(feed, runner_for(feed, sink, batch), items[-1].seq)
            elif side == "c":
                with Clocks(children=True) as clocks:
                    for start in range(0, len(items), batch):
                        payload = b"".join(c.to_json() + b"\n" for c in items[start : start + batch])
                        await asyncio.to_thread(
                            subprocess.run, ["cat"], input=payload, stdout=subprocess.DEVNULL, check=True
                        )
            else:
                with Clocks(children=True) as clocks:
                    proc = await asyncio.create_subprocess_exec(
                        "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
                    )
                    assert proc.stdin is not None
                    for start in range(0, len(items), batch):
                        proc.stdin.write(b"".join(c.to_json() + b"\n" for c in items[start : start + batch]))
                        await proc.stdin.drain()
                    proc.stdin.close()
                    if await proc.wait() != 0:
                        raise RuntimeError("cat failed")
            out[side].append(clocks)
    return out


def throughput_figures(
    what: str, runs: dict[str, list[Clocks]], n: int, baseline: str, target: float
) -> tuple[list[dict[str, Any]], list[str]]:
    sink, base = runs["a"], runs["b"]
    wall = n / statistics.median(c.wall for c in sink)
    cpu = n / statistics.median(c.cpu for c in sink)
    wall_ratio = statistics.median(b.wall / s.wall for s, b in zip(sink, base, strict=True))
    cpu_ratio = statistics.median(b.cpu / s.cpu for s, b in zip(sink, base, strict=True))
    figures = [
        figure(
            f"{what} sink delivered",
            wall,
            "changes/s",
            baseline=baseline,
            baseline_value=n / statistics.median(c.wall for c in base),
            ratio=wall_ratio,
            target=f">= {target:,.0f} changes/s",
            met=wall >= target,
        ),
        figure(
            f"{what} sink per CPU second",
            cpu,
            "changes/CPU-s",
            baseline=baseline,
            baseline_value=n / statistics.median(c.cpu for c in base),
            ratio=cpu_ratio,
        ),
    ]
    notes = [
        f"{what}: per-round changes/s, sink vs {baseline}: "
        + ", ".join(f"{n / s.wall:,.0f} vs {n / b.wall:,.0f}" for s, b in zip(sink, base, strict=True))
    ]
    return figures, notes


def reference(metric: str, runs: list[Clocks], n: int) -> dict[str, Any]:
    return figure(metric, n / statistics.median(c.wall for c in runs), "changes/s")


async def bench_sinks(tmp: Path, n: int, rounds: int) -> tuple[list[dict[str, Any]], list[str]]:
    path = tmp / "feed.db"
    prefill(path, n)
    feed = Feed(path)
    receiver = Receiver()
    try:
        http_runs = await http_rounds(feed, receiver.url, rounds)
        exec_runs = await exec_rounds(feed, rounds, 100)
    finally:
        receiver.stop()
        feed.close()
    figures, notes = throughput_figures(
        "http", http_runs, n, "bare aiohttp POSTs, one keep-alive connection", HTTP_TARGET
    )
    figures.append(reference("bare httpx POSTs, one keep-alive client (reference)", http_runs["d"], n))
    notes.append(
        "http: CPU per request (median round), the sink / bare aiohttp / bare httpx: "
        + " / ".join(
            f"{statistics.median(c.cpu for c in http_runs[side]) / n * 1e6:.0f} us" for side in "abd"
        )
    )
    more_figures, more_notes = throughput_figures(
        "exec (cat, batches of 100)", exec_runs, n, "the same JSON Lines into one cat", EXEC_TARGET
    )
    more_figures.append(
        reference("cat per batch of 100 by subprocess.run in a thread (reference)", exec_runs["c"], n)
    )
    notes.insert(
        0,
        f"sinks: a log of {n:,} order changes, {rounds} rounds of sink and baseline interleaved; the "
        "runner reads on a reader connection and commits its offset through the writer thread after "
        "each batch of 100 (one fsync each), as in the daemon; the receiver is uvicorn (uvloop, "
        "httptools) answering 204 in another process; CPU counts this process (and for exec the "
        "commands it ran), not the receiver",
    )
    return figures + more_figures, notes + more_notes


# -- memory while a sink is down ---------------------------------------------------------------


class DownSink:
    """A sink that is always down."""

    name = "down"

    async def deliver(self, batch: Sequence[Change]) -> None:
        raise SinkError(self.name, "connection refused (benchmark)")


def rss_bytes() -> int:
    try:
        import psutil
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/self/status") from None
    return int(psutil.Process().memory_info().rss)


async def grow_log(path: Path, total: int, batch: int, records: int, with_runner: bool) -> dict[str, Any]:
    """Append `total` changes (updates of `records` orders, in batches of `batch`) through
    the writer, with or without a runner whose sink is down; RSS every 100,000 changes."""
    writer = Writer(lambda: Store(path))
    writer.start()
    reader = Store.open_reader(path)
    runner: SinkRunner | None = None
    task: asyncio.Task[None] | None = None
    if with_runner:
        notifier = ChangeNotifier()
        writer.call(lambda store: store.recorder.add_listener(notifier.notify_threadsafe))
        log = WriterChangeLog(lambda fn: writer.run(lambda store: fn(store.conn)), reader)
        # Retried every few tens of milliseconds rather than minutes, so the failure path runs
        # thousands of times while the log grows.
        runner = SinkRunner(
            DownSink(),
            log,
            notifier,
            on_failure=OnFailure.BLOCK,
            start=Start.BEGINNING,
            backoff=Backoff(initial=0.005, maximum=0.02),
        )
        task = asyncio.create_task(runner.run())
    samples: list[tuple[int, int]] = []
    done = 0
    step = 100_000
    with Clocks() as clocks:
        while done < total:
            start = done % records
            version = done // records + 1
            items = changes(range(start, start + batch), version)
            await writer.run(lambda store, items=items: apply_batch(store, items, synced_at=format_epoch()))
            done += batch
            if done % step == 0:
                samples.append((done, rss_bytes()))
    attempts = 0
    if runner is not None and task is not None:
        attempts = runner.state.attempts
        runner.stop()
        await task
        if runner.state.delivered != 0:
            raise RuntimeError("the down sink moved its offset")
    head = await writer.run(lambda store: changelog.head(store.conn))
    reader.close()
    writer.stop()
    if head != total:
        raise RuntimeError(f"the log holds {head} changes, expected {total}")
    return {"samples": samples, "attempts": attempts, "seconds": clocks.wall, "cpu": clocks.cpu}


def rss_child(args: argparse.Namespace) -> None:
    logging.getLogger("syncd.feed").setLevel(logging.ERROR)  # the down sink's warnings
    with tempfile.TemporaryDirectory(prefix="bench-feed-rss-") as tmp:
        result = run_async(
            grow_log(Path(tmp) / "rss.db", args.changes, args.batch, args.records, args.rss_child == "runner")
        )
    print(json.dumps(result))


def run_rss_child(mode: str, total: int, batch: int, records: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", mode, "--changes", str(total), "--batch", str(batch),
         "--records", str(records)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"rss {mode}: exit {out.returncode}: {out.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_rss(total: int, batch: int, records: int) -> tuple[list[dict[str, Any]], list[str]]:
    base = run_rss_child("none", total, batch, records)
    down = run_rss_child("runner", total, batch, records)

    def summary(result: dict[str, Any]) -> tuple[float, float, float]:
        values = [rss / MB for _, rss in result["samples"]]
        return values[0], values[-1], max(values)

    first, last, peak = summary(down)
    base_first, base_last, base_peak = summary(base)
    growth = last - first
    figures = [
        figure(
            f"RSS growth, sink down, log +{total:,} changes (last - first sample)",
            growth,
            "MB",
            baseline="the same appends, no runner",
            baseline_value=base_last - base_first,
            ratio=last / base_last,
            target=f"< {RSS_GROWTH_TARGET_MB:.0f} MB and < +10%",
            met=growth < RSS_GROWTH_TARGET_MB and last <= first * 1.1,
        ),
        figure(
            "RSS at the last sample, sink down",
            last,
            "MB",
            baseline="no runner",
            baseline_value=base_last,
        ),
        figure("RSS peak, sink down", peak, "MB", baseline="no runner", baseline_value=base_peak),
    ]
    notes = [
        f"rss: {total:,} changes appended through the writer thread as updates of {records:,} orders in "
        f"batches of {batch:,} (apply_batch, log on), each side in a fresh process; the runner "
        "(on_failure=block, WriterChangeLog on a reader connection) retried every 5-20 ms, "
        f"{down['attempts']:,} failed attempts on its first batch",
        "rss samples every 100,000 changes (MB), sink down: "
        + ", ".join(f"{rss / MB:.1f}" for _, rss in down["samples"]),
        "rss samples, no runner: " + ", ".join(f"{rss / MB:.1f}" for _, rss in base["samples"]),
        f"rss: appends took {down['seconds']:.0f}s with the runner, {base['seconds']:.0f}s without",
    ]
    return figures, notes


# -- driver -------------------------------------------------------------------------------------


def machine_note() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"measured {today}, {os.cpu_count()} cores shared with other work (load average {load})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    parser.add_argument("--parts", default="apply,sinks,rss", help="comma-separated: apply, sinks, rss")
    parser.add_argument("--apply-records", type=int, default=20_000, help="orders per apply phase")
    parser.add_argument("--apply-rounds", type=int, default=5)
    parser.add_argument(
        "--apply-collector",
        choices=("daemon", "default"),
        default="daemon",
        help="garbage-collector settings of the apply part: syncd run's (default) or CPython's",
    )
    parser.add_argument("--sink-changes", type=int, default=20_000, help="changes in the sinks' log")
    parser.add_argument("--sink-rounds", type=int, default=2)
    parser.add_argument("--changes", type=int, default=1_000_000, help="rss: changes appended")
    parser.add_argument("--batch", type=int, default=5_000, help="rss: changes per apply_batch")
    parser.add_argument("--records", type=int, default=20_000, help="rss: orders updated in turn")
    parser.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", choices=("runner", "none"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0
    if args.rss_child:
        rss_child(args)
        return 0
    if args.quick:
        args.apply_records, args.apply_rounds, args.sink_changes, args.sink_rounds = 2_000, 2, 2_000, 2
        args.changes, args.batch, args.records = 200_000, 5_000, 20_000
    parts = set(args.parts.split(","))
    figures: list[dict[str, Any]] = []
    notes = [machine_note()]
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        steps: list[tuple[str, Callable[[], tuple[list[dict[str, Any]], list[str]]]]] = [
            (
                "apply",
                lambda: bench_apply_log(
                    Path(tmp), args.apply_records, args.apply_rounds, collector=args.apply_collector
                ),
            ),
            ("sinks", lambda: run_async(bench_sinks(Path(tmp), args.sink_changes, args.sink_rounds))),
            ("rss", lambda: bench_rss(args.changes, args.batch, args.records)),
        ]
        for part, step in steps:
            if part not in parts:
                continue
            print(f"bench_feed: {part} ...", file=sys.stderr, flush=True)
            more_figures, more_notes = step()
            figures += more_figures
            notes += more_notes
    print(json.dumps({"name": "change feed", "figures": figures, "notes": notes}))
    return 0


def run_async(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


if __name__ == "__main__":
    sys.exit(main())
