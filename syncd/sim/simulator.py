"""The simulated Pet Store: tables, workload, webhook delivery, faults, ground truth, control.

A `Simulator` belongs to one asyncio event loop (the server's); other threads reach it through
`SimHandle.call` (see server.py) or the /_sim endpoints.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from syncd.contract import RESOURCES
from syncd.errors import ConfigError
from syncd.sim.catalog import encode
from syncd.sim.clock import Clock, SystemClock, format_ms, now_ms
from syncd.sim.config import FaultConfig, SimConfig
from syncd.sim.cursor import CursorCodec
from syncd.sim.stats import Stats
from syncd.sim.table import RecordId, Table
from syncd.sim.webhooks import Dispatcher, event_id
from syncd.sim.workload import Shop


class Simulator:
    def __init__(self, config: SimConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config = config or SimConfig()
        #: The API key requests must carry; POST /_sim/control can rotate it.
        self.api_key = config.api_key
        self.clock: Clock = clock or SystemClock()
        self.faults: FaultConfig = config.faults
        self.max_lag = config.max_lag
        self.rate = config.rate
        self.stats = Stats()
        self.tables = {
            "orders": Table("orders", int_ids=True),
            "customers": Table("customers", int_ids=False),
            "inventory": Table("inventory", int_ids=False),
        }
        # Separate streams per concern, so e.g. turning the lag off does not change the
        # sequence of workload changes for a seed.
        self._lag_rng = random.Random(f"lag-{config.seed}")
        self._event_rng = random.Random(f"events-{config.seed}")
        self.fault_rng = random.Random(f"faults-{config.seed}")
        self.shop = Shop(self.tables, self, random.Random(config.seed))
        self.webhooks = Dispatcher(
            config, lambda: self.faults, self.stats, self.clock, random.Random(f"hooks-{config.seed}")
        )
        self.cursors = CursorCodec()
        self._workload: asyncio.Task[None] | None = None
        self._workload_resumed = asyncio.Event()
        self._workload_resumed.set()
        self._preloaded = False
        self.shutting_down = asyncio.Event()
        """Set when the server begins to stop: requests parked by the hang fault let go."""

    # -- lifecycle ---------------------------------------------------------------------------

    def preload(self) -> None:
        """Create the configured preload; runs once, before the workload starts."""
        if self._preloaded:
            return
        self._preloaded = True
        end_ms = now_ms(self.clock) - 1000
        start_ms = end_ms - int(self.config.preload_span * 1000)
        self.shop.preload(
            orders=self.config.preload_orders,
            customers=self.config.preload_customers,
            inventory=self.config.preload_inventory,
            start_ms=start_ms,
            end_ms=end_ms,
        )

    async def start(self) -> None:
        self.preload()
        await self.webhooks.start()
        self._workload = asyncio.create_task(self._run_workload(), name="sim-workload")

    def begin_shutdown(self) -> None:
        self.shutting_down.set()

    async def stop(self) -> None:
        self.begin_shutdown()
        if self._workload is not None:
            self._workload.cancel()
            await asyncio.gather(self._workload, return_exceptions=True)
            self._workload = None
        await self.webhooks.stop()

    # -- changes -----------------------------------------------------------------------------

    def record_changed(
        self, resource: str, rid: RecordId, record: dict[str, Any], event: str, ms: int
    ) -> None:
        body = encode(record)
        lag = self._lag_rng.uniform(0, self.max_lag) if self.max_lag > 0 else 0.0
        table = self.tables[resource]
        table.write(rid, record["version"], ms, body, ms / 1000 + lag)
        if lag == 0:
            table.promote(self.clock.now())
        self.stats.changes[resource] += 1
        self.stats.events[event] += 1
        thin = b'{"id":' + json.dumps(rid).encode() + b"}"
        self.webhooks.publish(event, event_id(ms, self._event_rng), format_ms(ms), body, thin)

    def record_deleted(self, resource: str, rid: RecordId) -> None:
        if self.tables[resource].delete(rid):
            self.stats.changes[resource] += 1
            self.stats.deletions[resource] += 1

    def step(self, count: int = 1) -> int:
        """Make `count` workload changes now, in batches that share a timestamp."""
        done = 0
        while done < count:
            batch = min(self.shop.next_batch_size(), count - done)
            ms = now_ms(self.clock)
            for _ in range(batch):
                self.shop.change(ms)
            done += batch
        return done

    async def _run_workload(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if self.rate <= 0 or not self._workload_resumed.is_set():
                await asyncio.sleep(0.05)
                deadline = loop.time()
                continue
            done = self.step(self.shop.next_batch_size())
            deadline += done / self.rate
            delay = deadline - loop.time()
            if delay < -1.0:
                # Fell behind (a stall, a slow preload): do not burst to catch up.
                deadline = loop.time()
            await asyncio.sleep(max(0.0, delay))

    def promote(self) -> None:
        now = self.clock.now()
        for table in self.tables.values():
            table.promote(now)

    # -- ground truth and status -------------------------------------------------------------

    def truth(self, resource: str | None = None) -> dict[str, dict[str, int]]:
        names = RESOURCES if resource is None else (resource,)
        return {name: self.tables[name].truth() for name in names}

    def idle_status(self) -> dict[str, Any]:
        self.promote()
        pending_visibility = sum(t.pending_count for t in self.tables.values())
        workload_running = self.rate > 0 and self._workload_resumed.is_set()
        pending = self.webhooks.pending
        return {
            "idle": not workload_running and pending == 0 and pending_visibility == 0,
            "workload": "running" if workload_running else "paused",
            "webhooks": "paused-" + self.webhooks.paused if self.webhooks.paused else "active",
            "pending_deliveries": pending,
            "pending_visibility": pending_visibility,
        }

    def status(self) -> dict[str, Any]:
        return {
            **self.idle_status(),
            "faults": self.faults.as_dict(),
            "max_lag": self.max_lag,
            "rate": self.rate,
            "records": {name: len(t) for name, t in self.tables.items()},
        }

    # -- control -----------------------------------------------------------------------------

    def pause_workload(self) -> None:
        self._workload_resumed.clear()

    def resume_workload(self) -> None:
        self._workload_resumed.set()

    def flush_visibility(self) -> None:
        for table in self.tables.values():
            table.flush()

    async def quiesce(
        self, *, max_wait: float = 30.0, flush_visibility: bool = False, drop_retries: bool = False
    ) -> dict[str, Any]:
        """Stop the workload and wait until every change is visible and no delivery is pending.

        `drop_retries` gives up retries still waiting for their time (which can be hours at
        time_scale 1); `flush_visibility` makes lagged changes visible at once.
        """
        self.pause_workload()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            if flush_visibility:
                self.flush_visibility()
            if drop_retries:
                self.webhooks.drop_scheduled()
            status = self.idle_status()
            if status["idle"] or loop.time() >= deadline:
                return status
            await asyncio.sleep(0.01)

    async def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply a control request (the body of POST /_sim/control); returns the status.

        Keys, all optional: "preset" (a fault preset name), "faults" (knob -> value),
        "max_lag", "rate", "api_key" (the key the API accepts from now on), "action" (pause_workload, resume_workload, pause_webhooks with
        "mode" queue|drop, resume_webhooks, flush_visibility, step with "count", quiesce with
        "timeout", "flush_visibility", "drop_retries").
        """
        known = {"preset", "faults", "max_lag", "rate", "api_key", "action", "mode", "count"}
        known |= {"timeout", "flush_visibility", "drop_retries"}
        unknown = set(command) - known
        if unknown:
            raise ConfigError("control", None, f"unknown keys {sorted(unknown)}")
        if "preset" in command:
            self.faults = FaultConfig.preset(str(command["preset"]))
        if "faults" in command:
            self.faults = self.faults.replace(dict(command["faults"]))
        if "max_lag" in command:
            self.max_lag = _non_negative("max_lag", command["max_lag"])
        if "rate" in command:
            self.rate = _non_negative("rate", command["rate"])
        if "api_key" in command:
            if not isinstance(command["api_key"], str) or not command["api_key"]:
                raise ConfigError("control", "api_key", "must be a non-empty string")
            self.api_key = command["api_key"]
        action = command.get("action")
        if action is None:
            pass
        elif action == "pause_workload":
            self.pause_workload()
        elif action == "resume_workload":
            self.resume_workload()
        elif action == "pause_webhooks":
            mode = command.get("mode", "queue")
            if mode not in ("queue", "drop"):
                raise ConfigError("control", "mode", f"{mode!r} is not queue or drop")
            self.webhooks.pause(mode)
        elif action == "resume_webhooks":
            self.webhooks.resume()
        elif action == "flush_visibility":
            self.flush_visibility()
        elif action == "step":
            self.step(int(command.get("count", 1)))
        elif action == "quiesce":
            await self.quiesce(
                max_wait=float(command.get("timeout", 30.0)),
                flush_visibility=bool(command.get("flush_visibility", False)),
                drop_retries=bool(command.get("drop_retries", False)),
            )
        else:
            raise ConfigError("control", "action", f"unknown action {action!r}")
        return self.status()


def _non_negative(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError("control", key, f"must be a number >= 0, got {value!r}")
    return float(value)
