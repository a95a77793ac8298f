"""The sinks' offsets from outside the daemon: what `syncd sinks list` shows, and moving one
with `syncd sinks reset`.

A running daemon's runner keeps its sink's position in memory and commits it after each
delivery, so an offset written under it would be overwritten by the next commit. A reset
therefore goes one of two ways:

- no daemon: the reset takes the store's lock itself (so no daemon can start halfway) and
  writes the offset in one transaction;
- a daemon holds the lock: the reset is handed to it. `_meta` gets
  `sink_reset:<name>` = seq, the daemon is sent SIGHUP (which also reloads its config), and
  it moves its runner, commits the offset and deletes the key. The command waits for the
  key to go; if it does not within the timeout, the request is withdrawn, so a daemon that
  does not know about resets never acts on a stale one later.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from syncd.config_feed import SinkConfig
from syncd.errors import StoreError, SyncdError
from syncd.ops.change_reader import open_change_log
from syncd.store import changelog
from syncd.store.db import Store
from syncd.store.guard import StoreLock, StoreLockedError
from syncd.store.schema import META_SINK_RESET

#: How often a reset handed to the daemon looks whether it was taken.
RESET_POLL_INTERVAL: Final = 0.05

Target = int | Literal["head"]


@dataclass(frozen=True, slots=True)
class SinkOffsetRow:
    """One configured sink as `syncd sinks list` shows it. `delivered` is None for a sink
    the daemon has not started yet (it then starts at the head, or at the beginning with
    `start = "beginning"`), and so is its lag."""

    name: str
    type: str
    delivered: int | None
    lag: int | None
    dead_letters: int

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type,
            "delivered": self.delivered,
            "lag": self.lag,
            "dead_letters": self.dead_letters,
        }


def sink_offsets(conn: sqlite3.Connection, sinks: Sequence[SinkConfig]) -> tuple[int, list[SinkOffsetRow]]:
    """The log's head and a row per configured sink, in config order."""
    head = changelog.head(conn)
    offsets = changelog.offsets(conn)
    letters = changelog.open_sink_dead_letter_counts(conn)
    rows = []
    for sink in sinks:
        delivered = offsets.get(sink.name)
        lag = None if delivered is None else max(0, head - delivered)
        rows.append(SinkOffsetRow(sink.name, sink.type, delivered, lag, letters.get(sink.name, 0)))
    return head, rows


def read_sink_offsets(path: str | Path, sinks: Sequence[SinkConfig]) -> tuple[int, list[SinkOffsetRow]]:
    conn = open_change_log(path)
    try:
        return sink_offsets(conn, sinks)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the sinks' offsets in {path}: {exc}") from None
    finally:
        conn.close()


class SinkResetError(SyncdError, RuntimeError):
    """A reset could not be made; the message says why and what to do instead."""


class TargetPastHeadError(SyncdError, ValueError):
    def __init__(self, seq: int, head: int) -> None:
        self.seq = seq
        self.head = head
        super().__init__(
            f"seq {seq} is past the head of the log ({head}): the sink would skip the next "
            f"{seq - head} changes; use 'head' for 'only changes from now on'"
        )


def parse_target(text: str) -> Target:
    """`head`, or a seq (0 is the beginning of the log). ValueError otherwise."""
    if text.strip().lower() == "head":
        return "head"
    seq = int(text)
    if seq < 0:
        raise ValueError(f"{seq} is negative")
    return seq


def resolve_target(conn: sqlite3.Connection, target: Target) -> int:
    head = changelog.head(conn)
    if target == "head":
        return head
    if target > head:
        raise TargetPastHeadError(target, head)
    return target


@dataclass(frozen=True, slots=True)
class ResetResult:
    """`old` is the offset before (None: never set), `new` the one read after the reset;
    `daemon_pid` is the daemon that made it, None when the command wrote it itself;
    `first_available` the oldest seq still in the log (a reset to before it cannot bring
    back what pruning removed)."""

    sink: str
    old: int | None
    new: int | None
    daemon_pid: int | None
    first_available: int | None
    requested: int | None = None

    @property
    def pruned_before(self) -> bool:
        return (
            self.new is not None and self.first_available is not None and self.new + 1 < self.first_available
        )


