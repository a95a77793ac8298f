"""One client-side request budget for everything syncd asks the API: a token bucket.

Polls, relists and thin-event fetches draw from the same bucket (`api.rate_limit`), so a
burst of thin events cannot spend the quota a real API enforces and leave polling to the
429s. When several requests wait for a token, listings go first: a listing is sequential
(one page in flight plus one prefetched per resource), so it can never take every token for
long, while a burst of fetches could; a fetch that waits only delays a thin event that the
next poll brings anyway.

A 429 speaks for the API key, not for the one request: while the request that got it waits
out its Retry-After inside `held()`, no other request of the budget is sent, so the others
do not spend that time collecting 429s of their own (which a real API may count against the
key).

The clock and the sleep are injectable, so tests drive the bucket without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from syncd.metrics import Metrics

#: What a request is for; `fetch` waits behind the others.
RequestKind = Literal["poll", "relist", "fetch", "other"]
KINDS: tuple[RequestKind, ...] = ("poll", "relist", "fetch", "other")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RequestBudget:
    """A token bucket of `rate` requests per second holding at most `burst` tokens; `rate`
    None is unlimited (every request passes at once, and is still counted)."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("a request budget needs a rate above 0")
        self._clock = clock
        self._sleep = sleep
        self.metrics = metrics
        self._rate = rate
        self._burst = 1.0
        self._tokens = 0.0
        self._stamp = clock()
        # Two queues, so "listings first" is a pop from the first non-empty one.
        self._first: deque[asyncio.Future[None]] = deque()
        self._fetches: deque[asyncio.Future[None]] = deque()
        self._waker: asyncio.Task[None] | None = None
        #: Requests waiting out a 429 (`held`); no token is granted while there are any.
        self._holds = 0
        self.set_rate(rate, burst=burst)
        self._tokens = self._burst

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None, *, burst: float | None = None) -> None:
        """Change the rate (a reload); requests waiting keep their place."""
        if rate is not None and rate <= 0:
            raise ValueError("a request budget needs a rate above 0")
        self._refill()
        self._rate = rate
        # One second's worth of tokens by default: a poll that has waited a while can send its
        # pages back to back, but never more than the API would allow in a second.
        self._burst = max(1.0, burst if burst is not None else (rate or 1.0))
        self._tokens = min(self._tokens, self._burst)
        self._pump()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Grant no token until the block ends (a 429's wait, on the waiter's own sleep);
        requests that ask meanwhile queue in their usual order."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self._pump()

    @property
    def holding(self) -> bool:
        return self._holds > 0

    def waiting(self, kind: RequestKind | None = None) -> int:
        if kind is None:
            return len(self._first) + len(self._fetches)
        return len(self._fetches) if kind == "fetch" else len(self._first)

    async def acquire(self, kind: RequestKind) -> float:
        """Wait for a token; returns the seconds waited (by the budget's clock)."""
        started = self._clock()
        held = self._holds > 0
        if self._rate is None and not held:
            self._observe(kind, 0.0)
            return 0.0
        self._refill()
        queue = self._fetches if kind == "fetch" else self._first
        if not held and not self._first and not self._fetches and self._tokens >= 1:
            self._tokens -= 1
            self._observe(kind, 0.0)
            return 0.0
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        self._track(kind, +1)
        try:
            self._pump()
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # Granted and then cancelled before use: the token goes back.
                self._tokens = min(self._burst, self._tokens + 1)
                self._pump()
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            raise
        finally:
            self._track(kind, -1)
        waited = max(0.0, self._clock() - started)
        self._observe(kind, waited)
        return waited

    def close(self) -> None:
        if self._waker is not None:
            self._waker.cancel()
            self._waker = None

    # -- internals --------------------------------------------------------------------------

    def _refill(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def _next_waiter(self) -> asyncio.Future[None] | None:
        for queue in (self._first, self._fetches):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    return fut
        return None

    def _pump(self) -> None:
        """Grant tokens to waiters in order; schedule the next grant if some still wait."""
        if self._holds:
            return  # the hold's end pumps
        if self._rate is None:
            while (fut := self._next_waiter()) is not None:
                fut.set_result(None)
            return
        self._refill()
        while self._tokens >= 1:
            fut = self._next_waiter()
            if fut is None:
                return
            self._tokens -= 1
            fut.set_result(None)
        if (self._first or self._fetches) and (self._waker is None or self._waker.done()):
            delay = (1 - self._tokens) / self._rate
            self._waker = asyncio.get_running_loop().create_task(self._wake_after(delay))

    async def _wake_after(self, delay: float) -> None:
        await self._sleep(delay)
        self._waker = None
        self._pump()

    def _track(self, kind: RequestKind, delta: int) -> None:
        if self.metrics is not None:
            self.metrics.api_budget_waiting.labels(kind=kind).inc(delta)

    def _observe(self, kind: RequestKind, waited: float) -> None:
        if self.metrics is not None:
            self.metrics.api_budget_wait.labels(kind=kind).observe(waited)
