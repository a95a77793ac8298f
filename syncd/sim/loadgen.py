"""A webhook load generator: many signed, unique deliveries, as fast as asked.

The simulator's own sender models a provider's behaviour (faults, retries); this one only
produces volume, for soak tests and benchmarks. Deliveries are order snapshots with
increasing versions over a fixed set of ids, so the mirror's size stays bounded however
many events pass, and it records which deliveries were acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from syncd.signatures import sign
from syncd.sim.clock import format_ms
from syncd.sim.webhooks import envelope

STATUSES = ("placed", "approved", "shipped", "completed")


def delivery(n: int, *, ids: int, id_base: int = 10_000_000, now: float | None = None) -> tuple[str, bytes]:
    """The n-th delivery: event id and body. Record id cycles over `ids`; version grows."""
    ts = format_ms(int((time.time() if now is None else now) * 1000))
    rid = id_base + n % ids
    version = n // ids + 1
    order = {
        "id": rid,
        "customer": f"soak{rid}@example.com",
        "status": STATUSES[version % len(STATUSES)],
        "total": 10.0 + version,
        "currency": "USD",
        "items": [{"product": "Dog Food", "quantity": 1 + version % 3, "unitPrice": 10.0}],
        "createdAt": ts,
        "updatedAt": ts,
        "version": version,
    }
    event_id = f"evt_load_{n:012d}"
    body = envelope(event_id, "order.updated", ts, json.dumps(order, separators=(",", ":")).encode())
    return event_id, body


@dataclass
class LoadResult:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    acked_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def send(
    url: str,
    secret: str,
    count: int,
    *,
    start: int = 0,
    ids: int = 1000,
    concurrency: int = 32,
    rate: float | None = None,
    scheme: str = "petstore",
    keep_ids: bool = False,
    request_timeout: float = 10.0,
) -> LoadResult:
    """Send deliveries `start .. start+count-1`; `rate` (per second) paces them when given."""
    result = LoadResult()
    numbers: Iterator[int] = iter(range(start, start + count))
    began = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for n in numbers:
            if rate:
                delay = began + (n - start) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            event_id, body = delivery(n, ids=ids)
            headers = sign(scheme, secret, body, msg_id=event_id, timestamp=int(time.time()))
            headers["Content-Type"] = "application/json"
            result.sent += 1
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:
                result.failed += 1
                continue
            result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
            if 200 <= response.status_code < 300:
                result.acked += 1
                if keep_ids:
                    result.acked_ids.append(event_id)

    async with httpx.AsyncClient(limits=limits, timeout=request_timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    result.seconds = time.monotonic() - began
    return result
