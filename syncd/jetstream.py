"""The connection to a NATS JetStream cluster, shared by `syncd receive`, the consumer of
`syncd run` and the `nats` sink: `JetStreamLink` connects (retrying for as long as it
takes, in the background, so a process starts whether or not the cluster is up) and then
makes sure the streams it uses exist.

A stream that is missing is created with file storage, `[nats] replicas`, the
`duplicate_window` and limits retention with `max_age`; a stream that exists is used as it
is, never updated: its operator may have sized it differently on purpose. Two processes
creating the same stream at once is harmless (JetStream takes an identical create as a
no-op; a different one fails and the stream that won is used).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from syncd.config_nats import NatsConfig

log = logging.getLogger(__name__)

INBOX_SUBJECT_PREFIX: Final = "syncd.inbox"
CHANGES_SUBJECT_PREFIX: Final = "syncd.changes"
#: The header JetStream deduplicates published messages by.
MSG_ID: Final = "Nats-Msg-Id"

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stream syncd uses: its name, the subjects it is created with, and their max age."""

    name: str
    subjects: tuple[str, ...]
    max_age: float
    #: Created allowing atomic batch publishes (the nats sink's fast path).
    atomic: bool = False


def inbox_stream(cfg: NatsConfig, max_age: float) -> StreamSpec:
    return StreamSpec(cfg.inbox_stream, (f"{INBOX_SUBJECT_PREFIX}.>",), max_age)


def changes_stream(cfg: NatsConfig, max_age: float) -> StreamSpec:
    return StreamSpec(cfg.changes_stream, (f"{CHANGES_SUBJECT_PREFIX}.>",), max_age, atomic=True)


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, cfg: NatsConfig) -> bool:
    """Create `spec` if it is missing; True when this call created it."""
    try:
        await js.stream_info(spec.name)
        return False
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        duplicate_window=cfg.duplicate_window,
        max_age=spec.max_age,
        discard=DiscardPolicy.OLD,
        allow_atomic=spec.atomic or None,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        # "stream name already in use": another process created it first; use theirs.
        if exc.err_code != 10058:
            raise
        return False
    log.info(
        "created JetStream stream %s (subjects %s, %d replicas)",
        spec.name,
        ", ".join(spec.subjects),
        cfg.replicas,
    )
    return True


class JetStreamLink:
    """One NATS connection and its JetStream context. `start()` returns at once; `js` is
    None until connected and every stream in `streams` exists. nats-py reconnects by itself
    after that (publishes made while it does wait in its buffer, bounded by the caller's
    timeouts)."""

    def __init__(
        self,
        cfg: NatsConfig,
        token: str | None,
        streams: Sequence[StreamSpec],
        *,
        name: str,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.cfg = cfg
        self._token = token
        self._streams = tuple(streams)
        self._name = name
        self._sleep = sleep
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        #: Why the link is not usable, for /readyz and logs; None when it is.
        self.problem: str | None = "connecting to NATS"

    @property
    def js(self) -> JetStreamContext | None:
        return self._js

    @property
    def client(self) -> Client | None:
        return self._nc

    @property
    def connected(self) -> bool:
        """Connected now, and the streams were made sure of."""
        return self._js is not None and self._nc is not None and self._nc.is_connected

    def status(self) -> str | None:
        """None when usable, else why not."""
        if self._js is not None and self._nc is not None and not self._nc.is_connected:
            return "NATS connection lost, reconnecting"
        return None if self.connected else self.problem

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name=f"{self._name}-nats-connect")

    async def wait_ready(self, within: float | None = None) -> JetStreamContext:
        async with asyncio.timeout(within):
            await self._ready.wait()
        assert self._js is not None
        return self._js

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports every failed (re)connect attempt here; the first few are enough.
        self.problem = f"NATS: {type(exc).__name__}: {exc}"
        log.debug("nats (%s): %s", self._name, self.problem)

    async def _on_disconnected(self) -> None:
        if self._js is not None:
            log.warning("nats (%s): disconnected, reconnecting", self._name)

    async def _on_reconnected(self) -> None:
        nc = self._nc
        url = nc.connected_url.netloc if nc is not None and nc.connected_url is not None else "?"
        log.info("nats (%s): reconnected to %s", self._name, url)

    async def _connect(self) -> None:
        cfg = self.cfg
        self._nc = await nats.connect(
            servers=list(cfg.servers),
            name=self._name,
            token=self._token,
            user_credentials=cfg.credentials_file,
            connect_timeout=int(max(1, round(cfg.connect_timeout))),
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        js = self._nc.jetstream(timeout=max(2.0, cfg.connect_timeout))
        attempt = 0
        for spec in self._streams:
            while True:
                try:
                    await ensure_stream(js, spec, cfg)
                    break
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    # A cluster still electing its leader answers "no responders" or times out.
                    attempt += 1
                    self.problem = f"cannot make sure stream {spec.name} exists: {type(exc).__name__}: {exc}"
                    if attempt <= 3 or attempt % 20 == 0:
                        log.warning("nats (%s): %s; retrying", self._name, self.problem)
                    await self._sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))
        self._js = js
        self.problem = None
        self._ready.set()
        url = self._nc.connected_url.netloc if self._nc.connected_url is not None else "?"
        log.info(
            "nats (%s): connected to %s, streams %s",
            self._name,
            url,
            ", ".join(s.name for s in self._streams),
        )
