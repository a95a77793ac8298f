"""When polls run: one apscheduler interval job per resource, plus a full relist job each.

apscheduler 3's AsyncIOScheduler cancels running coroutine jobs on shutdown and cannot await
them, so each job runs the poll in a task of our own, shielded from that cancellation, and
`shutdown()` awaits those tasks: a poll in progress commits its page instead of dying
between two transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from apscheduler.jobstores.base import JobLookupError  # type: ignore[import-untyped]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from syncd.errors import ApiAuthError
from syncd.poll.poller import Poller, PollResult
from syncd.store.db import Store

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

JobKind = Literal["poll", "relist"]
OnResult = Callable[[PollResult], Any]


def _record_error(store: Store, resource: str, message: str | None, at: float) -> None:
    with store.db.atomic():
        if message is None:
            store.update_cursor_meta(resource, last_error=None)
        else:
            store.update_cursor_meta(resource, last_error=message, last_error_at=at)


def _last_relist(store: Store, resource: str) -> float | None:
    return store.cursor_state(resource).last_full_relist_at


class PollScheduler:
    """Runs each resource's polls and relists; reports every finished one to `on_result`
    (awaited when it returns an awaitable). The daemon passes the put of the queue its mode
    control judges from, so nothing here knows about modes."""

    _KINDS: tuple[JobKind, ...] = ("poll", "relist")

    def __init__(
        self,
        poller: Poller,
        resources: Sequence[str],
        *,
        interval: float,
        full_relist_interval: float,
        jitter: float = 1.0,
        metrics: Metrics | None = None,
        on_result: OnResult | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.poller = poller
        self.resources = tuple(resources)
        self.interval = interval
        self.full_relist_interval = full_relist_interval
        self.jitter = jitter
        self.metrics = metrics
        self.on_result = on_result
        self.clock = clock
        #: Resources whose jobs were stopped because the API refused the key, with the reason.
        self.stopped: dict[str, str] = {}
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[tuple[JobKind, str]] = set()
        self._rerun: set[str] = set()
        self._shutting_down = False

    @staticmethod
    def job_id(kind: JobKind, resource: str) -> str:
        return f"{kind}:{resource}"

    def _trigger(self, seconds: float) -> IntervalTrigger:
        return IntervalTrigger(seconds=seconds, jitter=self.jitter or None, timezone=UTC)

    def _misfire_grace(self, seconds: float) -> int:
        # A run that is late by less than its own interval (a busy loop, a suspended host)
        # still happens; coalescing folds the missed ones into it.
        return max(1, int(seconds))

    async def start(self) -> None:
        """Schedule the jobs (the first poll of each resource at once) and start."""
        now = datetime.now(UTC)
        for resource in self.resources:
            # Through the writer's queue, not a blocking call: the loop keeps serving meanwhile.
            last = await self.poller.writer.run(_last_relist, resource)
            self._scheduler.add_job(
                self._job,
                self._trigger(self.interval),
                args=("poll", resource),
                id=self.job_id("poll", resource),
                name=f"poll {resource}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=self._misfire_grace(self.interval),
                next_run_time=now,
            )
            first = (
                self.clock() + self.full_relist_interval
                if last is None
                else max(self.clock(), last + self.full_relist_interval)
            )
            self._scheduler.add_job(
                self._job,
                self._trigger(self.full_relist_interval),
                args=("relist", resource),
                id=self.job_id("relist", resource),
                name=f"full relist {resource}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=self._misfire_grace(self.full_relist_interval),
                next_run_time=datetime.fromtimestamp(first, UTC),
            )
        self._scheduler.start()

    def set_interval(self, seconds: float) -> None:
        """Poll every `seconds` from now on (fallback switches between poll intervals)."""
        if seconds <= 0:
            raise ValueError(f"poll interval must be longer than 0s, got {seconds}")
        self.interval = seconds
        for resource in self.resources:
            if resource in self.stopped:
                continue
            job_id = self.job_id("poll", resource)
            self._scheduler.reschedule_job(job_id, trigger=self._trigger(seconds))
            self._scheduler.modify_job(job_id, misfire_grace_time=self._misfire_grace(seconds))
        log.info("poll interval is now %.1fs", seconds)

    def next_run(self, kind: JobKind, resource: str) -> datetime | None:
        job = self._scheduler.get_job(self.job_id(kind, resource))
        return None if job is None else job.next_run_time

    def trigger_now(self, resource: str | None = None) -> None:
        """Poll now (one resource or all); a poll already running is followed by another.
        Call it from the event loop."""
        for name in self.resources if resource is None else (resource,):
            if name not in self.resources:
                raise ValueError(f"no poll job for resource {name!r}; polled: {', '.join(self.resources)}")
            if name in self.stopped or self._shutting_down:
                continue
            if self._spawn("poll", name) is None:
                self._rerun.add(name)

    def _spawn(self, kind: JobKind, resource: str) -> asyncio.Task[None] | None:
        """Start a poll or relist unless one of that kind already runs for the resource.

        This, not apscheduler's max_instances (released only after the job's callbacks),
        is what keeps one poll per resource: trigger_now starts polls outside apscheduler."""
        if (kind, resource) in self._running:
            return None
        self._running.add((kind, resource))
        task = asyncio.create_task(self._run(kind, resource), name=f"{kind}:{resource}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _job(self, kind: JobKind, resource: str) -> None:
        task = self._spawn(kind, resource)
        if task is None:
            return  # one is running already (started by trigger_now): coalesced into it
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # apscheduler cancels running jobs on shutdown; shutdown() awaits the task itself.
            if not self._shutting_down:
                raise

    async def _run(self, kind: JobKind, resource: str) -> None:
        try:
            await self._attempt(kind, resource)
        finally:
            self._running.discard((kind, resource))
        # A poll asked for while this one ran follows it, whether this one failed or not:
        # the failure may be what the caller meant to retry.
        if kind == "poll" and resource in self._rerun and not self.poller.stopping:
            self._rerun.discard(resource)
            self.trigger_now(resource)

    async def _attempt(self, kind: JobKind, resource: str) -> None:
        try:
            if self.poller.stopping:
                return
            if kind == "poll":
                result = await self.poller.poll(resource)
            else:
                result = await self.poller.full_relist(resource)
        except ApiAuthError as exc:
            await self._fail(kind, resource, "auth", exc)
            self._stop_resource(resource, str(exc))
            return
        except Exception as exc:
            await self._fail(kind, resource, type(exc).__name__, exc)
            return
        await self.poller.writer.run(_record_error, resource, None, self.clock())
        if self.on_result is not None:
            outcome = self.on_result(result)
            if inspect.isawaitable(outcome):
                await outcome

    async def _fail(self, kind: JobKind, resource: str, label: str, exc: Exception) -> None:
        log.error("%s of %s failed: %s", "poll" if kind == "poll" else "full relist", resource, exc)
        if self.metrics is not None:
            self.metrics.poll_errors.labels(resource=resource, kind=label).inc()
        await self.poller.writer.run(_record_error, resource, f"{kind}: {exc}", self.clock())

    def _stop_resource(self, resource: str, reason: str) -> None:
        # Retrying with a refused key only hammers the API; the operator must fix the key.
        self.stopped[resource] = reason
        for kind in self._KINDS:
            with contextlib.suppress(JobLookupError):
                self._scheduler.pause_job(self.job_id(kind, resource))
        log.error("%s: polling stopped until the API key is fixed and syncd reloaded: %s", resource, reason)

    def resume_stopped(self) -> list[str]:
        """Resume resources stopped by a refused API key (after a reload that may have fixed
        it) and poll them now; returns them. A key still refused stops them again at once."""
        resumed = sorted(self.stopped)
        for resource in resumed:
            del self.stopped[resource]
            with contextlib.suppress(JobLookupError):
                # The interval may have changed while it was stopped (set_interval skips it).
                self._scheduler.reschedule_job(
                    self.job_id("poll", resource), trigger=self._trigger(self.interval)
                )
            for kind in self._KINDS:
                with contextlib.suppress(JobLookupError):
                    self._scheduler.resume_job(self.job_id(kind, resource))
            self.trigger_now(resource)
        if resumed:
            log.info("polling resumed for %s", ", ".join(resumed))
        return resumed

    async def shutdown(self) -> None:
        """Stop scheduling; polls in progress finish their page, commit, and are awaited."""
        self._shutting_down = True
        self.poller.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        # The scheduler's own shutdown runs on the loop; let it complete.
        await asyncio.sleep(0)
