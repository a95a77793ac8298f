"""The parts of a started daemon, as one typed bundle: what `Daemon.startup` returns and
what the main loop, readiness and reloads work on."""

from __future__ import annotations

from dataclasses import dataclass

from syncd.api import PetstoreClient
from syncd.poll.poller import Poller
from syncd.poll.scheduler import PollScheduler
from syncd.push.consumer import InboxConsumer
from syncd.push.inbox import Inbox
from syncd.push.inbox_worker import InboxWorker
from syncd.push.receiver import WebhookReceiver
from syncd.service.admin import AdminProbe
from syncd.service.feed import FeedService
from syncd.service.listeners import DaemonServer
from syncd.service.modes import ModeControl
from syncd.store.guard import FileIdentity, StoreLock, identity_problem
from syncd.store.writer import Writer


@dataclass(frozen=True, slots=True)
class StoreFile:
    """The store file this daemon writes: locked, and known by its identity at start."""

    path: str
    lock: StoreLock
    identity: FileIdentity

    def problem(self) -> str | None:
        """Why the file at the path is no longer this store (removed, replaced, its lock
        gone), or None. A stat or two: cheap enough to run before every inbox commit."""
        problem = identity_problem(self.path, self.identity)
        return problem if problem is not None else self.lock.problem()


@dataclass(frozen=True, slots=True)
class Pushing:
    """The push-mode parts: deliveries go receiver -> inbox -> inbox worker, or, with
    `webhook.inbox = "nats"`, JetStream consumer -> inbox -> inbox worker."""

    inbox: Inbox
    worker: InboxWorker
    receiver: WebhookReceiver | None
    #: The public listener serving `receiver` (None with the nats inbox).
    listener: DaemonServer | None
    #: The inbox stream's consumer (None with the sqlite inbox).
    consumer: InboxConsumer | None = None

    @property
    def serving(self) -> bool:
        """Deliveries can reach the inbox: the listener serves, or the consumer consumes."""
        if self.listener is not None:
            return self.listener.serving
        return self.consumer is not None and self.consumer.healthy


@dataclass(frozen=True, slots=True)
class Running:
    store: StoreFile
    writer: Writer
    client: PetstoreClient
    poller: Poller
    scheduler: PollScheduler
    modes: ModeControl
    admin: DaemonServer
    #: What the admin listener reads: readiness and the sampled gauges.
    probe: AdminProbe
    #: None in poll mode.
    push: Pushing | None
    #: The change feed's sinks, pruning and their status.
    feed: FeedService
