"""Per-stage timestamps inside a `syncd run` for bench_feed_latency.py's `--trace`.

Loaded into the daemon through a `sitecustomize` on its PYTHONPATH (so syncd itself carries
no tracing code), it wraps the functions each change passes through and, at exit, writes
every timestamp (CLOCK_MONOTONIC, the sender's clock too) as JSON to `$SYNCD_BENCH_TRACE`:

- `icommit`: event ids of an inbox group commit, when it committed (writer thread)
- `ack`: event ids, when the event loop resolved their waiters (the 2xx goes out next)
- `apply`: the worker's apply job: queued, started, committed, with each event's
  (record id, version)
- `defer`: how long the worker held back while the receiver counted as saturated
- `notify`: when the writer asked to wake the runners, and when the loop did
- `read`: the runner's reads of the log: started, returned, first and last seq
- `post`: each http request: seq, record id, version, started, answered
- `jobs`: every writer job: name, queued, started, ended
- `gc`: collections: generation, start, end
- `lag`: event loop wake-ups later than 5 ms: when, and by how much
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

now = time.monotonic
trace: dict[str, list[Any]] = {
    k: [] for k in ("icommit", "ack", "apply", "defer", "notify", "read", "post", "jobs", "gc", "lag")
}


def _name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{getattr(fn, '__module__', '')}.{name}"


def install() -> None:
    from syncd.feed import http, log, notifier
    from syncd.push import inbox, inbox_worker
    from syncd.service import daemon
    from syncd.store import writer

    # -- writer jobs ------------------------------------------------------------------
    submit = writer.Writer.submit

    def traced_submit(self: Any, fn: Callable[..., Any], *args: Any) -> Any:
        queued = now()

        def job(store: Any, *a: Any) -> Any:
            started = now()
            try:
                return fn(store, *a)
            finally:
                trace["jobs"].append((_name(fn), queued, started, now()))

        return submit(self, job, *args)

    writer.Writer.submit = traced_submit  # type: ignore[method-assign]

    # -- inbox group commit and acks ----------------------------------------------------
    commit_deliveries = inbox.commit_deliveries

    def traced_commit(store: Any, deliveries: Any) -> Any:
        result = commit_deliveries(store, deliveries)
        trace["icommit"].append((now(), [d.event_id for d in deliveries]))
        return result

    inbox.commit_deliveries = traced_commit

    answer = inbox.Inbox._answer

    def traced_answer(self: Any, batch: Any, results: Any, error: Any) -> None:
        trace["ack"].append((now(), [w.delivery.event_id for w in batch]))
        answer(self, batch, results, error)

    inbox.Inbox._answer = traced_answer  # type: ignore[method-assign]

    # -- the worker's apply -------------------------------------------------------------
    commit_outcomes = inbox_worker.commit_outcomes
    process = inbox_worker.InboxWorker._process

    async def traced_process(self: Any, rows: Any) -> None:
        queued: list[float] = []

        def outcomes(store: Any, settled: Any, t: float) -> Any:
            started = now()
            result = commit_outcomes(store, settled, t)
            keys = [
                (s.item.event_id, s.change.id, s.change.version) if s.change is not None else None
                for s in settled
            ]
            trace["apply"].append((queued[0], started, now(), keys))
            return result

        run = self._writer.run

        async def run_traced(fn: Any, *args: Any) -> Any:
            if fn is commit_outcomes:
                queued.append(now())
                return await run(outcomes, *args)
            return await run(fn, *args)

        self._writer.run = run_traced
        try:
            await process(self, rows)
        finally:
            del self._writer.run

    inbox_worker.InboxWorker._process = traced_process  # type: ignore[method-assign]

    deferred = inbox_worker.InboxWorker._deferred

    def traced_deferred(self: Any) -> float:
        seconds = deferred(self)
        if seconds > 0:
            trace["defer"].append((now(), seconds))
        return seconds

    inbox_worker.InboxWorker._deferred = traced_deferred  # type: ignore[method-assign]

    # -- waking the runners ---------------------------------------------------------------
    notify_threadsafe = notifier.ChangeNotifier.notify_threadsafe
    notify = notifier.ChangeNotifier.notify

    def traced_notify_threadsafe(self: Any) -> None:
        trace["notify"].append(("writer", now()))
        notify_threadsafe(self)

    def traced_notify(self: Any) -> None:
        trace["notify"].append(("loop", now()))
        notify(self)

    notifier.ChangeNotifier.notify_threadsafe = traced_notify_threadsafe  # type: ignore[method-assign]
    notifier.ChangeNotifier.notify = traced_notify  # type: ignore[method-assign]

    # -- the runner's reads and the sink's requests --------------------------------------
    read_after = log.WriterChangeLog.read_after

    async def traced_read(self: Any, seq: int, limit: int) -> Any:
        started = now()
        batch = await read_after(self, seq, limit)
        if batch:
            trace["read"].append((started, now(), batch[0].seq, batch[-1].seq))
        return batch

    log.WriterChangeLog.read_after = traced_read  # type: ignore[method-assign]

    post = http.HttpSink._post

    async def traced_post(self: Any, change: Any) -> None:
        started = now()
        await post(self, change)
        trace["post"].append((change.seq, change.record_id, change.version, started, now()))

    http.HttpSink._post = traced_post  # type: ignore[method-assign]

    # -- the collector and the event loop ------------------------------------------------
    gc_started: dict[int, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if phase == "start":
            gc_started[0] = now()
        elif 0 in gc_started:
            trace["gc"].append((info["generation"], gc_started.pop(0), now()))

    gc.callbacks.append(on_gc)

    async def watch_lag() -> None:
        while True:
            before = now()
            await asyncio.sleep(0.001)
            late = now() - before - 0.001
            if late > 0.005:
                trace["lag"].append((before, late))

    serve = daemon.Daemon.serve

    async def traced_serve(self: Any) -> int:
        watcher = asyncio.get_running_loop().create_task(watch_lag())
        try:
            return await serve(self)
        finally:
            watcher.cancel()

    daemon.Daemon.serve = traced_serve  # type: ignore[method-assign]

    path = os.environ["SYNCD_BENCH_TRACE"]

    def dump() -> None:
        with open(path, "w") as f:
            json.dump(trace, f)

    atexit.register(dump)


# -- reading a trace (in the benchmark's process) -----------------------------------------


def sitecustomize_dir(parent: str) -> str:
    """A directory holding a `sitecustomize` that installs this tracer; put it on the
    daemon's PYTHONPATH with SYNCD_BENCH_TRACE set."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(parent, "trace-site")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "sitecustomize.py"), "w") as f:
        f.write(f"import sys\nsys.path.insert(0, {here!r})\nimport feed_trace\nfeed_trace.install()\n")
    return path


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


