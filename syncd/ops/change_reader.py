"""Reading the change log from outside the daemon, as `syncd changes` does: on a read-only
connection, in bounded batches, optionally following the log as it grows.

Memory stays flat however long the log is: at most one batch is held at a time, and a
follower remembers only the last seq it has read. Following costs one indexed lookup of the
log's head per interval while nothing happens (`changelog.head` reads one row of
`sqlite_sequence`), so a tail left running all day is cheap for the daemon's store.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from syncd.core.changes import Change, matches
from syncd.errors import StoreError
from syncd.store import changelog
from syncd.store.db import Store
from syncd.store.schema import META_SCHEMA_VERSION

#: Changes read per query: large enough that a catch-up reads thousands per second, small
#: enough that a batch of large records stays a few megabytes.
BATCH_SIZE: Final = 500
#: How often a follower looks for new changes when it has caught up.
FOLLOW_INTERVAL: Final = 0.2


class NoChangeLogError(StoreError):
    """The store has no `_changes` table: written by a syncd from before the change feed."""

    def __init__(self, path: str, schema_version: int) -> None:
        self.path = path
        self.schema_version = schema_version
        super().__init__(
            f"store {path} has no change log (schema version {schema_version}); "
            "start this version of `syncd run` on it once to add the log"
        )


def open_change_log(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the store at `path` that has a change log; StoreError
    (naming the path) when there is no store or it predates the log."""
    conn = Store.open_reader(path)
    try:
        has_log = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='_changes'"
        ).fetchone()
        if has_log is None:
            version = _schema_version(conn)
            raise NoChangeLogError(str(path), version)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot read store {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _schema_version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT value FROM _meta WHERE key=?", (META_SCHEMA_VERSION,)).fetchone()
    except sqlite3.OperationalError:  # no _meta at all: not a syncd store, or an empty file
        return 0
    return 0 if row is None else int(row[0])


@dataclass(frozen=True, slots=True)
class ChangeQuery:
    """Which changes to read: seq greater than `since`; only of `resources` when given (in
    SQL, so other resources' changes are never loaded); only events matching one of the
    fnmatch `events` patterns when any are given."""

    since: int = 0
    resources: tuple[str, ...] | None = None
    events: tuple[str, ...] = ()

    def wants(self, change: Change) -> bool:
        return not self.events or matches(change.event, self.events)


@dataclass(frozen=True, slots=True)
class PrunedGap:
    """Changes after `since` that pruning removed: `first_available` is the smallest seq
    still in the log (None when the log holds nothing after `since`), `head` the last seq
    ever assigned."""

    since: int
    first_available: int | None
    head: int

    def describe(self) -> str:
        if self.first_available is None:
            return (
                f"changes {self.since + 1} to {self.head} were pruned (changes.retention); new changes follow"
            )
        return (
            f"changes {self.since + 1} to {self.first_available - 1} were pruned (changes.retention);"
            f" the first available is {self.first_available}"
        )


def pruned_gap(conn: sqlite3.Connection, since: int) -> PrunedGap | None:
    """Whether changes right after `since` are gone. Seqs are never skipped (a rolled-back
    insert takes its sequence number back with it), so a hole after `since` is pruning."""
    last = changelog.head(conn)
    if last <= since:
        return None
    first = changelog.oldest(conn)
    if first is None:
        return PrunedGap(since, None, last)
    if first > since + 1:
        return PrunedGap(since, first, last)
    return None


def read_changes(
    conn: sqlite3.Connection,
    query: ChangeQuery,
    *,
    follow: bool = False,
    stop: threading.Event | None = None,
    interval: float = FOLLOW_INTERVAL,
    batch_size: int = BATCH_SIZE,
    alive: Callable[[], bool] = lambda: True,
) -> Iterator[Change]:
    """The changes `query` asks for, oldest first. Without `follow` it ends at the head of
    the log as it was when the last batch was read; with it, it waits for new changes until
    `stop` is set (checked between changes and every `interval` seconds while caught up)
    or, checked as often while caught up, `alive()` turns false (whoever reads is gone)."""
    stop = stop or threading.Event()
    seq = query.since
    while not stop.is_set():
        # The head is read before the batch: every change up to it is committed, so when the
        # batch comes back short, nothing up to the head is left unread even if the filter
        # on resources returned none of it, and the next read may start after the head.
        last = changelog.head(conn)
        batch = changelog.read_after(conn, seq, batch_size, resources=query.resources)
        for change in batch:
            if stop.is_set():
                return
            if query.wants(change):
                yield change
        if batch:
            seq = batch[-1].seq
        if len(batch) == batch_size:
            continue
        seq = max(seq, last)
        if not follow:
            return
        while changelog.head(conn) <= seq:
            if stop.wait(interval) or not alive():
                return
