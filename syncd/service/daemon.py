"""`syncd run`: the daemon's lifecycle, `serve -> startup -> main loop -> shutdown`.

`startup` starts the parts (store writer, change feed (syncd.service.feed), API client, poll
scheduler, in push mode receiver, inbox and inbox worker, always the admin listener) as one
`Running` bundle; `shutdown` stops them in dependency order. The main loop informs mode control
(syncd.service.modes), watches the store file, beats the heartbeat, prunes. Reloads: service.reload.

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
from collections.abc import Callable

from syncd.api import PetstoreClient
from syncd.config import Config, check_warnings, load_config
from syncd.errors import StoreClosedError, StoreError, SyncdError
from syncd.heap import serving_heap
from syncd.logs import SecretRedactor
from syncd.metrics import Metrics
from syncd.poll.poller import Poller, PollResult
from syncd.poll.scheduler import PollScheduler
from syncd.push.backlog import Backlog
from syncd.push.inbox import Inbox
from syncd.service.admin import AdminProbe, create_admin_app
from syncd.service.feed import FeedOptions, FeedService, open_store
from syncd.service.listeners import DaemonServer, bind_listener, take_activated_sockets
from syncd.service.modes import ModeControl, poll_interval, starting_mode
from syncd.service.pushing import start_push
from syncd.service.reload import Reloader
from syncd.service.running import Running, StoreFile
from syncd.service.signals import StopSignals, signal_handlers
from syncd.service.status_page import status_routes, store_report
from syncd.service.stopping import StopBudget, cancel
from syncd.service.systemd import Notifier, watchdog_loop
from syncd.store import schema as status_keys
from syncd.store.db import Store
from syncd.store.events import prune
from syncd.store.guard import FileIdentity, StoreLock
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch as utc_iso

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
        feed_options: FeedOptions | None = None,
    ) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.push = cfg.sync.mode == "push"
        self._reloader = Reloader(cfg, load or (lambda: load_config(cfg.source)), redactor=redactor)
        #: The started parts; None before startup has finished.
        self.running: Running | None = None
        #: Stops what startup started, last started first (startup starts in reverse
        #: dependency order so this is the order shutdown needs).
        self._stops = contextlib.AsyncExitStack()
        self._budget = StopBudget()
        self._stop: asyncio.Event | None = None
        self._stop_signals = StopSignals(self.request_stop, EXIT_FAILURE)
        self._reloading: asyncio.Task[bool] | None = None
        self._last_status = 0.0
        self._last_prune = 0.0
        self._store_check_period = store_check_period
        self._last_store_check = 0.0
        #: Set once the store file was found removed or replaced: the daemon is on its way out.
        self.store_lost: str | None = None
        self._exit_code = EXIT_OK
        self._feed_options = feed_options

    # -- public API -------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return starting_mode(self.cfg) if self.running is None else self.running.modes.mode

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            with signal_handlers(loop, self._on_signal):
                try:
                    self.running = await self.startup()
                except Exception as exc:
                    log.error(
                        "syncd could not start: %s", exc, exc_info=not isinstance(exc, OSError | SyncdError)
                    )
                    await self.shutdown()
                    return EXIT_FAILURE
                try:
                    with serving_heap():
                        await self.main_loop(self.running)
                finally:
                    await self.shutdown()
            return self._exit_code
        finally:
            self.notifier.close()

    def request_stop(self) -> None:
        """Graceful stop; safe to call any number of times."""
        if self._stop is not None and not self._stop.is_set():
            log.info("stopping: finishing in-flight deliveries and the current poll page")
            self._stop.set()

    async def reload(self) -> bool:
        """Re-read the config file and retune the running parts; True when the new config
        was taken. Before startup has finished only the config changes."""
        self.notifier.reloading()
        try:
            live = await self._reloader.reload(self.cfg, self.running)
            if live is not None:
                self.cfg = live
        finally:
            # Whatever the file holds, a reload must end by telling systemd READY=1 again,
            # or the unit stays "reloading" for good.
            self.notifier.ready(self.status_text())
        return live is not None

    def status_text(self) -> str:
        return "starting" if self.running is None else self.running.modes.status_text()

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> Running:
        """Start every part; each registers its stop on `self._stops` as it starts, so
        shutdown stops them in reverse: the webhook listener (stop accepting; requests in
        flight finish), the scheduler (polls commit their page), mode control (judges the
        last reports), inbox (flushes), inbox worker, admin listener, watchdog, API client,
        change feed, store writer, store lock."""
        cfg, stops, budget = self.cfg, self._stops, self._budget
        for warning in check_warnings(cfg):
            log.warning("config: %s", warning)
        path = cfg.store.path
        # Before the store is opened, so a second daemon touches nothing, not even the pid.
        lock = StoreLock(path)
        lock.acquire()
        stops.callback(lock.release)
        writer = Writer(lambda: open_store(path, cfg.changes))
        await asyncio.to_thread(writer.start)
        stops.push_async_callback(asyncio.to_thread, writer.stop)
        store = StoreFile(path, lock, FileIdentity.of(os.stat(path)))
        mode = starting_mode(cfg)
        now = time.time()
        meta = {
            status_keys.META_DAEMON_PID: str(os.getpid()),
            status_keys.META_DAEMON_STARTED: utc_iso(now),
            status_keys.META_HEARTBEAT: utc_iso(now),
            status_keys.META_MODE: mode,
            status_keys.META_MODE_REASON: f"started in {cfg.sync.mode} mode",
            status_keys.META_MODE_SINCE: utc_iso(now),
        }
        try:
            await writer.run(_meta_write, meta)
        except sqlite3.Error as exc:
            # A store that opens but takes no writes (a read-only file): say so in one line.
            raise StoreError(f"cannot write to store {path}: {exc}") from None
        self.metrics.set_mode(mode)
        # Started before everything that writes the mirror, stopped just before the writer.
        feed = FeedService(cfg, writer, path, self.metrics, self._feed_options)
        stops.push_async_callback(lambda: feed.stop(budget.left()))
        await feed.start()
        client = PetstoreClient.from_config(cfg, self.metrics)
        stops.push_async_callback(client.aclose)
        poller = Poller(client, writer, cfg, metrics=self.metrics)
        reports: asyncio.Queue[PollResult] = asyncio.Queue()
        scheduler = PollScheduler(
            poller,
            cfg.sync.resources,
            interval=poll_interval(cfg, mode),
            full_relist_interval=cfg.poll.full_relist_interval,
            jitter=cfg.poll.jitter,
            metrics=self.metrics,
            on_result=reports.put_nowait,
        )
        modes = ModeControl(
            cfg, scheduler, reports, writer=writer, metrics=self.metrics, notifier=self.notifier
        )
        # Pinging the watchdog matters only when a service manager listens.
        interval = self.notifier.watchdog_interval()
        if interval is not None and self.notifier.enabled:
            watchdog = asyncio.create_task(watchdog_loop(self.notifier, interval), name="syncd-watchdog")
            stops.push_async_callback(cancel, watchdog)

        activated = take_activated_sockets(push=self.push and cfg.webhook.inbox == "sqlite")
        inbox = (
            Inbox(
                writer,
                metrics=self.metrics,
                guard=lambda: self._store_file_problem(store),
                backlog=Backlog(cfg.webhook.max_backlog, cfg.webhook.max_backlog_bytes, metrics=self.metrics),
            )
            if self.push
            else None
        )
        probe = AdminProbe(
            cfg.sync.resources, writer, modes, self.metrics, inbox=inbox, store_lost=lambda: self.store_lost
        )
        probe.add_refresh(feed.refresh_metrics)
        page = status_routes(store_report(lambda: self.cfg), self.metrics.history)
        admin_app = create_admin_app(self.metrics, probe.readiness, refresh=probe.refresh_gauges, routes=page)
        admin_sock = activated.get("admin") or bind_listener(cfg.admin.listen)
        admin = DaemonServer("admin", DaemonServer.plain_config(admin_app), admin_sock)
        stops.push_async_callback(lambda: admin.stop(budget.left()))
        await admin.start()
        push = None
        if inbox is not None:
            push = await start_push(cfg, writer, client, inbox, activated, stops, budget, self.metrics)

        stops.push_async_callback(lambda: budget.bounded(modes.stop(), "mode control"))
        modes.start()
        stops.push_async_callback(lambda: budget.bounded(scheduler.shutdown(), "poll scheduler"))
        await scheduler.start()
        if push is not None and (listener := push.listener) is not None:
            # Stop accepting first: requests in flight still get their inbox commit and 2xx.
            stops.push_async_callback(lambda: listener.stop(budget.left()))
            await listener.start()
        running = Running(store, writer, client, poller, scheduler, modes, admin, probe, push, feed)
        listeners = {"admin": admin.url}
        if push is not None and push.listener is not None:
            listeners["webhook"] = push.listener.url + cfg.webhook.path
        if push is not None and push.consumer is not None:
            listeners["consumer"] = f"{cfg.nats.inbox_stream} as {push.consumer.name}"
        log.info(
            "syncd ready in %s mode: %s",
            cfg.sync.mode,
            ", ".join(f"{k} on {v}" for k, v in listeners.items()),
            extra={"listeners": listeners, "mode": mode, "pid": os.getpid()},
        )
        self.notifier.ready(modes.status_text())
        return running

    async def main_loop(self, running: Running) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._tick_seconds())
            if self._stop.is_set():
                break
            try:
                await self.tick(running)
            except StoreClosedError:
                log.error("the store writer stopped; shutting down")
                self.request_stop()
            except Exception:
                # A failed check must not take the daemon down; the next tick tries again.
                log.exception("daemon tick failed")

    def _tick_seconds(self) -> float:
        silence = self.cfg.fallback.silence if self.push else 5.0
        return max(0.05, min(1.0, silence / 4, self._store_check_period))

    def _store_file_problem(self, store: StoreFile) -> str | None:
        """Why the file at store.path is not the store this daemon writes, or None."""
        return self.store_lost if self.store_lost is not None else store.problem()

    def _check_store_file(self, store: StoreFile) -> None:
        problem = self._store_file_problem(store)
        if problem is None or self.store_lost is not None:
            return
        self.store_lost = problem
        # Acknowledging into a file nobody will open again loses every event after a restart;
        # exiting non-zero lets the service manager start syncd again on the file at the path.
        log.error("%s: refusing deliveries and exiting to be restarted on the current file", problem)
        self._exit_code = EXIT_FAILURE
        self.request_stop()

    async def tick(self, running: Running) -> None:
        """One round of the main loop: store file, webhook health, heartbeat, pruning."""
        now = time.time()
        if now - self._last_store_check >= self._store_check_period:
            self._last_store_check = now
            self._check_store_file(running.store)
            if self.store_lost is not None:
                return
        if running.push is not None:
            await running.modes.check(
                receiver_serving=running.push.serving,
                last_delivery_at=running.push.inbox.last_delivery_at,
            )
        if now - self._last_status >= status_keys.HEARTBEAT_PERIOD:
            self._last_status = now
            await running.probe.refresh_gauges()
            await running.writer.run(_meta_write, {status_keys.META_HEARTBEAT: utc_iso(now)})
            self.notifier.status(self.status_text())
        retention = min(self.cfg.webhook.dedupe_retention, self.cfg.webhook.audit_retention)
        # Prune a few times per retention period, so a short retention is honoured closely.
        if now - self._last_prune >= min(PRUNE_PERIOD, retention / 4):
            self._last_prune = now
            events, audit = await running.writer.run(
                _prune, now, self.cfg.webhook.dedupe_retention, self.cfg.webhook.audit_retention
            )
            if events or audit:
                log.info("pruned %d expired event ids and %d audit rows", events, audit)

    async def shutdown(self) -> None:
        """Stop in dependency order; each step bounded so the whole fits SHUTDOWN_BUDGET."""
        self.notifier.stopping()
        self._budget.start(SHUTDOWN_BUDGET)
        await self._stops.aclose()
        log.info("syncd stopped")

    # -- signals ----------------------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            if self.running is None:
                # The parts being started take the config startup began with: reloading
                # now would leave them behind the config the daemon reports.
                log.warning("SIGHUP before syncd is ready: ignored; send it again once ready")
                return
            if self._reloading is not None and not self._reloading.done():
                log.info("SIGHUP during a reload: the reload in progress reads the file as it is now")
                return
            self._reloading = asyncio.get_running_loop().create_task(self.reload(), name="syncd-reload")
            return
        self._stop_signals(sig)
