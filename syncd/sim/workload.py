"""What happens in the shop: customers register and are erased, orders move through their
lifecycle, stock goes down and is refilled. Also the bulk preload for benchmarks.

Every decision comes from one seeded `random.Random`, and batch sizes are drawn from it too, so
a seed replays the same sequence of changes whatever the timing; only timestamps differ.

Event mapping (the contract has no customer update or deletion events, so the workload never
updates customers: each customer change is a registration, announced by `customer.registered`;
erasure is silent):

    new order            -> order.created      placed -> approved   -> order.updated
    approved -> shipped  -> order.shipped      shipped -> completed -> order.completed
    placed|approved -> cancelled -> order.cancelled
    stock change leaving quantity < threshold -> inventory.low, otherwise inventory.updated
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any, Protocol

from syncd.sim import catalog
from syncd.sim.clock import format_ms
from syncd.sim.table import RecordId, Table

_NEXT_STATUS = {"placed": "approved", "approved": "shipped", "shipped": "completed"}
_EVENT_FOR = {
    "approved": "order.updated",
    "shipped": "order.shipped",
    "completed": "order.completed",
    "cancelled": "order.cancelled",
}
_PRELOAD_OPEN = 1000
"""Only the newest preloaded orders are still open; older ones are completed or cancelled."""


class ChangeSink(Protocol):
    def record_changed(
        self, resource: str, rid: RecordId, record: dict[str, Any], event: str, ms: int
    ) -> None: ...

    def record_deleted(self, resource: str, rid: RecordId) -> None: ...


class _Bag:
    """A set with O(1) add, remove and uniform random choice."""

    def __init__(self) -> None:
        self._items: list[RecordId] = []
        self._pos: dict[RecordId, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: RecordId) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: RecordId) -> None:
        pos = self._pos.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    def head(self, count: int) -> list[RecordId]:
        return self._items[:count]

    def choice(self, rng: random.Random) -> RecordId:
        return self._items[rng.randrange(len(self._items))]


class Shop:
    def __init__(self, tables: dict[str, Table], sink: ChangeSink, rng: random.Random) -> None:
        self._tables = tables
        self._sink = sink
        self.rng = rng
        self._open_orders = _Bag()
        self._customers = _Bag()
        self._next_order_id = 1
        self._customer_serial = 0
        self._skus: list[str] = []

    def next_batch_size(self) -> int:
        """Changes that share one timestamp: mostly 1, often a few (ties are the norm)."""
        roll = self.rng.random()
        if roll < 0.6:
            return 1
        return self.rng.randint(2, 6)

    def change(self, ms: int) -> None:
        """Make one random change stamped `ms`."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.10 or not self._customers:
            self.register_customer(ms)
        elif roll < 0.12 and len(self._customers) > 5:
            self.erase_customer(self._customers.choice(rng))
        elif roll < 0.42:
            self.place_order(ms)
        elif roll < 0.82 and self._open_orders:
            self.advance_order(int(self._open_orders.choice(rng)), ms)
        elif self._skus:
            self.move_stock(ms)
        else:
            self.place_order(ms)

    def _load(self, resource: str, rid: RecordId) -> dict[str, Any]:
        body = self._tables[resource].get(rid)
        if body is None:
            raise KeyError(f"{resource} {rid!r} does not exist")
        record: dict[str, Any] = json.loads(body)
        return record

    def _new_customer_id(self) -> str:
        table = self._tables["customers"]
        while True:
            cid = "cus_" + catalog.base36(self.rng.getrandbits(30)).rjust(6, "0")
            if cid not in table:
                return cid

    def register_customer(self, ms: int) -> str:
        self._customer_serial += 1
        email, name = catalog.person(self.rng, self._customer_serial)
        cid = self._new_customer_id()
        self._customers.add(cid)
        record = catalog.customer(cid, email, name, ms)
        self._sink.record_changed("customers", cid, record, "customer.registered", ms)
        return cid

    def erase_customer(self, cid: RecordId) -> None:
        self._customers.discard(cid)
        self._sink.record_deleted("customers", cid)

    def place_order(self, ms: int) -> int:
        if not self._customers:
            self.register_customer(ms)
        email = self._load("customers", self._customers.choice(self.rng))["email"]
        items, total = catalog.items_and_total(self.rng)
        oid = self._next_order_id
        self._next_order_id += 1
        self._open_orders.add(oid)
        record = catalog.order(oid, email, "placed", items, total, ms, ms, 1)
        self._sink.record_changed("orders", oid, record, "order.created", ms)
        return oid

    def advance_order(self, oid: int, ms: int) -> None:
        record = self._load("orders", oid)
        status = record["status"]
        cancel_odds = {"placed": 0.15, "approved": 0.05}.get(status, 0.0)
        new = "cancelled" if self.rng.random() < cancel_odds else _NEXT_STATUS[status]
        if new not in catalog.OPEN_STATUSES:
            self._open_orders.discard(oid)
        record["status"] = new
        record["updatedAt"] = format_ms(ms)
        record["version"] += 1
        self._sink.record_changed("orders", oid, record, _EVENT_FOR[new], ms)

    def move_stock(self, ms: int) -> None:
        sku = self._skus[self.rng.randrange(len(self._skus))]
        record = self._load("inventory", sku)
        if record["quantity"] < record["threshold"] and self.rng.random() < 0.5:
            record["quantity"] += self.rng.randint(20, 60)
        else:
            record["quantity"] = max(0, record["quantity"] - self.rng.randint(1, 6))
        record["updatedAt"] = format_ms(ms)
        record["version"] += 1
        low = record["quantity"] < record["threshold"]
        self._sink.record_changed(
            "inventory", sku, record, "inventory.low" if low else "inventory.updated", ms
        )

    # -- preload ---------------------------------------------------------------------------

    def preload(self, *, orders: int, customers: int, inventory: int, start_ms: int, end_ms: int) -> None:
        """Create records at once, visible, with updatedAt spread over [start_ms, end_ms]."""
        tables = self._tables
        tables["inventory"].bulk_load(self._preload_inventory(inventory, start_ms, end_ms))
        tables["customers"].bulk_load(self._preload_customers(customers, start_ms, end_ms))
        tables["orders"].bulk_load(self._preload_orders(orders, start_ms, end_ms))
        self._next_order_id = orders + 1

    def _spread(self, count: int, start_ms: int, end_ms: int) -> Iterator[int]:
        """Non-decreasing timestamps where about half the records tie with the previous one."""
        rng = self.rng
        mean_step = max(1, (end_ms - start_ms) // max(1, count))
        max_step = 2 * mean_step
        ms = start_ms
        for _ in range(count):
            yield min(ms, end_ms)
            if rng.random() >= 0.5:
                ms += rng.randint(1, max_step)

    def _preload_inventory(
        self, count: int, start_ms: int, end_ms: int
    ) -> Iterator[tuple[RecordId, int, int, bytes]]:
        rng = self.rng
        for index, ms in enumerate(self._spread(count, start_ms, end_ms)):
            sku, product, _ = catalog.product_for_sku(index)
            self._skus.append(sku)
            record = catalog.inventory(sku, product, rng.randint(0, 200), rng.randint(10, 30), ms, 1)
            yield sku, 1, ms, catalog.encode(record)

    def _preload_customers(
        self, count: int, start_ms: int, end_ms: int
    ) -> Iterator[tuple[RecordId, int, int, bytes]]:
        seen: set[str] = set()
        for ms in self._spread(count, start_ms, end_ms):
            cid = self._new_customer_id()
            while cid in seen:
                cid = self._new_customer_id()
            seen.add(cid)
            self._customer_serial += 1
            email, name = catalog.person(self.rng, self._customer_serial)
            self._customers.add(cid)
            yield cid, 1, ms, catalog.encode(catalog.customer(cid, email, name, ms))

    def _preload_orders(
        self, count: int, start_ms: int, end_ms: int
    ) -> Iterator[tuple[RecordId, int, int, bytes]]:
        rng = self.rng
        emails = [self._load("customers", cid)["email"] for cid in self._customers.head(500)]
        open_from = count - _PRELOAD_OPEN
        versions = {"placed": 1, "approved": 2, "shipped": 3, "completed": 4}
        for index, ms in enumerate(self._spread(count, start_ms, end_ms)):
            oid = index + 1
            roll = rng.random()
            if index >= open_from:
                status = ("placed", "approved", "shipped")[int(roll * 3)]
                self._open_orders.add(oid)
            else:
                status = "cancelled" if roll < 0.15 else "completed"
            version = versions.get(status) or rng.randint(2, 3)
            created_ms = max(start_ms, ms - (version - 1) * 3_600_000)
            email = rng.choice(emails) if emails else f"guest{rng.randrange(100_000)}@example.com"
            items, total = catalog.random_items_json(rng)
            yield (
                oid,
                version,
                ms,
                catalog.order_bytes(oid, email, status, items, total, created_ms, ms, version),
            )
