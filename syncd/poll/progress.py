"""Progress of long listings (first sync, full relist, verify).

The API gives no total, so the share done is estimated from the updatedAt span: listings
come in updatedAt order, so how far the last record's updatedAt has moved from the first
one's towards now is roughly how far the listing has come when changes are spread evenly
over time. Output says it is an estimate.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from syncd.timefmt import try_epoch

log = logging.getLogger(__name__)


class ProgressReporter(Protocol):
    def start(self, resource: str, kind: str) -> None: ...
    def advance(self, resource: str, records: int, last_updated_at: str | None) -> None: ...
    def finish(self, resource: str, records: int) -> None: ...


@dataclass
class _Track:
    kind: str
    started: float
    records: int = 0
    first_ts: float | None = None
    last_ts: float | None = None


@dataclass(frozen=True, slots=True)
class Estimate:
    records: int
    rate: float
    fraction: float | None
    remaining: float | None

    def describe(self) -> str:
        text = f"{self.records} records, {self.rate:,.0f}/s"
        if self.fraction is None:
            return text + " (total unknown: the API gives none)"
        text += f", ~{self.fraction * 100:.0f}% by updatedAt span"
        if self.remaining is not None:
            text += f", ~{self.remaining:.0f}s left (estimate)"
        return text


class _Tracker:
    def __init__(self, clock: Callable[[], float], wall: Callable[[], float] = time.time) -> None:
        self.clock = clock  # for rates
        self.wall = wall  # epoch seconds, to compare with updatedAt
        self.tracks: dict[str, _Track] = {}

    def start(self, resource: str, kind: str) -> None:
        self.tracks[resource] = _Track(kind, self.clock())

    def advance(self, resource: str, records: int, last_updated_at: str | None) -> Estimate:
        track = self.tracks.setdefault(resource, _Track("listing", self.clock()))
        track.records += records
        # A listing can carry a timestamp that is no instant (verify lists raw records).
        ts = try_epoch(last_updated_at)
        if ts is not None:
            if track.first_ts is None:
                track.first_ts = ts
            track.last_ts = ts
        return self.estimate(resource)

    def estimate(self, resource: str) -> Estimate:
        track = self.tracks[resource]
        elapsed = max(self.clock() - track.started, 1e-6)
        rate = track.records / elapsed
        fraction: float | None = None
        remaining: float | None = None
        now = self.wall()
        if track.first_ts is not None and track.last_ts is not None and now > track.first_ts:
            fraction = min(max((track.last_ts - track.first_ts) / (now - track.first_ts), 0.0), 1.0)
            if fraction > 0.01:
                remaining = elapsed * (1 - fraction) / fraction
        return Estimate(track.records, rate, fraction, remaining)


class LogProgress:
    """Periodic log lines, for services and pipes."""

    def __init__(
        self,
        every: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.every = every
        self._tracker = _Tracker(clock, wall)
        self._clock = clock
        self._last_line: dict[str, float] = {}

    def start(self, resource: str, kind: str) -> None:
        self._tracker.start(resource, kind)
        self._last_line[resource] = self._clock()
        log.info("%s: %s listing started", resource, kind)

    def advance(self, resource: str, records: int, last_updated_at: str | None) -> None:
        est = self._tracker.advance(resource, records, last_updated_at)
        now = self._clock()
        if now - self._last_line.get(resource, 0.0) >= self.every:
            self._last_line[resource] = now
            log.info("%s: %s", resource, est.describe())

    def finish(self, resource: str, records: int) -> None:
        track = self._tracker.tracks.get(resource)
        elapsed = self._clock() - track.started if track else 0.0
        log.info("%s: listing done, %d records in %.1fs", resource, records, elapsed)


class RichProgress:
    """A progress bar per resource on an interactive terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._tracker = _Tracker(time.time)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._running = 0

    def start(self, resource: str, kind: str) -> None:
        self._tracker.start(resource, kind)
        if self._running == 0:
            self._progress.start()
        self._running += 1
        self._tasks[resource] = self._progress.add_task(f"{resource} ({kind})", total=1000, detail="")

    def advance(self, resource: str, records: int, last_updated_at: str | None) -> None:
        est = self._tracker.advance(resource, records, last_updated_at)
        task = self._tasks.get(resource)
        if task is None:
            return
        completed = None if est.fraction is None else est.fraction * 1000
        self._progress.update(task, completed=completed, detail=est.describe())

    def finish(self, resource: str, records: int) -> None:
        task = self._tasks.pop(resource, None)
        if task is not None:
            self._progress.update(task, completed=1000, detail=f"{records} records, done")
            self._running -= 1
            if self._running == 0:
                self._progress.stop()


def make_progress(stream: IO[str] | None = None) -> ProgressReporter:
    """A bar on an interactive terminal, log lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(Console(file=stream))
    return LogProgress()
