"""One deadline shared by every step of the daemon's shutdown, so the whole stop fits in
systemd's stop timeout: each step gets what the steps before it left over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)

#: The floor of a step's share: a step the others ran late for still gets a moment.
MIN_STEP = 0.1


class StopBudget:
    def __init__(self) -> None:
        self._deadline = 0.0

    def start(self, seconds: float) -> None:
        """The stop begins: every step from now on shares `seconds`."""
        self._deadline = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        return max(MIN_STEP, self._deadline - asyncio.get_running_loop().time())

    async def bounded(self, awaitable: Awaitable[None], what: str) -> None:
        """Await `awaitable` for what is left, then abandon it with an error logged."""
        seconds = self.left()
        try:
            await asyncio.wait_for(awaitable, seconds)
        except TimeoutError:
            log.error("%s did not stop within %.1fs; abandoning it", what, seconds)

    async def finish(self, task: asyncio.Task[Any]) -> None:
        """Let `task` end on its own for what is left, then cancel it."""
        _, pending = await asyncio.wait({task}, timeout=self.left())
        for late in pending:
            late.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task that only ends by cancellation, and wait until it has."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
