"""Webhook endpoints and the delivery engine: signing, faults, timeouts, the retry schedule.

Deliveries go through one bounded ready queue served by a fixed number of workers sharing one
keep-alive `httpx.AsyncClient`. Retries and deliberately delayed deliveries wait on event-loop
timers, capped in number. Anything that does not fit is dropped and counted, never buffered
without bound.

Pausing is explicit: in "queue" mode nothing is sent and deliveries wait (bounded) until
resumed; in "drop" mode every delivery that comes due while paused is lost for good.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from syncd.contract import TEST_EVENT
from syncd.signatures import sign
from syncd.sim.clock import Clock, format_ms
from syncd.sim.config import FaultConfig, SimConfig
from syncd.sim.stats import Stats

PauseMode = Literal["queue", "drop"]
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def event_id(ms: int, rng: random.Random) -> str:
    """A ULID-shaped id (time-ordered, 26 Crockford base32 chars), 'evt_' prefixed."""
    n = (ms << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        n, digit = divmod(n, 32)
        chars.append(_CROCKFORD[digit])
    return "evt_" + "".join(reversed(chars))


def envelope(eid: str, event: str, timestamp: str, data: bytes) -> bytes:
    return b"".join(
        (
            b'{"eventId":"',
            eid.encode(),
            b'","event":"',
            event.encode(),
            b'","timestamp":"',
            timestamp.encode(),
            b'","data":',
            data,
            b"}",
        )
    )


@dataclass(slots=True)
class Endpoint:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    thin: bool = False
    """Every delivery to this endpoint is thin (sim extension: `"thin": true` at registration)."""
    status: str = "active"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "events": list(self.events), "status": self.status}

    def wants(self, event: str) -> bool:
        return event == TEST_EVENT or event in self.events or "*" in self.events


@dataclass(slots=True)
class Delivery:
    endpoint_id: str
    event_id: str
    event: str
    body: bytes
    attempts: int = 0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


@dataclass
class Dispatcher:
    config: SimConfig
    faults: Callable[[], FaultConfig]
    stats: Stats
    clock: Clock
    rng: random.Random
    """Fault decisions; separate from the workload's so faults do not shift the workload."""
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    paused: PauseMode | None = None

    def __post_init__(self) -> None:
        self._ready: asyncio.Queue[Delivery] = asyncio.Queue(self.config.delivery_queue_size)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_seq = 0
        self._busy = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        n = self.config.delivery_concurrency
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            timeout=self.config.effective_delivery_timeout,
            headers={"User-Agent": "petstore-simulator-webhooks/1"},
        )
        self._workers = [asyncio.create_task(self._work(), name=f"webhook-{i}") for i in range(n)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def pending(self) -> int:
        """Deliveries queued, being sent, or waiting for a retry or delay timer."""
        return self._ready.qsize() + self._busy + len(self._timers)

    def pause(self, mode: PauseMode) -> None:
        self.paused = mode
        self._resumed.clear()

    def resume(self) -> None:
        self.paused = None
        self._resumed.set()

    def drop_scheduled(self) -> int:
        """Give up every waiting retry and delayed delivery (quiescing); returns how many."""
        count = len(self._timers)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.stats.webhooks["dropped_quiesce"] += count
        return count

    # -- endpoints ---------------------------------------------------------------------------

    def register(
        self, url: str, events: tuple[str, ...], *, secret: str | None = None, thin: bool = False
    ) -> Endpoint:
        endpoint = Endpoint(
            id="wh_" + secrets.token_hex(6),
            url=url,
            events=events,
            secret=secret or new_secret(),
            thin=thin,
        )
        self.endpoints[endpoint.id] = endpoint
        ms = int(self.clock.now() * 1000)
        eid = event_id(ms, self.rng)
        body = envelope(eid, TEST_EVENT, format_ms(ms), b"{}")
        self.stats.events[TEST_EVENT] += 1
        # The test event is the contract's confirmation of a registration: no faults on it.
        self._enqueue(Delivery(endpoint.id, eid, TEST_EVENT, body))
        return endpoint

    def unregister(self, endpoint_id: str) -> bool:
        return self.endpoints.pop(endpoint_id, None) is not None

    # -- publishing --------------------------------------------------------------------------

    def publish(self, event: str, eid: str, timestamp: str, data: bytes, thin_data: bytes) -> None:
        """Hand one event to every endpoint that subscribed to it, applying delivery faults."""
        faults = self.faults()
        rng = self.rng
        for endpoint in list(self.endpoints.values()):
            if not endpoint.wants(event):
                continue
            if self.paused == "drop":
                self.stats.webhooks["dropped_paused"] += 1
                continue
            if faults.webhook_drop_rate and rng.random() < faults.webhook_drop_rate:
                self.stats.webhooks["dropped_fault"] += 1
                continue
            thin = endpoint.thin or (faults.thin_event_rate > 0 and rng.random() < faults.thin_event_rate)
            if thin:
                self.stats.webhooks["thin"] += 1
            body = envelope(eid, event, timestamp, thin_data if thin else data)
            delivery = Delivery(endpoint.id, eid, event, body)
            if faults.webhook_delay_rate and rng.random() < faults.webhook_delay_rate:
                self.stats.webhooks["delayed"] += 1
                self._schedule(delivery, rng.uniform(0, faults.webhook_max_delay))
            else:
                self._enqueue(delivery)
            if faults.webhook_duplicate_rate and rng.random() < faults.webhook_duplicate_rate:
                self.stats.webhooks["duplicated"] += 1
                copy = Delivery(endpoint.id, eid, event, body)
                self._schedule(copy, rng.uniform(0, max(faults.webhook_max_delay, 0.5)))

    def _enqueue(self, delivery: Delivery) -> None:
        try:
            self._ready.put_nowait(delivery)
        except asyncio.QueueFull:
            self.stats.webhooks["dropped_overflow"] += 1

    def _schedule(self, delivery: Delivery, delay: float) -> None:
        if len(self._timers) >= self.config.max_scheduled_deliveries:
            self.stats.webhooks["dropped_overflow"] += 1
            return
        loop = self._loop or asyncio.get_running_loop()
        self._timer_seq += 1
        seq = self._timer_seq
        self._timers[seq] = loop.call_later(delay, self._fire, seq, delivery)

    def _fire(self, seq: int, delivery: Delivery) -> None:
        self._timers.pop(seq, None)
        self._enqueue(delivery)

    # -- sending -----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            delivery = await self._ready.get()
            self._busy += 1
            try:
                if self.paused == "drop":
                    self.stats.webhooks["dropped_paused"] += 1
                    continue
                await self._resumed.wait()
                await self._attempt(delivery)
            finally:
                self._busy -= 1

    async def _attempt(self, delivery: Delivery) -> None:
        endpoint = self.endpoints.get(delivery.endpoint_id)
        if endpoint is None:
            self.stats.webhooks["dropped_endpoint_deleted"] += 1
            return
        assert self._client is not None
        headers = sign(
            self.config.scheme,
            endpoint.secret,
            delivery.body,
            msg_id=delivery.event_id,
            timestamp=int(self.clock.now()),
        )
        headers["Content-Type"] = "application/json"
        delivery.attempts += 1
        self.stats.webhooks["attempted"] += 1
        self.stats.webhooks["bytes"] += len(delivery.body)
        ok = False
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(self.config.effective_delivery_timeout):
                response = await self._client.post(endpoint.url, content=delivery.body, headers=headers)
            ok = 200 <= response.status_code < 300
        if ok:
            self.stats.webhooks["succeeded"] += 1
            self.stats.ack(delivery.event_id)
            return
        self.stats.webhooks["failed"] += 1
        delays = self.config.retry_delays
        if delivery.attempts > len(delays):
            self.stats.webhooks["dropped_gave_up"] += 1
            return
        self.stats.webhooks["retried"] += 1
        self._schedule(delivery, delays[delivery.attempts - 1])
