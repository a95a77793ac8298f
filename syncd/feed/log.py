"""Two implementations of `syncd.feed.base.ChangeLog` over `syncd.store.changelog`, the
log a sink runner reads and keeps its offset in.

- `ConnectionChangeLog`: one connection of its own, read and written directly (a tool, a
  test, or a process that owns the file).
- `WriterChangeLog`: the daemon's way. Writes (offsets, dead letters) go to the store's
  single writer; reads use a reader connection in a worker thread (WAL lets it read while
  the writer writes), or the writer too when no reader is given.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from syncd.core.changes import Change
from syncd.store import changelog
from syncd.store.sql import unsynced_commits

T = TypeVar("T")


class ConnRunner(Protocol):
    """Runs `fn(conn)` where the connection's owner runs work and returns its result, e.g.
    `lambda fn: writer.run(lambda store: fn(store.conn))` for the store writer."""

    def __call__(self, fn: Callable[[sqlite3.Connection], T], /) -> Awaitable[T]: ...


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    if conn.in_transaction:
        # The caller's transaction: its commit makes this durable.
        return fn(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _unsynced(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`_in_transaction` committed without its own fsync (`unsynced_commits`). For offsets:
    a lost commit only moves the sink back to changes it then receives again, which at
    least once allows. A caught-up sink
    commits after every change or two; an fsync each would hold the store's writer, and
    the mirror writes queued behind it, for a disk flush per delivery."""
    if conn.in_transaction:
        return fn(conn)
    with unsynced_commits(conn):
        return _in_transaction(conn, fn)


def _set_offset(sink: str, seq: int) -> Callable[[sqlite3.Connection], None]:
    return lambda conn: _unsynced(conn, lambda c: changelog.set_offset(c, sink, seq))


def _dead_letter(sink: str, change: Change, reason: str) -> Callable[[sqlite3.Connection], None]:
    def write(conn: sqlite3.Connection) -> None:
        changelog.add_sink_dead_letter(conn, sink, change, reason)
        changelog.set_offset(conn, sink, change.seq)

    return lambda conn: _in_transaction(conn, write)


class ConnectionChangeLog:
    """The log on one connection used from the event loop's thread (calls are short)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def read_after(self, seq: int, limit: int) -> Sequence[Change]:
        return changelog.read_after(self.conn, seq, limit)

    async def head(self) -> int:
        return changelog.head(self.conn)

    async def offset(self, sink: str) -> int | None:
        return changelog.offset(self.conn, sink)

    async def set_offset(self, sink: str, seq: int) -> None:
        _set_offset(sink, seq)(self.conn)

    async def dead_letter(self, sink: str, change: Change, reason: str) -> None:
        _dead_letter(sink, change, reason)(self.conn)


class WriterChangeLog:
    """Writes through `run_on_writer`; reads on `reader` (a read-only connection opened with
    `check_same_thread=False`) in a worker thread, one read at a time, or through the writer
    when `reader` is None."""

    def __init__(self, run_on_writer: ConnRunner, reader: sqlite3.Connection | None = None) -> None:
        self._write = run_on_writer
        self._reader = reader
        self._lock = asyncio.Lock()

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            return await self._write(fn)
        async with self._lock:
            return await asyncio.to_thread(fn, self._reader)

    async def read_after(self, seq: int, limit: int) -> Sequence[Change]:
        return await self._read(lambda conn: changelog.read_after(conn, seq, limit))

    async def head(self) -> int:
        return await self._read(changelog.head)

    async def offset(self, sink: str) -> int | None:
        # Offsets are written by the writer: read them there, so one just committed is seen.
        return await self._write(lambda conn: changelog.offset(conn, sink))

    async def set_offset(self, sink: str, seq: int) -> None:
        await self._write(_set_offset(sink, seq))

    async def dead_letter(self, sink: str, change: Change, reason: str) -> None:
        await self._write(_dead_letter(sink, change, reason))
