"""The change feed's part of the daemon: one `SinkRunner` task per configured sink, fed from
the store's change log, plus pruning of the log, the sinks' state for `syncd status` and
their metrics.

- Wake-ups: the writer calls `ChangeNotifier.notify_threadsafe` after each commit that
  appended changes (a recorder listener), so runners never poll the log.
- Reads: the runners read the log on a read-only connection of their own (WAL lets it read
  while the writer writes); offsets, dead letters, pruning and `_meta` go to the writer.
- Sinks follow the config: at start, offsets of sinks no longer configured are dropped (they
  would hold back pruning forever); a reload stops removed and changed sinks and starts new
  and changed ones (a changed sink keeps its offset, a removed one loses it).
- Offset resets `syncd sinks reset` asks for (`_meta` META_SINK_RESET + name) are made on
  SIGHUP: that sink's runner stops, the offset moves, the key goes, the runner starts again.
- Status runs in another process: the runners' in-memory state (ok / retrying / blocked,
  attempts, last error) is written to `_meta` (META_SINK_STATE + name) when it changes, at
  most once per `state_period` for all sinks together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from syncd.config import Config
from syncd.config_feed import ChangesConfig, SinkConfig
from syncd.errors import StoreClosedError
from syncd.feed.base import Sink
from syncd.feed.build import build_sink, runner_options, sink_warnings
from syncd.feed.log import WriterChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import Backoff, DeliveryReport, SinkRunner, Sleep
from syncd.metrics import Metrics
from syncd.store import changelog, sinkstore
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.timefmt import format_epoch as utc_iso

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Rows one pruning transaction deletes at most: the writer is held for a few milliseconds,
#: then the mirror's writes get their turn before the next chunk.
PRUNE_CHUNK: Final = 2000
#: How long a stop (reload or shutdown) lets a runner finish the delivery in hand before
#: cancelling it: a cancelled delivery is simply redelivered, with the same seq and
#: webhook-id, so a receiver that hangs must not hold a reload or the stop budget.
DELIVERY_GRACE: Final = 1.0


def open_store(path: str, changes: ChangesConfig) -> Store:
    """The writer's store, recording the change log as `[changes]` says."""
    store = Store(path, record_changes=changes.enabled)
    if store.recorder is not None:
        store.recorder.include_initial = changes.include_initial
    return store


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """What tests replace: the runners' backoff and sleep, the clock pruning's retention is
    measured against, and how often sink states are written for status."""

    backoff: Backoff = field(default_factory=Backoff)
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], float] = time.time
    state_period: float = 1.0


@dataclass(slots=True)
class _Running:
    cfg: SinkConfig
    secret: str | None
    sink: Sink
    runner: SinkRunner
    task: asyncio.Task[None]


@dataclass(slots=True)
class _Stats:
    #: The log's seq up to which appended changes were counted into syncd_changes_total.
    counted: int = 0
    #: What was last written to META_SINK_STATE per sink.
    written: dict[str, str] = field(default_factory=dict)


# -- writer jobs ------------------------------------------------------------------------


def _listen(store: Store, listener: Callable[[], None]) -> None:
    if store.recorder is not None:
        store.recorder.add_listener(listener)


def _unlisten(store: Store, listener: Callable[[], None]) -> None:
    if store.recorder is not None:
        store.recorder.remove_listener(listener)


def _set_include_initial(store: Store, value: bool) -> None:
    if store.recorder is not None:
        store.recorder.include_initial = value


