"""`syncd run` with `webhook.inbox = "nats"`: deliveries come from the inbox stream, not a
listener. `InboxConsumer` pulls them with this mirror's durable consumer, a batch at a
time, writes each batch into the SQLite inbox in one transaction (deduplicated by event id
as every delivery is, so a repeat older than JetStream's duplicate window is still caught)
and acks the batch only after that commit. From there the inbox worker applies them as
it applies webhooks received directly.

Nothing acked is lost: a crash before the commit leaves the batch unacked, and JetStream
redelivers it after `ack_wait`; a crash between commit and ack redelivers a batch the
inbox already holds, which it counts as duplicates. A restart resumes where the durable
consumer stands; mirrors with different consumer names each get every delivery.

A message the inbox cannot read (not published by `syncd receive`) is terminated, with a
log line, so it is not redelivered forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from syncd.config_nats import NatsConfig
from syncd.jetstream import INBOX_SUBJECT_PREFIX, JetStreamLink
from syncd.metrics import Metrics
from syncd.push.inbox import Delivery, Inbox, InboxCommitError
from syncd.push.jetstream_inbox import from_message

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
#: How long one pull waits for messages before asking again (also how soon a stop is seen).
FETCH_WAIT: Final = 1.0
#: Unacked deliveries JetStream lets this consumer hold (a few batches).
MAX_ACK_PENDING_BATCHES: Final = 4


class InboxConsumer:
    def __init__(
        self,
        link: JetStreamLink,
        inbox: Inbox,
        cfg: NatsConfig,
        name: str,
        *,
        metrics: Metrics | None = None,
        sleep: Sleep = asyncio.sleep,
        fetch_wait: float = FETCH_WAIT,
    ) -> None:
        self._link = link
        self._inbox = inbox
        self._cfg = cfg
        self.name = name
        self._metrics = metrics
        self._sleep = sleep
        self._fetch_wait = fetch_wait
        self._stopping = False
        self._subscribed = False
        self.consumed = 0
        #: Why the consumer is not taking deliveries, if it is not.
        self.problem: str | None = "not started"

    @property
    def healthy(self) -> bool:
        """Subscribed and connected: what "the receiver can serve" means for this mirror."""
        return self._subscribed and self._link.status() is None

    def status(self) -> str | None:
        return self._link.status() or (None if self._subscribed else self.problem)

    def stop(self) -> None:
        self._stopping = True

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._cfg.ack_wait,
            max_deliver=-1,
            max_ack_pending=self._cfg.batch_size * MAX_ACK_PENDING_BATCHES,
            filter_subject=f"{INBOX_SUBJECT_PREFIX}.>",
        )

    async def run(self) -> None:
        failures = 0
        while not self._stopping:
            sub: nats.js.JetStreamContext.PullSubscription | None = None
            try:
                js = await self._link.wait_ready()
                sub = await js.pull_subscribe(
                    f"{INBOX_SUBJECT_PREFIX}.>",
                    durable=self.name,
                    stream=self._cfg.inbox_stream,
                    config=self.consumer_config(),
                )
                self._subscribed, self.problem = True, None
                log.info("consuming stream %s as %s", self._cfg.inbox_stream, self.name)
                failures = 0
                while not self._stopping:
                    await self._step(sub)
            except Exception as exc:
                if sub is not None:
                    # Its pending pulls would otherwise hold messages nobody reads until ack_wait.
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                # Whatever broke (the connection, the consumer's leader moving, a commit),
                # the consumer subscribes again: a task that died here would stop every
                # delivery without a word.
                self._subscribed = False
                failures += 1
                self.problem = f"{type(exc).__name__}: {exc}"
                expected = isinstance(
                    exc, nats.errors.Error | nats.js.errors.Error | OSError | InboxCommitError
                )
                if failures <= 3 or failures % 20 == 0:
                    log.warning(
                        "inbox consumer %s: %s; retrying", self.name, self.problem, exc_info=not expected
                    )
                await self._sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
        self._subscribed = False

    async def _step(self, sub: nats.js.JetStreamContext.PullSubscription) -> None:
        try:
            msgs = await sub.fetch(self._cfg.batch_size, timeout=self._fetch_wait)
        except TimeoutError:
            # Nothing to take (nats-py raises its own TimeoutError or asyncio's, by path).
            return
        deliveries: list[Delivery] = []
        taken: list[Msg] = []
        for msg in msgs:
            try:
                deliveries.append(from_message(msg.headers, msg.data))
                taken.append(msg)
            except ValueError as exc:
                log.error("inbox stream message on %s is no delivery (%s): terminated", msg.subject, exc)
                with contextlib.suppress(nats.errors.Error):
                    await msg.term()
        try:
            await self._inbox.submit_many(deliveries)
        except InboxCommitError:
            # Not acked: JetStream redelivers them; ask for it soon rather than after ack_wait.
            for msg in taken:
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=1.0)
            raise
        for msg in taken:
            await msg.ack()
        self.consumed += len(taken)
        if self._metrics is not None and taken:
            self._metrics.jetstream_consumed.inc(len(taken))