#: The stages of one change, in order; each row of the report is the time between two.
STAGES = (
    "sent",
    "inbox commit",
    "ack on loop",
    "apply queued",
    "apply started",
    "apply committed",
    "runner woken",
    "read started",
    "read returned",
    "post started",
    "arrived",
)


def analyse(
    trace: dict[str, list[Any]],
    sent: dict[tuple[Any, int], float],
    arrived: dict[tuple[Any, int], float],
    window: tuple[float, float],
) -> dict[str, Any]:
    """Per-stage p50/p99/max (ms) of the changes sent in `window` (monotonic), which stage
    the slowest 1% spent their time in, and what else ran meanwhile."""
    import bisect

    icommit = {e: t for t, ids in trace["icommit"] for e in ids}
    ack = {e: t for t, ids in trace["ack"] for e in ids}
    applied: dict[tuple[Any, int], tuple[str, float, float, float]] = {}
    for queued, started, done, keys in trace["apply"]:
        for k in keys:
            if k is not None:
                applied.setdefault((k[1], int(k[2])), (k[0], queued, started, done))
    woken = sorted(t for who, t in trace["notify"] if who == "loop")
    reads = sorted(trace["read"])
    read_starts = [r[0] for r in reads]
    posts: dict[tuple[Any, int], tuple[int, float, float]] = {}
    for seq, rid, version, started, done in trace["post"]:
        posts.setdefault((rid, int(version)), (seq, started, done))
    rows: list[dict[str, float]] = []
    for key, t_sent in sent.items():
        if not window[0] <= t_sent <= window[1] or key not in arrived or key not in applied:
            continue
        event_id, queued, started, done = applied[key]
        if key not in posts or event_id not in icommit:
            continue
        seq, post_started, _ = posts[key]
        i = bisect.bisect_left(woken, done)
        t_woken = woken[i] if i < len(woken) else float("nan")
        # The first read that returned this seq.
        j = bisect.bisect_left(read_starts, done - 1.0)
        read = next((r for r in reads[j:] if r[2] <= seq <= r[3]), None)
        if read is None:
            continue
        rows.append(
            dict(
                zip(
                    STAGES,
                    (
                        t_sent,
                        icommit[event_id],
                        ack.get(event_id, float("nan")),
                        queued,
                        started,
                        done,
                        t_woken,
                        read[0],
                        read[1],
                        post_started,
                        arrived[key],
                    ),
                    strict=True,
                )
            )
        )
    report: dict[str, Any] = {"changes": len(rows), "stages": {}}
    total = [(r["arrived"] - r["sent"]) * 1000 for r in rows]
    slow_bound = _q(total, 0.99)
    slow = [r for r, t in zip(rows, total, strict=True) if t >= slow_bound]
    for a, b in itertools.pairwise(STAGES):
        # Some stages overlap (a read can start before a wake-up it did not need): the
        # increments are shown as measured, negative ones as 0.
        d = [max(0.0, (r[b] - r[a]) * 1000) for r in rows if r[b] == r[b]]
        s = [max(0.0, (r[b] - r[a]) * 1000) for r in slow if r[b] == r[b]]
        report["stages"][f"{a} -> {b}"] = {
            "p50": round(_q(d, 0.5), 2),
            "p99": round(_q(d, 0.99), 2),
            "max": round(max(d, default=float("nan")), 1),
            "slowest 1% mean": round(sum(s) / len(s), 1) if s else None,
        }
    report["total"] = {"p50": round(_q(total, 0.5), 1), "p99": round(slow_bound, 1)}
    lo, hi = window
    gcs = [(g, (e - s) * 1000) for g, s, e in trace["gc"] if lo <= s <= hi]
    report["gc"] = {
        f"gen{g}": {
            "count": sum(1 for x, _ in gcs if x == g),
            "max_ms": round(max((d for x, d in gcs if x == g), default=0.0), 1),
            "total_ms": round(sum(d for x, d in gcs if x == g), 1),
        }
        for g in (0, 1, 2)
    }
    lags = [late * 1000 for t, late in trace["lag"] if lo <= t <= hi]
    report["loop late > 5 ms"] = {"count": len(lags), "max_ms": round(max(lags, default=0.0), 1)}
    defers = [t for t, _ in trace["defer"] if lo <= t <= hi]
    report["worker deferred (checks)"] = len(defers)
    jobs: dict[str, list[tuple[float, float]]] = {}
    for name, queued, started, ended in trace["jobs"]:
        if lo <= queued <= hi:
            jobs.setdefault(name.rsplit(".", 3)[-1] if "<lambda>" not in name else name, []).append(
                ((started - queued) * 1000, (ended - started) * 1000)
            )
    report["writer jobs"] = {
        name: {
            "count": len(v),
            "wait p99": round(_q([w for w, _ in v], 0.99), 1),
            "run p50": round(_q([r for _, r in v], 0.5), 2),
            "run p99": round(_q([r for _, r in v], 0.99), 1),
            "run max": round(max(r for _, r in v), 1),
        }
        for name, v in sorted(jobs.items(), key=lambda kv: -sum(r for _, r in kv[1]))[:8]
    }
    # The sink's own view of its requests: how long each took from its start to the answer
    # being read (what the sink's loop and the GIL add shows here, not in the arrival), and
    # how long from one answer to the next request's start (a saturated sink's overhead).
    requests = sorted((s, d) for _, _, _, s, d in trace["post"] if lo <= s <= hi)
    took = [(d - s) * 1000 for s, d in requests]
    gaps = [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(requests)]
    report["sink requests"] = {
        "count": len(requests),
        "per second": round(len(requests) / (hi - lo), 1) if hi > lo else None,
        "started -> answered p50": round(_q(took, 0.5), 3),
        "started -> answered p99": round(_q(took, 0.99), 2),
        "answered -> next started p50": round(_q(gaps, 0.5), 3),
    }
    batches = [r[3] - r[2] + 1 for r in reads if lo <= r[0] <= hi]
    report["read batch size"] = {
        "count": len(batches),
        "p50": _q(batches, 0.5),
        "max": max(batches, default=0),
    }
    return report
