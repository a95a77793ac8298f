"""`syncd run`: the daemon's lifecycle, `serve -> startup -> main loop -> shutdown`.

One `Daemon` object owns everything that runs: the store writer, the API client, the poll
scheduler, in push mode the receiver (public listener), inbox and inbox worker, and in both
modes the admin listener. The main loop watches webhook health (syncd.core.health decides),
keeps systemd informed and refreshes the heartbeat `syncd status` reads.

Signals (loop.add_signal_handler, so handlers run on the loop, between callbacks):
- SIGTERM/SIGINT: graceful stop; in-flight deliveries get their commit and their 2xx, polls
  commit the page in hand. A second one exits at once.
- SIGHUP: reload the config; what can change live does, the rest is logged as needing a
  restart; an invalid file is rejected and the running config kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from syncd.api import PetstoreClient
from syncd.config import Config, check_warnings, load_config
from syncd.core.health import Switch, WebhookHealth
from syncd.errors import ConfigError, StoreClosedError, StoreError, SyncdError
from syncd.logs import SecretRedactor, set_level, setup_logging
from syncd.metrics import Metrics
from syncd.poll.poller import Poller, PollResult
from syncd.poll.scheduler import PollScheduler
from syncd.push.inbox import Inbox
from syncd.push.inbox_worker import InboxWorker
from syncd.push.receiver import create_receiver_app
from syncd.push.receiver import uvicorn_config as receiver_uvicorn_config
from syncd.service.admin import ReadinessInputs, create_admin_app
from syncd.service.listeners import DaemonServer, bind_listener, serving_heap, take_activated_sockets
from syncd.service.reload import apply_live, changed_keys, restart_only_changes
from syncd.service.systemd import Notifier, watchdog_loop
from syncd.store import schema as status_keys
from syncd.store.db import Store
from syncd.store.events import prune
from syncd.store.guard import FileIdentity, StoreLock, identity_problem
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch as utc_iso
from syncd.timefmt import try_epoch

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE = 0, 1
#: Everything after the stop signal must fit in systemd's stop timeout (TimeoutStopSec=15s)
#: and the 10 s the daemon promises.
SHUTDOWN_BUDGET = 8.0
PRUNE_PERIOD = 3600.0
#: How often the main loop checks that the store file at the path is the one it writes.
STORE_CHECK_PERIOD = 1.0


def _meta_write(store: Store, values: dict[str, str]) -> None:
    with store.db.atomic():
        for key, value in values.items():
            store.set_meta(key, value)


def _record_switch(store: Store, mode: str, reason: str, since: str) -> int:
    with store.db.atomic():
        switches = int(store.get_meta(status_keys.META_MODE_SWITCHES) or "0") + 1
        store.set_meta(status_keys.META_MODE, mode)
        store.set_meta(status_keys.META_MODE_REASON, reason)
        store.set_meta(status_keys.META_MODE_SINCE, since)
        store.set_meta(status_keys.META_MODE_SWITCHES, str(switches))
    return switches


def _cursor_snapshot(store: Store, resources: tuple[str, ...]) -> dict[str, tuple[str | None, float | None]]:
    out: dict[str, tuple[str | None, float | None]] = {}
    for name in resources:
        state = store.cursor_state(name)
        out[name] = (state.cursor, state.last_success_at)
    return out


def _prune(store: Store, now: float, dedupe: float, audit: float) -> tuple[int, int]:
    return prune(store, now, dedupe_retention=dedupe, audit_retention=audit)


class Daemon:
    """Runs syncd until stopped. `serve()` returns the process exit code."""

    def __init__(
        self,
        cfg: Config,
        *,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        redactor: SecretRedactor | None = None,
        load: Callable[[], Config] | None = None,
        store_check_period: float = STORE_CHECK_PERIOD,
    ) -> None:
        self.cfg = cfg
        #: What the listeners, store and mode were started with; reloads cannot change it.
        self.started_cfg = cfg
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.redactor = redactor
        self._load = load or (lambda: load_config(cfg.source))
        self.push = cfg.sync.mode == "push"
        self.health: WebhookHealth | None = (
            WebhookHealth(cfg.fallback, catching_up=cfg.sync.resources) if self.push else None
        )
        self.writer: Writer | None = None
        self.client: PetstoreClient | None = None
        self.poller: Poller | None = None
        self.scheduler: PollScheduler | None = None
        self.inbox: Inbox | None = None
        self.worker: InboxWorker | None = None
        self.receiver: DaemonServer | None = None
        self.admin: DaemonServer | None = None
        self._receiver_app: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop: asyncio.Event | None = None
        self._signals = 0
        self._reloading: asyncio.Task[bool] | None = None
        self._last_delivery: float | None = None
        self._last_status = 0.0
        self._last_prune = 0.0
        self._catch_up = False
        self.lags: dict[str, float] = {}
        self._store_lock: StoreLock | None = None
        self._store_identity: FileIdentity | None = None
        self._store_check_period = store_check_period
        self._last_store_check = 0.0
        #: Set once the store file was found removed or replaced: the daemon is on its way out.
        self.store_lost: str | None = None
        self._exit_code = EXIT_OK

    # -- public API -------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        if self.health is None:
            return "poll"
        return self.health.mode

    @property
    def current_interval(self) -> float:
        if self.mode == "push":
            return self.cfg.poll.safety_interval
        return self.cfg.poll.interval

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        with self._signal_handlers(loop):
            try:
                await self.startup()
            except Exception as exc:
                log.error(
                    "syncd could not start: %s", exc, exc_info=not isinstance(exc, OSError | SyncdError)
                )
                await self.shutdown()
                return EXIT_FAILURE
            try:
                with serving_heap():
                    await self.main_loop()
            finally:
                await self.shutdown()
        return self._exit_code

    def request_stop(self) -> None:
        """Graceful stop; safe to call any number of times."""
        if self._stop is not None and not self._stop.is_set():
            log.info("stopping: finishing in-flight deliveries and the current poll page")
            self._stop.set()

    async def reload(self) -> bool:
        """Re-read the config file; True when the new config was taken."""
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(self._load)
        except Exception as exc:
            # Whatever the file holds, the reload task must end by telling systemd READY=1
            # again, or the unit stays "reloading" for good.
            log.error(
                "config reload rejected, keeping the running config: %s",
                exc,
                exc_info=not isinstance(exc, ConfigError | OSError),
            )
            self.notifier.ready(self.status_text())
            return False
        for key in restart_only_changes(self.started_cfg, new):
            log.warning("config reload: %s changed; it takes effect after a restart", key)
        live = apply_live(self.started_cfg, new)
        changed = changed_keys(self.cfg, live)
        previous_interval = self.current_interval
        previous_format = self.cfg.log.format
        previous_key = self.cfg.secrets.api_key
        self.cfg = live
        if self.redactor is not None:
            self.redactor.set_secrets(secret_values(live))
        if live.log.format != previous_format:
            self.redactor = setup_logging(live.log, secrets=secret_values(live))
        else:
            set_level(live.log.level)
        if self.health is not None:
            self.health.update_config(live.fallback)
        if self.poller is not None:
            self.poller.cfg = live
        if self.client is not None and live.secrets.api_key and live.secrets.api_key != previous_key:
            self.client.set_api_key(live.secrets.api_key)
        if self.client is not None and self.client.budget.rate != live.api.rate_limit:
            self.client.budget.set_rate(live.api.rate_limit)
        if self._receiver_app is not None:
            self._receiver_app.state.update_settings(live.webhook, live.secrets.webhook_secrets)
        if self.scheduler is not None:
            if self.current_interval != previous_interval:
                self.scheduler.set_interval(self.current_interval)
            self.scheduler.resume_stopped()
        log.info(
            "config reloaded from %s; changed: %s",
            live.source,
            ", ".join(changed) or "nothing",
            extra={"changed": changed},
        )
        self.notifier.ready(self.status_text())
        return True

    def status_text(self) -> str:
        reason = "" if self.health is None else f" ({self.health.reason})"
        lag = max(self.lags.values(), default=None)
        lag_text = "unknown" if lag is None else f"{lag:.0f}s"
        return f"mode {self.mode}{reason}; poll every {self.current_interval:g}s; cursor lag {lag_text}"

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        cfg = self.cfg
        for warning in check_warnings(cfg):
            log.warning("config: %s", warning)
        path = cfg.store.path
        # Before the store is opened, so a second daemon touches nothing, not even the pid.
        lock = StoreLock(path)
        lock.acquire()
        self._store_lock = lock
        writer = Writer(lambda: Store(path))
        await asyncio.to_thread(writer.start)
        self.writer = writer
        self._store_identity = FileIdentity.of(os.stat(path))
        now = time.time()
        meta = {
            status_keys.META_DAEMON_PID: str(os.getpid()),
            status_keys.META_DAEMON_STARTED: utc_iso(now),
            status_keys.META_HEARTBEAT: utc_iso(now),
            status_keys.META_MODE: self.mode,
            status_keys.META_MODE_REASON: f"started in {cfg.sync.mode} mode",
            status_keys.META_MODE_SINCE: utc_iso(now),
        }
        try:
            await writer.run(_meta_write, meta)
        except sqlite3.Error as exc:
            # A store that opens but takes no writes (a read-only file): say so in one line.
            raise StoreError(f"cannot write to store {path}: {exc}") from None
        self.metrics.set_mode(self.mode)
        self.client = PetstoreClient.from_config(cfg, self.metrics)
        self.poller = Poller(self.client, writer, cfg, metrics=self.metrics)

        activated = take_activated_sockets(push=self.push)
        if self.push:
            self.inbox = Inbox(writer, metrics=self.metrics, guard=self._store_file_problem)
            await self.inbox.start()
            self.worker = InboxWorker(
                writer, self.client, fetch_thin=cfg.webhook.fetch_thin_events, metrics=self.metrics
            )
            self.inbox.add_commit_listener(self.worker.wake)
            self._tasks.append(asyncio.create_task(self.worker.run(), name="syncd-inbox-worker"))
            app = create_receiver_app(
                cfg.webhook, cfg.secrets.webhook_secrets, self.inbox, writer, metrics=self.metrics
            )
            self._receiver_app = app
            sock = activated.get("webhook") or bind_listener(cfg.webhook.listen)
            self.receiver = DaemonServer("webhook", receiver_uvicorn_config(app, cfg.webhook), sock)
            await self.receiver.start()

        admin_app = create_admin_app(self.metrics, self._readiness, refresh=self._refresh_gauges)
        admin_sock = activated.get("admin") or bind_listener(cfg.admin.listen)
        self.admin = DaemonServer("admin", DaemonServer.plain_config(admin_app), admin_sock)
        await self.admin.start()

        self.scheduler = PollScheduler(
            self.poller,
            cfg.sync.resources,
            interval=self.current_interval,
            full_relist_interval=cfg.poll.full_relist_interval,
            jitter=cfg.poll.jitter,
            metrics=self.metrics,
            on_result=self._on_poll_result,
        )
        self.scheduler.start()
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self._tasks.append(
                asyncio.create_task(watchdog_loop(self.notifier, interval), name="syncd-watchdog")
            )
        listeners = {"admin": self.admin.url}
        if self.receiver is not None:
            listeners["webhook"] = self.receiver.url + cfg.webhook.path
        log.info(
            "syncd ready in %s mode: %s",
            cfg.sync.mode,
            ", ".join(f"{k} on {v}" for k, v in listeners.items()),
            extra={"listeners": listeners, "mode": self.mode, "pid": os.getpid()},
        )
        self.notifier.ready(self.status_text())

    async def main_loop(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._tick_seconds())
            if self._stop.is_set():
                break
            try:
                await self.tick()
            except StoreClosedError:
                log.error("the store writer stopped; shutting down")
                self.request_stop()
            except Exception:
                # A failed check must not take the daemon down; the next tick tries again.
                log.exception("daemon tick failed")

    def _tick_seconds(self) -> float:
        silence = self.cfg.fallback.silence if self.push else 5.0
        return max(0.05, min(1.0, silence / 4, self._store_check_period))

    def _store_file_problem(self) -> str | None:
        """Why the file at store.path is not the store this daemon writes (or its lock is
        gone), or None. A stat or two: cheap enough to run before every inbox commit."""
        if self.store_lost is not None:
            return self.store_lost
        if self._store_identity is None:
            return None
        problem = identity_problem(self.cfg.store.path, self._store_identity)
        if problem is None and self._store_lock is not None:
            problem = self._store_lock.problem()
        return problem

    def _check_store_file(self) -> None:
        problem = self._store_file_problem()
        if problem is None or self.store_lost is not None:
            return
        self.store_lost = problem
        # Acknowledging into a file nobody will open again loses every event after a restart;
        # exiting non-zero lets the service manager start syncd again on the file at the path.
        log.error("%s: refusing deliveries and exiting to be restarted on the current file", problem)
        self._exit_code = EXIT_FAILURE
        self.request_stop()

    async def tick(self) -> None:
        """One round of the main loop: webhook health, status, heartbeat, pruning."""
        now = time.time()
        if now - self._last_store_check >= self._store_check_period:
            self._last_store_check = now
            self._check_store_file()
            if self.store_lost is not None:
                return
        if self.health is not None:
            await self._check_health()
        if self._catch_up and self.scheduler is not None:
            self._catch_up = False
            self.scheduler.trigger_now()
        if now - self._last_status >= status_keys.HEARTBEAT_PERIOD:
            self._last_status = now
            await self._refresh_gauges()
            await self._writer().run(_meta_write, {status_keys.META_HEARTBEAT: utc_iso(now)})
            self.notifier.status(self.status_text())
        retention = min(self.cfg.webhook.dedupe_retention, self.cfg.webhook.audit_retention)
        # Prune a few times per retention period, so a short retention is honoured closely.
        if now - self._last_prune >= min(PRUNE_PERIOD, retention / 4):
            self._last_prune = now
            events, audit = await self._writer().run(
                _prune, now, self.cfg.webhook.dedupe_retention, self.cfg.webhook.audit_retention
            )
            if events or audit:
                log.info("pruned %d expired event ids and %d audit rows", events, audit)

    async def _check_health(self) -> None:
        health = self.health
        assert health is not None
        delivered = self.inbox.last_delivery_at if self.inbox is not None else None
        if delivered is not None and delivered != self._last_delivery:
            self._last_delivery = delivered
            health.webhook_seen()
        serving = self.receiver is not None and self.receiver.serving
        switch = health.receiver_state(serving)
        if switch is not None:
            await self._apply_switch(switch)
        if self.scheduler is not None and health.silence_probe_due():
            active = [r for r in self.scheduler.resources if r not in self.scheduler.stopped]
            if active:
                log.info(
                    "no webhook for %gs: polling now to tell a quiet shop from a broken endpoint",
                    self.cfg.fallback.silence,
                )
                health.start_probe(len(active))
                self.scheduler.trigger_now()

    async def _on_poll_result(self, result: PollResult) -> None:
        cursor_at = try_epoch(result.cursor)
        if cursor_at is not None:
            self.lags[result.resource] = max(0.0, time.time() - cursor_at)
        if self.health is None or result.stopped:
            return
        switch = self.health.poll_finished(
            fresh=result.fresh, applied=result.applied, kind=result.kind, resource=result.resource
        )
        if switch is not None:
            await self._apply_switch(switch)

    async def _apply_switch(self, switch: Switch) -> None:
        mode = switch.to
        since = utc_iso()
        self.metrics.fallback_switches.labels(to=mode, reason=switch.label).inc()
        self.metrics.set_mode(mode)
        switches = await self._writer().run(_record_switch, mode, switch.reason, since)
        level = logging.WARNING if mode == "fallback" else logging.INFO
        log.log(
            level,
            "mode %s -> %s: %s",
            "fallback" if mode == "push" else "push",
            mode,
            switch.reason,
            extra={"mode": mode, "reason": switch.reason, "switches": switches},
        )
        if self.scheduler is not None:
            self.scheduler.set_interval(self.current_interval)
        # Catch up at once instead of waiting a full interval; on the next tick, since a
        # switch usually comes from inside a poll job that is still finishing.
        self._catch_up = mode == "fallback"
        self.notifier.status(self.status_text())

    async def shutdown(self) -> None:
        """Stop in dependency order; each step bounded so the whole fits SHUTDOWN_BUDGET."""
        self.notifier.stopping()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_BUDGET

        def left() -> float:
            return max(0.1, deadline - loop.time())

        # Stop accepting first: requests in flight still get their inbox commit and their 2xx.
        if self.receiver is not None:
            await self.receiver.stop(left())
        if self.scheduler is not None:
            await _bounded(self.scheduler.shutdown(), left(), "poll scheduler")
        if self.inbox is not None:
            await _bounded(self.inbox.stop(), left(), "inbox")
        if self.worker is not None:
            self.worker.stop()
        if self.admin is not None:
            await self.admin.stop(left())
        for task in self._tasks:
            if task.get_name() == "syncd-watchdog":
                task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=left())
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)
        if self._store_lock is not None:
            self._store_lock.release()
        log.info("syncd stopped")

    # -- helpers ------------------------------------------------------------------------------

    def _writer(self) -> Writer:
        if self.writer is None:
            raise StoreClosedError()
        return self.writer

    async def _readiness(self) -> ReadinessInputs:
        resources = self.cfg.sync.resources
        try:
            snapshot = await self._writer().run(_cursor_snapshot, resources)
        except StoreClosedError:
            return ReadinessInputs(False, self.mode, self.current_interval, None, None)
        successes = [s for _, s in snapshot.values()]
        oldest = None if any(s is None for s in successes) else min(s for s in successes if s is not None)
        webhook = self.inbox.last_delivery_at if self.inbox is not None else None
        return ReadinessInputs(
            True, self.mode, self.current_interval, oldest, webhook, self._store_problem(successes)
        )

    def _store_problem(self, poll_successes: list[float | None]) -> str | None:
        """Why the store is not taking writes, if it is not: deliveries refused since their
        last commit failed (until a commit, a delivery's or a poll's, succeeds again)."""
        if self.store_lost is not None:
            return self.store_lost
        inbox = self.inbox
        if inbox is None or inbox.last_failure_at is None:
            return None
        failed = inbox.last_failure_at
        if any(s is not None and s > failed for s in poll_successes):
            return None
        return f"webhook deliveries cannot be committed: {inbox.last_failure}"

    async def _refresh_gauges(self) -> None:
        try:
            snapshot = await self._writer().run(_cursor_snapshot, self.cfg.sync.resources)
        except StoreClosedError:
            return
        now = time.time()
        for name, (cursor, _) in snapshot.items():
            # A cursor that is no instant (an older syncd's) is dropped by the next poll.
            cursor_at = try_epoch(cursor)
            if cursor_at is not None:
                lag = max(0.0, now - cursor_at)
                self.lags[name] = lag
                self.metrics.cursor_lag.labels(resource=name).set(lag)

    @contextlib.contextmanager
    def _signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                # Not the main thread (tests run the daemon as a task): no signal handling.
                break
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            if self._reloading is not None and not self._reloading.done():
                log.info("SIGHUP during a reload: the reload in progress reads the file as it is now")
                return
            self._reloading = asyncio.get_running_loop().create_task(self.reload(), name="syncd-reload")
            return
        self._signals += 1
        if self._signals > 1:
            log.warning("%s again: exiting now without a graceful stop", sig.name)
            logging.shutdown()
            os._exit(EXIT_FAILURE)
        log.info("%s received", sig.name)
        self.request_stop()


def secret_values(cfg: Config) -> list[str]:
    values = list(cfg.secrets.webhook_secrets)
    if cfg.secrets.api_key:
        values.append(cfg.secrets.api_key)
    return values


async def _bounded(awaitable: Any, seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        log.error("%s did not stop within %.1fs; abandoning it", what, seconds)
