"""The event loop the sink runners run on: `SinkLoop`, one loop in a thread of its own, and
starting, halting and closing runners and their sinks there.

Why a loop of their own: on the daemon's loop every request a sink sends, and every read of
the log, waits in one queue with the receiver's requests and the inbox worker. Under load a
sink request took 0.76 ms there against 0.3 ms alone, and at 1,000 webhooks/s that queueing
was almost all of the change-to-sink p99 (bench/RESULTS.md). On a loop of their own the
runners still share the GIL, but not the loop's queue.

What crosses between the loops, and how: the daemon's loop hands coroutines over with
`run()` (it awaits their result, and cancelling the await cancels them); the store's writer
wakes the runners with `ChangeNotifier.notify_threadsafe`, which is `call_soon_threadsafe`
onto this loop. Everything a runner owns (its tasks, its sink's connections, its reads and
offset writes) is made and closed on this loop; the daemon's loop only reads the runners'
states (an immutable `SinkState` replaced whole), for status and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from syncd.feed.base import Sink
from syncd.feed.runner import SinkRunner

log = logging.getLogger(__name__)

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def same_kind_of_loop() -> LoopFactory:
    """A factory for loops like the running one: the daemon runs on uvloop when it is
    installed (syncd.cli.run), and its sinks gain from it as the receiver does."""
    return type(asyncio.get_running_loop())


class SinkLoop:
    """An event loop running in a daemon thread; `start()`, hand it runners with `spawn()`
    (or any work with `run()`), then `stop()` once."""

    def __init__(
        self, loop_factory: LoopFactory = asyncio.new_event_loop, *, name: str = "syncd-sinks"
    ) -> None:
        self._factory = loop_factory
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name}: not started")
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread and return once its loop runs."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name}: already started")
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            loop = self._factory()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            self._finish(loop)

    @staticmethod
    def _finish(loop: asyncio.AbstractEventLoop) -> None:
        # What is still running when the loop is stopped is cancelled and let unwind, and the
        # worker threads of its reads are waited for, before the loop is closed.
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            log.exception("the sinks' event loop did not shut down cleanly")
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this loop and return its result to the awaiting loop; cancelling
        the await cancels `coro`."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except BaseException:
            coro.close()
            raise
        return await asyncio.wrap_future(future)

    async def spawn(self, runner: SinkRunner) -> asyncio.Task[None]:
        """Start `runner` as a task of this loop (hand the task back to `halt`)."""
        return await self.run(_spawn(runner))

    async def halt(self, runs: Sequence[tuple[SinkRunner, asyncio.Task[None]]], seconds: float) -> None:
        """Stop runners: each finishes the step in hand, or is cancelled after `seconds`
        (an undelivered batch is delivered again); returns once every task has ended."""
        if runs:
            await self.run(_halt(runs, seconds))

    async def close(self, sink: Sink) -> None:
        """Close a sink whose runner was halted (its connections are this loop's)."""
        await self.run(_close(sink))

    async def stop(self) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # already closed
                loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)


# -- on the sinks' loop -------------------------------------------------------------------


async def _spawn(runner: SinkRunner) -> asyncio.Task[None]:
    return asyncio.create_task(_run(runner), name=f"syncd-sink-{runner.name}")


async def _run(runner: SinkRunner) -> None:
    try:
        await runner.run()
    except Exception:
        # A runner handles its own failures; one that escapes stops this sink, not the daemon.
        log.exception("sink %s stopped unexpectedly", runner.name)


async def _halt(runs: Sequence[tuple[SinkRunner, asyncio.Task[None]]], seconds: float) -> None:
    # `stop()` wakes the runner through the notifier, which only this loop's thread may do.
    for runner, _ in runs:
        runner.stop()
    tasks = {task for _, task in runs}
    _, late = await asyncio.wait(tasks, timeout=seconds)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _close(sink: Sink) -> None:
    aclose = getattr(sink, "aclose", None)
    if aclose is not None:
        await aclose()
