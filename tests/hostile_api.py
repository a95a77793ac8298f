"""A small Pet Store API on 127.0.0.1 that follows the contract except for one fault a test
sets: raw asyncio HTTP/1.1, so a test can drip bytes, lie about lengths, serve TLS with its
own certificate, or answer with a record other than the one asked for.

Listing: `GET /v1/{resource}?since&limit&cursor`, ordered by (updatedAt, id), the cursor an
offset. One record: `GET /v1/{resource}/{id}`, the id percent-decoded. Every request is
recorded with its raw target and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/v1"


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


#: A fault: given the request, write an answer and return True, or return False to let the
#: contract answer.
Fault = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


def http_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}
    head.update(headers or {})
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def page_body(records: list[dict[str, Any]], next_cursor: str | None) -> bytes:
    return json.dumps(
        {"data": records, "has_more": next_cursor is not None, "next_cursor": next_cursor}
    ).encode()


@dataclass
class HostileApi:
    ssl_context: ssl.SSLContext | None = None
    records: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {"orders": {}, "customers": {}, "inventory": {}}
    )
    seen: list[Seen] = field(default_factory=list)
    fault: Fault | None = None
    #: Connections whose answer was cut off because the client went away.
    cut_off: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> HostileApi:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{PREFIX}"

    async def close(self) -> None:
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (on the condition, never a fixed time) for the server to get somewhere."""
        async with asyncio.timeout(30):
            while not condition():
                await asyncio.sleep(0.005)

    def put(self, resource: str, record: dict[str, Any]) -> None:
        self.records[resource][str(record["id"])] = record

    def gets(self, resource: str) -> list[Seen]:
        """Requests for one record of `resource`."""
        return [s for s in self.seen if s.path.startswith(f"{PREFIX}/{resource}/")]

    def listings(self, resource: str) -> list[Seen]:
        return [s for s in self.seen if s.path == f"{PREFIX}/{resource}"]

    # -- serving ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            seen = Seen(method, target, headers)
            self.seen.append(seen)
            if self.fault is None or not await self.fault(seen, writer):
                writer.write(self.answer(seen))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.cut_off += 1
        except asyncio.CancelledError:
            # The test is over (its loop is closing) while an answer was still dripping.
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    def answer(self, seen: Seen) -> bytes:
        """What the contract says to answer."""
        url = urlsplit(seen.target)
        parts = url.path.removeprefix(PREFIX).split("/")
        if len(parts) == 2 and parts[1] in self.records:
            return http_response(200, self.listing(parts[1], parse_qs(url.query)))
        if len(parts) == 3 and parts[1] in self.records:
            record = self.records[parts[1]].get(unquote(parts[2]))
            if record is None:
                return http_response(404, b'{"error": {"code": "not_found", "message": "no such record"}}')
            return http_response(200, json.dumps(record).encode())
        return http_response(404, b'{"error": {"code": "not_found", "message": "no such path"}}')

    def listing(self, resource: str, query: dict[str, list[str]]) -> bytes:
        since = query.get("since", [None])[0]
        limit = int(query.get("limit", ["100"])[0])
        offset = int(query.get("cursor", ["0"])[0])
        rows = sorted(
            (r for r in self.records[resource].values() if since is None or r["updatedAt"] >= since),
            key=lambda r: (r["updatedAt"], str(r["id"])),
        )
        chunk = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        return page_body(chunk, str(offset + limit) if more else None)


def make_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (an IP address), made with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={host}",
            "-addext", f"subjectAltName=IP:{host}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
