"""The single thread that owns the store's connection.

Other components hand it work with `await writer.run(fn, *args)` (from asyncio) or
`writer.call(fn, *args)` (from threads); `fn(store, *args)` runs on the writer thread, in the
order handed over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from syncd.errors import StoreClosedError
from syncd.store.db import Store

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_STOP = object()


class Writer:
    """The single thread that owns the store's connection and runs handed-over work in order."""

    def __init__(self, store_factory: Callable[[], Store]) -> None:
        self._factory = store_factory
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._store: Store | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="syncd-store-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            self._store = self._factory()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            fn, args, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(self._store, *args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            self._after_job(self._store)
        self._store.close()

    @staticmethod
    def _after_job(store: Store) -> None:
        # Jobs that appended to the change log wake its readers once their transaction is
        # over (a rolled-back one at worst wakes them for nothing).
        recorder = store.recorder
        if recorder is not None and recorder.appended and not store.conn.in_transaction:
            try:
                recorder.committed()
            except Exception:
                log.exception("a change log listener failed")

    def submit(self, fn: Callable[Concatenate[Store, P], T], *args: Any) -> concurrent.futures.Future[T]:
        if self._closed:
            raise StoreClosedError()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, args, future))
        return future

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(store, *args)` on the writer thread and wait (for threads and sync code)."""
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(store, *args)` on the writer thread and await it (for asyncio code)."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def stop(self) -> None:
        """Finish the work already handed over, then close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()


@contextmanager
def running_writer(path: str | Path) -> Iterator[Writer]:
    """A writer on the store at `path`, stopped (its connection closed) on leaving."""
    writer = Writer(lambda: Store(path))
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()