class FeedService:
    """Runs the configured sinks of a started daemon; `start()`, then `stop()` once."""

    def __init__(
        self, cfg: Config, writer: Writer, path: str, metrics: Metrics, options: FeedOptions | None = None
    ) -> None:
        self.cfg = cfg
        self._writer = writer
        self._path = path
        self._metrics = metrics
        self._options = options or FeedOptions()
        self.notifier: ChangeNotifier | None = None
        self._log: WriterChangeLog | None = None
        #: Two readers: the runners' (serialised by WriterChangeLog) and the service's own
        #: (counting and lag), so a scrape never waits behind a runner's read.
        self._readers: list[sqlite3.Connection] = []
        self._read_lock = asyncio.Lock()
        self._sinks: dict[str, _Running] = {}
        self._stats = _Stats()
        self._task: asyncio.Task[None] | None = None
        # Reloads and resets change the set of runners; one at a time.
        self._changing = asyncio.Lock()

    @property
    def runners(self) -> dict[str, SinkRunner]:
        return {name: running.runner for name, running in self._sinks.items()}

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        for warning in sink_warnings(self.cfg):
            log.warning("config: %s", warning)
        self.notifier = ChangeNotifier(asyncio.get_running_loop())
        await self._writer.run(_listen, self.notifier.notify_threadsafe)
        self._readers = [Store.open_reader(self._path) for _ in range(2)]
        writer = self._writer
        self._log = WriterChangeLog(lambda fn: writer.run(lambda store: fn(store.conn)), self._readers[0])
        # Only what is appended from now on is counted: the counter is this process's.
        self._stats.counted = await self._read(changelog.head)
        configured = frozenset(s.name for s in self.cfg.sinks)
        for sink in await self._writer.run(sinkstore.drop_unconfigured, configured):
            log.info("sink %s is no longer configured: its offset is dropped", sink)
        for sink_cfg in self.cfg.sinks:
            self._start(sink_cfg)
        self._task = asyncio.create_task(self._maintain(), name="syncd-feed")

    async def stop(self, seconds: float) -> None:
        """Stop every runner within `seconds` (a delivery cut short is redelivered after a
        restart), save their last states, close the sinks and the readers."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        running = list(self._sinks.values())
        await self._halt(running, min(seconds, DELIVERY_GRACE))
        with contextlib.suppress(StoreClosedError, sqlite3.Error):
            await self.save_states()
        for item in running:
            await _close(item.sink)
        self._sinks.clear()
        if self.notifier is not None:
            with contextlib.suppress(StoreClosedError):
                await self._writer.run(_unlisten, self.notifier.notify_threadsafe)
        for conn in self._readers:
            conn.close()
        self._readers = []

    def _start(self, cfg: SinkConfig) -> None:
        assert self._log is not None
        assert self.notifier is not None
        opts = self._options
        sink = build_sink(cfg, self.cfg.secrets, nats=self.cfg.nats, retention=self.cfg.changes.retention)
        runner = SinkRunner(
            sink,
            self._log,
            self.notifier,
            **runner_options(cfg),
            backoff=opts.backoff,
            sleep=opts.sleep,
            on_report=self._on_report,
        )
        task = asyncio.create_task(_run(runner), name=f"syncd-sink-{cfg.name}")
        self._sinks[cfg.name] = _Running(cfg, self.cfg.secrets.sink_secrets.get(cfg.name), sink, runner, task)

    async def _halt(self, items: list[_Running], seconds: float) -> None:
        for item in items:
            item.runner.stop()
        if not items:
            return
        tasks = {item.task for item in items}
        _, late = await asyncio.wait(tasks, timeout=seconds)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_sink(self, name: str) -> _Running:
        item = self._sinks.pop(name)
        await self._halt([item], DELIVERY_GRACE)
        await _close(item.sink)
        return item

    # -- reloads and resets -----------------------------------------------------------------

    async def reconfigure(self, cfg: Config) -> None:
        """Take a reloaded config: [changes] settings, and sinks added, removed or changed."""
        async with self._changing:
            old, self.cfg = self.cfg, cfg
            if cfg.changes.include_initial != old.changes.include_initial:
                await self._writer.run(_set_include_initial, cfg.changes.include_initial)
            wanted = {s.name: s for s in cfg.sinks}
            for name in [n for n in self._sinks if n not in wanted]:
                await self._stop_sink(name)
                await self._writer.run(sinkstore.drop_sink, name)
                self._metrics.forget_sink(name)
                self._stats.written.pop(name, None)
                log.info("sink %s removed from the config: stopped, its offset dropped", name)
            for name, sink_cfg in wanted.items():
                item = self._sinks.get(name)
                try:
                    if item is None:
                        self._start(sink_cfg)
                        log.info("sink %s added", name)
                    elif item.cfg != sink_cfg or item.secret != cfg.secrets.sink_secrets.get(name):
                        await self._stop_sink(name)
                        self._start(sink_cfg)
                        log.info("sink %s changed (%s): restarted at its offset", name, _diff(item, sink_cfg))
                except Exception as exc:
                    # One sink that cannot be built costs itself, not the reload of the others.
                    log.error("sink %s could not be started: %s", name, exc)

    async def apply_resets(self) -> None:
        """Make the offset resets `syncd sinks reset` left in `_meta`, each logged."""
        async with self._changing:
            for name, text in sorted((await self._writer.run(sinkstore.pending_resets)).items()):
                seq = int(text) if text.strip().isdigit() else None
                if seq is None or name not in self._sinks:
                    why = f"{text!r} is not a seq" if seq is None else "no such sink is configured"
                    log.warning("sink reset for %s ignored: %s", name, why)
                    await self._writer.run(sinkstore.reset, name, None)
                    continue
                item = await self._stop_sink(name)
                await self._writer.run(sinkstore.reset, name, seq)
                self._start(item.cfg)
                log.info("sink %s: offset reset to seq %d", name, seq)

    # -- maintenance ------------------------------------------------------------------------

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + self.cfg.changes.prune_interval
        while True:
            await asyncio.sleep(self._options.state_period)
            try:
                await self.save_states()
                if loop.time() >= next_prune:
                    await self.prune()
                    next_prune = loop.time() + self.cfg.changes.prune_interval
            except StoreClosedError:
                return
            except Exception:
                # The next round tries again; deliveries go on meanwhile.
                log.exception("change feed maintenance failed")

    async def prune(self) -> int:
        """Delete the entries every configured sink has taken that are older than
        `changes.retention`, a chunk per transaction; returns how many."""
        await self.count_changes()
        before = utc_iso(self._options.clock() - self.cfg.changes.retention)
        keep = await self._writer.run(sinkstore.prune_bound, frozenset(s.name for s in self.cfg.sinks))
        # Never past what was counted, so every change is counted before it can go.
        keep = min(keep, self._stats.counted)
        total = 0
        while (deleted := await self._writer.run(sinkstore.prune_chunk, before, keep, PRUNE_CHUNK)) > 0:
            total += deleted
            if deleted < PRUNE_CHUNK:
                break
        if total:
            log.info("pruned %d change log entries (taken by every sink, older than %s)", total, before)
        return total

    async def save_states(self) -> None:
        """Write the sinks' states that changed since last written, for `syncd status`."""
        now = self._options.clock()
        changed: dict[str, str] = {}
        for name, item in self._sinks.items():
            s = item.runner.state
            shown = {
                "state": s.state.value,
                "attempts": s.attempts,
                "last_error": s.last_error,
                "last_error_at": None if s.last_error_at is None else utc_iso(s.last_error_at),
                "next_attempt_at": None if s.next_attempt_at is None else utc_iso(s.next_attempt_at),
            }
            text = json.dumps(shown, sort_keys=True)
            if self._stats.written.get(name) != text:
                changed[name] = text
        if not changed:
            return
        states = {name: {**json.loads(text), "updated_at": utc_iso(now)} for name, text in changed.items()}
        await self._writer.run(sinkstore.write_states, states)
        self._stats.written.update(changed)

    # -- metrics ----------------------------------------------------------------------------

    async def count_changes(self) -> int:
        """Count what was appended since the last count into syncd_changes_total; returns
        the head. Counting here rather than in the recorder: a GROUP BY over a seq range of
        committed rows is exact (a rolled-back write is never counted, which a count taken
        in the writer's transaction cannot promise), costs the mirror's hot path nothing,
        and runs only per scrape, heartbeat and prune, however many changes come."""
        after = self._stats.counted
        head = await self._read(changelog.head)
        if head > after:
            counts = await self._read(lambda conn: changelog.counts_between(conn, after, head))
            for (resource, event), n in counts.items():
                self._metrics.changes.labels(resource=resource, event=event).inc(n)
            self._stats.counted = head
        return head

    async def refresh_metrics(self) -> None:
        """Counted changes and each sink's lag, for /metrics."""
        if not self._readers:
            return
        try:
            head = await self.count_changes()
        except sqlite3.Error as exc:
            # A busy or failing read costs this scrape its feed samples, not the scrape.
            log.warning("change feed metrics not refreshed: %s", exc)
            return
        for name, item in self._sinks.items():
            delivered = item.runner.state.delivered
            if delivered is not None:
                self._metrics.sink_lag.labels(sink=name).set(max(0, head - delivered))

    def _on_report(self, report: DeliveryReport) -> None:
        self._metrics.sink_deliveries.labels(sink=report.sink, outcome=report.outcome).inc(report.changes)
        if report.outcome != "dead_lettered":
            self._metrics.sink_delivery_seconds.labels(sink=report.sink).observe(report.seconds)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._read_lock:
            return await asyncio.to_thread(fn, self._readers[1])


async def _run(runner: SinkRunner) -> None:
    try:
        await runner.run()
    except Exception:
        # A runner handles its own failures; one that escapes stops this sink, not the daemon.
        log.exception("sink %s stopped unexpectedly", runner.name)


async def _close(sink: Sink) -> None:
    aclose = getattr(sink, "aclose", None)
    if aclose is not None:
        await aclose()


def _diff(item: _Running, new: SinkConfig) -> str:
    a: dict[str, Any] = item.cfg.model_dump(mode="json")
    b: dict[str, Any] = new.model_dump(mode="json")
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(keys) or "its secret"
