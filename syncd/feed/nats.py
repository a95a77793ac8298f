"""The `nats` sink: each change published to the changes stream on
`syncd.changes.<resource>.<event>` (e.g. `syncd.changes.orders.order.shipped`), with
`Nats-Msg-Id: <mirror>-<seq>`.

A whole batch is in flight at once, and `deliver` returns only once JetStream has
acknowledged all of it: the runner moves the offset past a batch only then.

- Fast path: JetStream's atomic batch publish (nats-server 2.12+, a stream with
  `allow_atomic`, as syncd creates it): up to 1000 changes published without replies and
  committed by the last one, which gets one PubAck for the batch. All or nothing: a batch
  cut short (a crash, a lost connection, a leader change) is abandoned whole by the server.
- One by one: every change its own PubAck (nats-py's async publish, all in flight). Used
  for a batch JetStream refuses atomically because it holds a Msg-Id the stream already has
  (a redelivery after a crash or a timeout: the copies it holds are dropped as duplicates
  one by one), and for good once a stream says it does not allow atomic batches (a stream
  that existed, which syncd does not alter). When some fail, the ones before the first
  failure count as delivered.

Either way each change is in the stream once (same Msg-Id within the duplicate window).
Atomic batches cost the client one publish without a reply per change, written as prebuilt
frames (`batch_frames`): about twice the changes/s of nats-py publishing with a PubAck each
(bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from typing import Final

import nats.errors
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from syncd.core.changes import Change
from syncd.feed.base import SinkError
from syncd.jetstream import CHANGES_SUBJECT_PREFIX, MSG_ID, JetStreamLink

log = logging.getLogger(__name__)

#: JetStream's default cap on the messages of one atomic batch.
ATOMIC_MAX: Final = 1000
BATCH_ID, BATCH_SEQUENCE, COMMIT = "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit"
ERR_ATOMIC_DISABLED: Final = 10174
ERR_DUPLICATE_IN_BATCH: Final = 10201
#: The first line of a NATS header block.
_HDR_LINE: Final = "NATS/1.0\r\n"


def _batch_headers(change: Change, batch_id: str, index: int) -> dict[str, str]:
    return {MSG_ID: change.webhook_id, BATCH_ID: batch_id, BATCH_SEQUENCE: str(index + 1)}


def subject_of(change: Change) -> str:
    return f"{CHANGES_SUBJECT_PREFIX}.{change.resource}.{change.event}"


def batch_frames(changes: Sequence[Change], batch_id: str) -> bytes:
    """The HPUB frames of an atomic batch's messages before its commit, as one buffer: the
    bytes nats-py's `publish` would write for each, with the same three headers.

    Why by hand: nats-py validates and encodes every header of every message (a regex, a
    strip and a translate per header, a bytearray grown piece by piece), which was about
    70% of the sink's CPU (bench/RESULTS.md). Every part of these frames is syncd's own
    and safe by construction: subjects are built from resource and event names of a fixed
    table, header values are a UUID with a seq, a hex batch id and a number, so there is
    nothing to validate. `tests/feed/test_nats_sink.py` checks the frames byte for byte
    against nats-py's own encoding."""
    prefix = f"{_HDR_LINE}{MSG_ID}: "
    batch = f"\r\n{BATCH_ID}: {batch_id}\r\n{BATCH_SEQUENCE}: "
    parts: list[bytes] = []
    for index, change in enumerate(changes):
        header = f"{prefix}{change.webhook_id}{batch}{index + 1}\r\n\r\n".encode()
        payload = change.to_json()
        hdr_len = len(header)
        # Two spaces: an empty reply subject, as nats-py writes it.
        parts.append(
            f"HPUB {CHANGES_SUBJECT_PREFIX}.{change.resource}.{change.event}  {hdr_len}"
            f" {hdr_len + len(payload)}\r\n".encode()
        )
        parts.append(header)
        parts.append(payload)
        parts.append(b"\r\n")
    return b"".join(parts)


async def publish_frames(nc: Client, frames: bytes) -> None:
    """Queue prebuilt publish frames on `nc`'s outgoing buffer and kick its flusher: what
    `Client.publish` does after encoding a message, for many messages at once. The
    connection's own buffer keeps its reconnect and flush behaviour (frames queued while
    it reconnects are sent after it reconnects, or the batch's commit request fails and the
    server abandons the batch whole)."""
    if not frames:
        return
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    await nc._send_command(frames)
    await nc._flush_pending()


