"""Which mode the daemon runs in, why, and the poll interval that follows from it.

In push mode `syncd.core.health` decides between push (webhooks bring the changes, polls
run at `poll.safety_interval`) and fallback (polls at `poll.interval`); `ModeControl` feeds
it what the daemon observes and carries out its verdicts: it records each switch in the
store, the metrics and systemd's status line, and steers the poll scheduler. Its inputs:

- each finished poll, reported by the scheduler on a queue and judged by `run()`;
- the receiver's state (serving, last committed delivery), given to `check()` on every
  tick of the daemon's main loop.

In poll mode the mode is always "poll"; polls still report here for the cursor lag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from syncd.config import Config, FallbackConfig
from syncd.core.health import FallbackRules, Switch, WebhookHealth
from syncd.metrics import Metrics
from syncd.poll.poller import PollResult
from syncd.poll.scheduler import PollScheduler
from syncd.service.systemd import Notifier
from syncd.store import schema as status_keys
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch as utc_iso
from syncd.timefmt import try_epoch

log = logging.getLogger(__name__)


def fallback_rules(cfg: FallbackConfig) -> FallbackRules:
    return FallbackRules(silence=cfg.silence, missed_ratio=cfg.missed_ratio, recover_after=cfg.recover_after)


def starting_mode(cfg: Config) -> str:
    """The mode a daemon starts in: push trusts its webhooks until they fail a check."""
    return "push" if cfg.sync.mode == "push" else "poll"


def poll_interval(cfg: Config, mode: str) -> float:
    """Healthy push polls only as a safety net; fallback and poll mode poll at the interval."""
    return cfg.poll.safety_interval if mode == "push" else cfg.poll.interval


def _record_switch(store: Store, mode: str, reason: str, since: str) -> int:
    with store.db.atomic():
        switches = int(store.get_meta(status_keys.META_MODE_SWITCHES) or "0") + 1
        store.set_meta(status_keys.META_MODE, mode)
        store.set_meta(status_keys.META_MODE_REASON, reason)
        store.set_meta(status_keys.META_MODE_SINCE, since)
        store.set_meta(status_keys.META_MODE_SWITCHES, str(switches))
    return switches


class ModeControl:
    """Judges the webhooks from what polls and the receiver report, and acts on switches."""

    def __init__(
        self,
        cfg: Config,
        scheduler: PollScheduler,
        reports: asyncio.Queue[PollResult],
        *,
        writer: Writer,
        metrics: Metrics,
        notifier: Notifier,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`reports`: the queue the scheduler puts each finished poll on."""
        self._cfg = cfg
        self._scheduler = scheduler
        self._reports = reports
        self._writer = writer
        self._metrics = metrics
        self._notifier = notifier
        #: None in poll mode: there are no webhooks to judge.
        self.health: WebhookHealth | None = (
            WebhookHealth(fallback_rules(cfg.fallback), clock=clock, catching_up=cfg.sync.resources)
            if cfg.sync.mode == "push"
            else None
        )
        #: Seconds each resource's cursor is behind now, from its last poll or gauge refresh.
        self.lags: dict[str, float] = {}
        self._last_delivery: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return "poll" if self.health is None else self.health.mode

    @property
    def interval(self) -> float:
        return poll_interval(self._cfg, self.mode)

    def status_text(self) -> str:
        reason = "" if self.health is None else f" ({self.health.reason})"
        lag = max(self.lags.values(), default=None)
        lag_text = "unknown" if lag is None else f"{lag:.0f}s"
        return f"mode {self.mode}{reason}; poll every {self.interval:g}s; cursor lag {lag_text}"

    def reconfigure(self, cfg: Config) -> None:
        """A reloaded config: new thresholds from the next observation on, and the poll
        interval of the current mode if it changed."""
        previous = self.interval
        self._cfg = cfg
        if self.health is not None:
            self.health.update_config(fallback_rules(cfg.fallback))
        if self.interval != previous:
            self._scheduler.set_interval(self.interval)

    # -- poll reports -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="syncd-modes")

    async def run(self) -> None:
        """Judge each reported poll, in the order they finished, until cancelled."""
        while True:
            result = await self._reports.get()
            try:
                await self.poll_finished(result)
            except Exception:
                # One report that cannot be judged (the store refusing the switch's record)
                # must not stop the judging of the next ones.
                log.exception("judging the poll of %s failed", result.resource)
            finally:
                self._reports.task_done()

    async def stop(self) -> None:
        """Judge what was reported before the scheduler stopped, then end."""
        if self._task is None:
            return
        await self._reports.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def poll_finished(self, result: PollResult) -> None:
        cursor_at = try_epoch(result.cursor)
        if cursor_at is not None:
            self.lags[result.resource] = max(0.0, time.time() - cursor_at)
        if self.health is None or result.stopped:
            return
        switch = self.health.poll_finished(
            fresh=result.fresh, applied=result.applied, kind=result.kind, resource=result.resource
        )
        if switch is not None:
            await self._apply(switch)

    # -- receiver state -----------------------------------------------------------------

    async def check(self, *, receiver_serving: bool, last_delivery_at: float | None) -> None:
        """The receiver as the main loop sees it on a tick: is it serving, and when did the
        last delivery commit (refused deliveries are no webhooks arriving)."""
        health = self.health
        if health is None:
            return
        if last_delivery_at is not None and last_delivery_at != self._last_delivery:
            self._last_delivery = last_delivery_at
            health.webhook_seen()
        switch = health.receiver_state(receiver_serving)
        if switch is not None:
            await self._apply(switch)
        scheduler = self._scheduler
        if health.silence_probe_due():
            active = [r for r in scheduler.resources if r not in scheduler.stopped]
            if active:
                log.info(
                    "no webhook for %gs: polling now to tell a quiet shop from a broken endpoint",
                    self._cfg.fallback.silence,
                )
                health.start_probe(len(active))
                scheduler.trigger_now()

    async def _apply(self, switch: Switch) -> None:
        mode = switch.to
        since = utc_iso()
        self._metrics.fallback_switches.labels(to=mode, reason=switch.label).inc()
        self._metrics.set_mode(mode)
        switches = await self._writer.run(_record_switch, mode, switch.reason, since)
        level = logging.WARNING if mode == "fallback" else logging.INFO
        log.log(
            level,
            "mode %s -> %s: %s",
            "fallback" if mode == "push" else "push",
            mode,
            switch.reason,
            extra={"mode": mode, "reason": switch.reason, "switches": switches},
        )
        self._scheduler.set_interval(self.interval)
        if mode == "fallback":
            # Catch up at once instead of waiting a full interval. A poll report is judged
            # after its poll ended, so no poll of that resource is running to coalesce into.
            self._scheduler.trigger_now()
        self._notifier.status(self.status_text())
