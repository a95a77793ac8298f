"""A Standard Webhooks receiver on 127.0.0.1, served from threads, for tests that drive an
http sink from another thread or another process (the CLI, a real daemon).

Every request is verified against the sink's secret and recorded as (seq, webhook-id,
verified); `answer(seq, verified)` picks the status, or None to hold the request open until
`close()` (the connection then dies with the client, as when the daemon is killed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from standardwebhooks import Webhook


class SinkRequest(NamedTuple):
    seq: int
    webhook_id: str
    verified: bool


def _ok_if_verified(seq: int, verified: bool) -> int | None:
    return 200 if verified else 401


class SinkReceiver:
    def __init__(self, secret: str, answer: Callable[[int, bool], int | None] = _ok_if_verified) -> None:
        self.requests: list[SinkRequest] = []
        #: Seqs answered 2xx, in the order they were answered.
        self.delivered: list[int] = []
        self._answer = answer
        self._release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(secret).verify(raw, headers)
                    verified = True
                except Exception:
                    verified = False
                seq = int(json.loads(raw)["seq"])
                with receiver._lock:
                    receiver.requests.append(SinkRequest(seq, headers.get("webhook-id", ""), verified))
                status = receiver._answer(seq, verified)
                if status is None:
                    receiver._release.wait(60)
                    return
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.delivered.append(seq)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
