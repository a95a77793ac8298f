"""Waking the sink runners when the change log grows: the store's writer sets a
`ChangeNotifier` after each commit that appended changes, and every runner waiting for new
changes wakes, without polling the log."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class ChangeNotifier:
    """Wakes the runners waiting for new changes. The writer calls `notify_threadsafe()`
    (from its thread) after each commit that appended changes; `notify()` is the same from
    the event loop's thread. Every waiter is woken, and a notification that comes between a
    waiter's read and its wait is not lost (the waiter passes the generation it read at)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # Created in the event loop's thread it finds the loop itself; threads need it to
        # hand their notifications over.
        if loop is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        self._loop = loop
        self._generation = 0
        self._event = asyncio.Event()
        self._pending = threading.Event()

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        self._pending.clear()
        self._generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    def notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is None:
            # Nobody has waited yet; a waiter that read before this commit sees the new
            # generation and does not wait (the periodic re-check covers the narrow race).
            self._generation += 1
            return
        if loop.is_closed():
            return
        # Commits can come thousands of times a second; one wake-up covers them all.
        if self._pending.is_set():
            return
        self._pending.set()
        loop.call_soon_threadsafe(self.notify)

    async def wait(self, after: int, max_wait: float | None = None) -> bool:
        """Wait until a notification newer than generation `after`, or `max_wait` seconds;
        True when notified."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._generation != after:
            return True
        event = self._event
        try:
            async with asyncio.timeout(max_wait):
                await event.wait()
        except TimeoutError:
            return False
        return True