class NatsSink:
    """Publishes to `link`'s changes stream (`stream`), a batch at a time, bounded by
    `timeout` for the whole batch's PubAcks. The sink owns `link`: it connects on the first
    delivery and `aclose()` closes it."""

    def __init__(
        self, name: str, link: JetStreamLink, stream: str, *, timeout: float = 10.0, atomic: bool = True
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"sink {name!r}: timeout must be > 0 seconds, got {timeout}")
        self._name = name
        self._link = link
        self._stream = stream
        self.timeout = timeout
        #: Publish batches atomically (one PubAck each) while the stream allows it.
        self.atomic = atomic

    @property
    def name(self) -> str:
        return self._name

    async def deliver(self, batch: Sequence[Change]) -> None:
        await self._link.start()
        try:
            js = await self._link.wait_ready(self.timeout)
        except TimeoutError:
            raise SinkError(self._name, self._link.status() or "not connected to NATS") from None
        nc = self._link.client
        done = 0
        if self.atomic and nc is not None:
            while done < len(batch):
                chunk = batch[done : done + ATOMIC_MAX]
                if not await self._atomic(nc, chunk, done):
                    break
                done += len(chunk)
        if done < len(batch):
            try:
                await self._one_by_one(js, batch[done:])
            except SinkError as exc:
                raise SinkError(self._name, exc.reason, delivered=done + exc.delivered) from None

    async def _atomic(self, nc: Client, chunk: Sequence[Change], done: int) -> bool:
        """Publish `chunk` as one atomic batch; True once JetStream committed it, False when
        it must go one by one (a redelivery: the batch holds a Msg-Id the stream has; or a
        stream that does not allow atomic batches, from then on)."""
        batch_id = secrets.token_hex(16)  # JetStream caps batch ids at 64 characters
        last = len(chunk) - 1
        try:
            async with asyncio.timeout(self.timeout):
                await publish_frames(nc, batch_frames(chunk[:last], batch_id))
                headers = {**_batch_headers(chunk[last], batch_id, last), COMMIT: "1"}
                reply = await nc.request(
                    subject_of(chunk[last]), chunk[last].to_json(), timeout=self.timeout, headers=headers
                )
        except (TimeoutError, nats.errors.Error) as exc:
            # Not committed (a batch cut short is abandoned whole): nothing of it counts.
            raise SinkError(
                self._name,
                f"seq {chunk[0].seq}: batch of {len(chunk)} not committed: {type(exc).__name__}: {exc}",
                delivered=done,
            ) from None
        answer = orjson.loads(reply.data)
        error = answer.get("error") if isinstance(answer, dict) else {"description": "unreadable PubAck"}
        if error is None:
            return True
        code = error.get("err_code")
        if code == ERR_DUPLICATE_IN_BATCH:
            return False
        if code == ERR_ATOMIC_DISABLED:
            log.info(
                "sink %s: stream %s does not allow atomic batches; publishing one by one",
                self._name,
                self._stream,
            )
            self.atomic = False
            return False
        raise SinkError(
            self._name, f"seq {chunk[0].seq}: batch refused: {error.get('description')}", delivered=done
        )

    async def _one_by_one(self, js: JetStreamContext, batch: Sequence[Change]) -> None:
        futures: list[asyncio.Future[PubAck]] = []
        try:
            async with asyncio.timeout(self.timeout):
                for change in batch:
                    futures.append(
                        await js.publish_async(
                            subject_of(change),
                            change.to_json(),
                            headers={MSG_ID: change.webhook_id},
                            stream=self._stream,
                        )
                    )
                await asyncio.wait(futures)
        except TimeoutError:
            pass
        except Exception as exc:
            _cancel(futures)
            raise SinkError(
                self._name, f"publishing seq {batch[len(futures)].seq}: {type(exc).__name__}: {exc}"
            ) from None
        except asyncio.CancelledError:
            _cancel(futures)
            raise
        for index, future in enumerate(futures):
            if future.done() and future.exception() is None:
                continue
            error = future.exception() if future.done() else None
            _cancel(futures[index:])
            why = f"{type(error).__name__}: {error}" if error else f"no PubAck within {self.timeout:g} s"
            raise SinkError(self._name, f"seq {batch[index].seq}: {why}", delivered=index)
        if len(futures) < len(batch):
            raise SinkError(
                self._name,
                f"seq {batch[len(futures)].seq}: not published within {self.timeout:g} s",
                delivered=len(futures),
            )

    async def aclose(self) -> None:
        await self._link.close()


def _cancel(futures: Sequence[asyncio.Future[PubAck]]) -> None:
    for future in futures:
        if not future.done():
            future.cancel()
        else:
            # Read, so that asyncio does not log "exception was never retrieved".
            with contextlib.suppress(BaseException):
                future.exception()
