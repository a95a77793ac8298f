"""Simulator time: an injectable wall clock and the API's RFC 3339 millisecond timestamps."""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to; safe to move from a test thread."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        with self._lock:
            self._now += seconds


def now_ms(clock: Clock) -> int:
    return int(clock.now() * 1000)


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_ms(ms: int) -> str:
    """1705314600123 -> '2024-01-15T10:30:00.123Z'."""
    seconds, millis = divmod(ms, 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def parse_rfc3339_ms(text: str) -> int:
    """An RFC 3339 timestamp with an offset -> epoch milliseconds, rounded up.

    Rounding up keeps `since` inclusive at millisecond precision: every record whose
    updatedAt is at or after the given instant is listed, none before it.
    """
    if "T" not in text and "t" not in text:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    parsed = datetime.fromisoformat(text.replace("z", "Z"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return -(-micros // 1000)
