"""Webhook receiver throughput and latency, with wrk, against two baselines. Prints JSON.

    .venv/bin/python bench/bench_receiver.py [--duration 10] [--connections 64]

Three servers, each in its own process with the same uvicorn settings (uvloop, httptools):
- real:  the syncd receiver, group-commit inbox and inbox worker (synchronous=FULL);
- bare:  a plain Starlette endpoint that checks the HMAC and answers 200 (the ceiling);
- naive: the same checks, then one transaction (and fsync) per delivery before the 200.
wrk replays pre-signed unique deliveries (a Lua script cycling through a file of bodies and
signatures). Then event-to-mirror latency: a client sends to the real receiver at a steady
1,000 events/s and the worker's receipt-to-applied times are collected.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECRET = "bench-secret"
PATH = "/webhooks/petstore"
LUA = r"""
local counter = 0
function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end
function init(args)
   local file, nthreads = args[1], tonumber(args[2])
   reqs = {}
   local i = 0
   for line in io.lines(file) do
      if i % nthreads == tid then
         local sig, body = line:match("^(%x+)\t(.*)$")
         reqs[#reqs + 1] = wrk.format("POST", "__PATH__",
            {["Content-Type"] = "application/json", ["X-Webhook-Signature"] = sig}, body)
      end
      i = i + 1
   end
   idx = 0
end
function request()
   idx = idx % #reqs + 1
   return reqs[idx]
end
function done(summary, latency, requests)
   io.write(string.format(
      '\nJSON{"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def body_for(i: int, prefix: str) -> bytes:
    record = {
        "id": 100_000 + i,
        "customer": f"c{i % 997}@example.com",
        "status": "placed",
        "total": 59.99,
        "currency": "USD",
        "items": [{"product": "Dog Food", "quantity": 2, "unitPrice": 29.995}],
        "createdAt": "2024-01-15T10:30:00.000Z",
        "updatedAt": "2024-01-15T10:30:00.000Z",
        "version": 1,
    }
    env = {
        "eventId": f"evt_{prefix}_{i}",
        "event": "order.created",
        "timestamp": "2024-01-15T10:30:00.123Z",
        "data": record,
    }
    return json.dumps(env, separators=(",", ":")).encode()


def signature(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


# -- servers (run in a child process) ---------------------------------------------------------


def serve(kind: str, port: int, db: str, latencies_out: str | None) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from syncd.config import WebhookConfig
    from syncd.inbox import Inbox
    from syncd.metrics import Metrics
    from syncd.receiver import create_receiver_app, uvicorn_config
    from syncd.store import Store, Writer
    from syncd.worker import InboxWorker

    cfg = WebhookConfig.model_validate(
        {"listen": f"127.0.0.1:{port}", "path": PATH, "rate_limit": "10000000/s"}
    )
    key = SECRET.encode()

    def check(request: Request, body: bytes) -> bool:
        given = request.headers.get("x-webhook-signature", "")
        return hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), given)

    async def main() -> None:
        writer = Writer(lambda: Store(db))
        writer.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        samples: list[float] = []
        if kind == "real":
            metrics = Metrics()

            class Recorder:  # keeps every latency, not just histogram buckets
                def observe(self, value: float) -> None:
                    samples.append(value)

            metrics.event_to_mirror = Recorder()  # type: ignore[assignment]
            inbox = Inbox(writer, metrics=metrics)
            worker = InboxWorker(writer, None, fetch_thin=False, metrics=metrics)
            inbox.add_commit_listener(worker.wake)
            await inbox.start()
            tasks.append(asyncio.create_task(worker.run()))
            app = create_receiver_app(cfg, (SECRET,), inbox, writer, metrics=metrics)
        elif kind == "bare":

            async def bare(request: Request) -> Response:
                body = await request.body()
                if not check(request, body):
                    return JSONResponse({"error": "invalid signature"}, 401)
                return JSONResponse({"status": "accepted"})

            app = Starlette(routes=[Route(PATH, bare, methods=["POST"])])
        else:

            def commit_one(store: Store, event_id: str, body: bytes) -> None:
                with store.db.atomic():
                    store.conn.execute(
                        "INSERT INTO _inbox (event_id, received_at, client, headers, body) VALUES (?, ?, '', '{}', ?)",
                        (event_id, time.time(), body),
                    )
                    store.conn.execute(
                        "INSERT OR IGNORE INTO _events (event_id, outcome, first_seen, last_seen) VALUES (?, 'pending', ?, ?)",
                        (event_id, time.time(), time.time()),
                    )

            async def naive(request: Request) -> Response:
                body = await request.body()
                if not check(request, body):
                    return JSONResponse({"error": "invalid signature"}, 401)
                event_id = json.loads(body)["eventId"]
                await writer.run(commit_one, event_id, body)
                return JSONResponse({"status": "accepted"})

            app = Starlette(routes=[Route(PATH, naive, methods=["POST"])])
        server = uvicorn.Server(uvicorn_config(app, cfg))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        serving = asyncio.create_task(server.serve())
        await stop.wait()
        server.should_exit = True
        await serving
        if kind == "real":
            await asyncio.sleep(0.5)  # let the worker drain
            worker.stop()
            await asyncio.gather(*tasks)
            await inbox.stop()
        writer.stop()
        if latencies_out:
            Path(latencies_out).write_text(json.dumps(samples))

    asyncio.run(main())


# -- driver -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.db = workdir / f"{kind}-{time.monotonic_ns()}.db"
        self.latencies = workdir / f"{kind}-latencies.json"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(self.port), "--db", str(self.db),
             "--latencies", str(self.latencies)],
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{kind} server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def stored_events(self) -> int:
        conn = sqlite3.connect(self.db)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM _events").fetchone()[0])
        finally:
            conn.close()


