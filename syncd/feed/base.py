"""What every sink is (`Sink`), how it fails (`SinkError`), what status shows of it
(`SinkState`), and how a runner reads the change log (`ChangeLog`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from syncd.core.changes import Change
from syncd.errors import SyncdError


class SinkError(SyncdError, RuntimeError):
    """A delivery failed. `reason` is for logs, status and dead letters (never a secret).

    `delivered` counts the changes at the start of the batch that did reach the sink before
    the failure (an http sink sends them one by one), so the runner keeps that progress."""

    def __init__(self, sink: str, reason: str, *, delivered: int = 0) -> None:
        self.sink = sink
        self.reason = reason
        self.delivered = delivered
        super().__init__(f"sink {sink!r}: {reason}")


class Sink(Protocol):
    """Where changes go. `deliver` returns once every change of `batch` (non-empty, in seq
    order) was accepted, or raises `SinkError`; anything else it raises is treated the same
    way. It may be called again with the same changes (at least once)."""

    @property
    def name(self) -> str: ...

    async def deliver(self, batch: Sequence[Change]) -> None: ...


class DeliveryState(StrEnum):
    OK = "ok"  # nothing failing
    RETRYING = "retrying"  # the next change failed and will be tried again after a backoff
    # `block` sinks past max_attempts: still retried (forever, order kept), but every later
    # change waits behind this one.
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class SinkState:
    """One sink's delivery, as `syncd status` shows it. `delivered` is the last seq the sink
    has taken (delivered, skipped as not matching, or dead-lettered), None before the runner
    has read its offset (lag is the log's head minus it); `attempts` counts the failures of
    the change it is stuck on; `dead_letters` counts the changes this runner gave up on since
    it started; times are epoch seconds of the runner's clock."""

    name: str
    state: DeliveryState = DeliveryState.OK
    delivered: int | None = None
    attempts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt_at: float | None = None
    dead_letters: int = 0


class ChangeLog(Protocol):
    """The change log as a runner uses it: the daemon hands it one that reads on a reader
    connection and writes through the store's writer (`syncd.feed.log`)."""

    async def read_after(self, seq: int, limit: int) -> Sequence[Change]:
        """Up to `limit` changes after `seq`, in seq order."""
        ...

    async def head(self) -> int:
        """The last seq assigned (0 for an empty log)."""
        ...

    async def offset(self, sink: str) -> int | None:
        """The sink's committed offset, None for a sink never seen."""
        ...

    async def set_offset(self, sink: str, seq: int) -> None:
        """Commit the sink's offset (durably, before returning)."""
        ...

    async def dead_letter(self, sink: str, change: Change, reason: str) -> None:
        """Keep `change` in the sink's dead letters and move its offset to `change.seq`, in
        one transaction."""
        ...
