"""Clocks for code that waits on an injectable clock and sleep: tests move time, never wait."""

from __future__ import annotations

import asyncio


class ManualClock:
    """A clock that moves only when the test says; sleeping on it waits for that."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, fut))
        await fut

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self.now + 1e-9]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.now + 1e-9]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)


class FastForward:
    """A budget clock whose sleep moves it forward at once: the budget is enforced on the
    clock, and the test never waits for real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        await asyncio.sleep(0)