def run_wrk(
    port: int, data: Path, script: Path, duration: float, connections: int, threads: int
) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}{PATH}", "--", str(data), str(threads)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("JSON{"))
    r: dict[str, Any] = json.loads(line[4:])
    seconds = r["duration_us"] / 1e6
    ok = r["requests"] - r["non2xx"]
    return {
        "requests": r["requests"],
        "acks": ok,
        "non2xx": r["non2xx"],
        "socket_errors": r["errors"],
        "acks_per_s": round(ok / seconds, 1),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
    }


async def steady(port: int, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    import httpx

    total = int(rate * seconds)
    bodies = [body_for(i, prefix) for i in range(total)]
    statuses: list[int] = []
    errors: list[str] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=10) as client:
        url = f"http://127.0.0.1:{port}{PATH}"

        async def one(body: bytes) -> None:
            headers = {"Content-Type": "application/json", "X-Webhook-Signature": signature(body)}
            try:
                r = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                return
            statuses.append(r.status_code)

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i, body in enumerate(bodies):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    return {
        "sent": total,
        "ok": statuses.count(200),
        "errors": len(errors),
        "achieved_rate": round(total / elapsed, 1),
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve")
    ap.add_argument("--port", type=int)
    ap.add_argument("--db")
    ap.add_argument("--latencies")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deliveries", type=int, default=150_000)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--steady-seconds", type=float, default=10)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.db, args.latencies)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        work = Path(tmp)
        script = work / "deliveries.lua"
        script.write_text(LUA.replace("__PATH__", PATH))
        results: dict[str, Any] = {
            "duration_s": args.duration,
            "connections": args.connections,
            "cpus": os.cpu_count(),
        }
        for kind in ("bare", "naive", "real"):
            data = work / f"{kind}.tsv"
            with data.open("wb") as fh:
                for i in range(args.deliveries):
                    body = body_for(i, kind)
                    fh.write(signature(body).encode() + b"\t" + body + b"\n")
            server = Server(kind, work)
            try:
                results[kind] = run_wrk(
                    server.port, data, script, args.duration, args.connections, args.threads
                )
            finally:
                server.stop()
            if kind != "bare":
                results[kind]["stored_events"] = server.stored_events()
            data.unlink()
        ceiling, naive, real = results["bare"], results["naive"], results["real"]
        results["real_vs_ceiling"] = round(real["acks_per_s"] / ceiling["acks_per_s"], 3)
        results["real_vs_naive"] = round(real["acks_per_s"] / naive["acks_per_s"], 2)

        server = Server("real", work)
        try:
            sent = asyncio.run(steady(server.port, args.rate, args.steady_seconds, "steady"))
        finally:
            server.stop()
        samples = json.loads(server.latencies.read_text())
        sent.update(
            {
                "applied": len(samples),
                "event_to_mirror_p50_ms": round(statistics.median(samples) * 1000, 2),
                "event_to_mirror_p99_ms": round(quantile(samples, 0.99) * 1000, 2),
                "event_to_mirror_max_ms": round(max(samples) * 1000, 2),
            }
        )
        results["event_to_mirror"] = sent
        results["targets"] = {
            "real_vs_ceiling>=0.85": results["real_vs_ceiling"] >= 0.85,
            "real_vs_naive>=2.5": results["real_vs_naive"] >= 2.5,
            "real_p99<50ms": real["p99_ms"] < 50,
            "event_to_mirror_p99<50ms": sent["event_to_mirror_p99_ms"] < 50,
        }
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