def reset_offset(
    path: str | Path,
    sink: str,
    target: Target,
    *,
    timeout: float,
    interval: float = RESET_POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    send_signal: Callable[[int, int], None] = os.kill,
) -> ResetResult:
    """Move `sink`'s offset to `target`, directly or through the running daemon (see the
    module's doc). Raises TargetPastHeadError for a seq past the head, SinkResetError when
    the daemon cannot be asked or did not answer in `timeout` seconds."""
    path = str(path)
    # Fails first, read-only, on a missing store or one without a log: nothing is created.
    conn = open_change_log(path)
    try:
        resolve_target(conn, target)
    finally:
        conn.close()
    lock = StoreLock(path)
    try:
        lock.acquire()
    except StoreLockedError as exc:
        if exc.holder is None:
            raise SinkResetError(
                f"a daemon holds {path} but did not record its pid, so it cannot be asked to reset "
                f"sink {sink!r}: stop the daemon and run this again, or reload it (SIGHUP) by hand"
            ) from None
        return _reset_via_daemon(
            path, sink, target, exc.holder, timeout=timeout, interval=interval, clock=clock, sleep=sleep,
            send_signal=send_signal,
        )  # fmt: skip
    try:
        return _reset_directly(path, sink, target)
    finally:
        lock.release()


def _reset_directly(path: str, sink: str, target: Target) -> ResetResult:
    store = Store(path, record_changes=False)
    try:
        with store.db.atomic():
            seq = resolve_target(store.conn, target)
            old = changelog.offset(store.conn, sink)
            changelog.set_offset(store.conn, sink, seq)
        return ResetResult(sink, old, seq, None, changelog.oldest(store.conn), seq)
    finally:
        store.close()


def _reset_via_daemon(
    path: str,
    sink: str,
    target: Target,
    pid: int,
    *,
    timeout: float,
    interval: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    send_signal: Callable[[int, int], None],
) -> ResetResult:
    key = META_SINK_RESET + sink
    store = Store(path, record_changes=False)
    try:
        with store.db.atomic():
            seq = resolve_target(store.conn, target)
            old = changelog.offset(store.conn, sink)
            store.set_meta(key, str(seq))
        try:
            send_signal(pid, signal.SIGHUP)
        except OSError as exc:
            _withdraw(store, key, str(seq))
            raise SinkResetError(
                f"cannot signal the daemon (pid {pid}) holding {path}: {exc.strerror}; "
                f"sink {sink!r} was not reset"
            ) from None
        deadline = clock() + timeout
        while store.get_meta(key) is not None:
            if clock() >= deadline:
                taken = not _withdraw(store, key, str(seq))
                if taken:
                    break
                raise SinkResetError(
                    f"the daemon (pid {pid}) did not take the reset of sink {sink!r} within {timeout:g}s "
                    "(a syncd that does not reset sinks on SIGHUP?); the request was withdrawn and the "
                    "offset is unchanged: stop the daemon and run this again"
                )
            sleep(interval)
        new = changelog.offset(store.conn, sink)
        if new == old and old != seq:
            # The daemon deletes a request it refuses too (it logs why): the offset it left
            # is the old one. (A runner may move on right after a reset, so an offset past
            # the one asked for is still a reset made.)
            raise SinkResetError(
                f"the daemon (pid {pid}) took the reset of sink {sink!r} but the offset is still "
                f"{_shown(old)}, not {seq}: its log says why (is {sink!r} in the config it has loaded?)"
            )
        return ResetResult(sink, old, new, pid, changelog.oldest(store.conn), seq)
    finally:
        store.close()


def _shown(seq: int | None) -> str:
    return "none" if seq is None else str(seq)


def _withdraw(store: Store, key: str, value: str) -> bool:
    """Delete our request unless the daemon already took it; True when it was still there."""
    with store.db.atomic():
        if store.get_meta(key) != value:
            return False
        store.delete_meta(key)
        return True
