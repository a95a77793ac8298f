"""Starting the push-mode parts of `syncd run`: the inbox worker, the inbox, and what
feeds the inbox: the public webhook listener (`webhook.inbox = "sqlite"`), or this
mirror's JetStream consumer of the inbox stream (`"nats"`, deliveries taken by `syncd
receive`). Each part registers its stop on the daemon's exit stack as it starts."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from syncd.api import PetstoreClient
from syncd.config import Config
from syncd.jetstream import JetStreamLink, inbox_stream
from syncd.metrics import Metrics
from syncd.push.audit import AuditLog
from syncd.push.consumer import InboxConsumer
from syncd.push.inbox import Inbox
from syncd.push.inbox_worker import InboxWorker
from syncd.push.receiver_app import create_receiver_app
from syncd.push.receiver_app import uvicorn_config as receiver_uvicorn_config
from syncd.service.listeners import DaemonServer, bind_listener
from syncd.service.running import Pushing
from syncd.service.stopping import StopBudget
from syncd.store import schema
from syncd.store.db import Store
from syncd.store.writer import Writer


def _mirror_id(store: Store) -> str:
    mirror_id = store.get_meta(schema.META_MIRROR_ID)
    if not mirror_id:
        raise RuntimeError("the store has no mirror_id")
    return mirror_id


async def start_push(
    cfg: Config,
    writer: Writer,
    client: PetstoreClient,
    inbox: Inbox,
    activated: dict[str, socket.socket],
    stops: contextlib.AsyncExitStack,
    budget: StopBudget,
    metrics: Metrics,
) -> Pushing:
    """The inbox and its worker, started; the receiver's listener bound and not serving yet
    (the daemon starts it last), or the consumer started."""
    worker = InboxWorker(
        writer,
        client,
        fetch_thin=cfg.webhook.fetch_thin_events,
        metrics=metrics,
        backlog=inbox.backlog,
        saturated=inbox.saturated,
    )
    # Started first: it reads the backlog's counts, which the worker's applies then lower.
    await inbox.start()
    worker_task = asyncio.create_task(worker.run(), name="syncd-inbox-worker")
    stops.push_async_callback(budget.finish, worker_task)
    stops.callback(worker.stop)
    stops.push_async_callback(lambda: budget.bounded(inbox.stop(), "inbox"))
    inbox.add_commit_listener(worker.wake)
    if cfg.webhook.inbox == "nats":
        return Pushing(
            inbox, worker, None, None, await _start_consumer(cfg, writer, inbox, stops, budget, metrics)
        )
    audit = AuditLog(writer, metrics=metrics)
    app = create_receiver_app(cfg.webhook, cfg.secrets.webhook_secrets, inbox, audit, metrics=metrics)
    sock = activated.get("webhook") or bind_listener(cfg.webhook.listen)
    # Closed here if startup fails before the listener serves (stopping it closes it too).
    stops.callback(sock.close)
    listener = DaemonServer("webhook", receiver_uvicorn_config(app, cfg.webhook), sock)
    return Pushing(inbox, worker, app.receiver, listener)


async def _start_consumer(
    cfg: Config,
    writer: Writer,
    inbox: Inbox,
    stops: contextlib.AsyncExitStack,
    budget: StopBudget,
    metrics: Metrics,
) -> InboxConsumer:
    name = cfg.nats.consumer_name(await writer.run(_mirror_id))
    link = JetStreamLink(
        cfg.nats,
        cfg.secrets.nats_token,
        [inbox_stream(cfg.nats, cfg.webhook.dedupe_retention)],
        name=f"syncd-run-{name}",
    )
    stops.push_async_callback(link.close)
    await link.start()
    consumer = InboxConsumer(link, inbox, cfg.nats, name, metrics=metrics)
    task = asyncio.create_task(consumer.run(), name="syncd-inbox-consumer")
    # Stopped before the inbox: the batch in hand is committed and acked (a pull in progress
    # ends within its wait); past the budget it is cancelled and redelivered after a restart.
    stops.push_async_callback(budget.finish, task)
    stops.callback(consumer.stop)
    return consumer
