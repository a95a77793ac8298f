"""The `nats` sink: each change published to the changes stream on
`syncd.changes.<resource>.<event>` (e.g. `syncd.changes.orders.order.shipped`), with
`Nats-Msg-Id: <mirror>-<seq>`.

A whole batch is in flight at once (nats-py's async publish: one write for many messages,
the PubAcks matched as they come back), and `deliver` returns only when every PubAck is
in: the runner moves the offset past a batch only then. When some fail, the ones before the
first failure count as delivered and the rest is published again; JetStream drops the
copies it already holds (same Msg-Id within its duplicate window), so a redelivery after a
crash or a timeout leaves each change in the stream once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from nats.js.api import PubAck

from syncd.core.changes import Change
from syncd.feed.base import SinkError
from syncd.jetstream import CHANGES_SUBJECT_PREFIX, MSG_ID, JetStreamLink


def subject_of(change: Change) -> str:
    return f"{CHANGES_SUBJECT_PREFIX}.{change.resource}.{change.event}"


class NatsSink:
    """Publishes to `link`'s changes stream (`stream`), a batch at a time, bounded by
    `timeout` for the whole batch's PubAcks. The sink owns `link`: it connects on the first
    delivery and `aclose()` closes it."""

    def __init__(self, name: str, link: JetStreamLink, stream: str, *, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ValueError(f"sink {name!r}: timeout must be > 0 seconds, got {timeout}")
        self._name = name
        self._link = link
        self._stream = stream
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    async def deliver(self, batch: Sequence[Change]) -> None:
        await self._link.start()
        try:
            js = await self._link.wait_ready(self.timeout)
        except TimeoutError:
            raise SinkError(self._name, self._link.status() or "not connected to NATS") from None
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
