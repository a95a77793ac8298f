"""The Pet Store API contract's constants, one home for syncd and its simulator alike:
the resources, the webhook events, how late listings may be, the provider's retry schedule.
A shared module of rank 0: imports nothing from syncd, and core may use it."""

from __future__ import annotations

from typing import Literal

Resource = Literal["orders", "customers", "inventory"]
RESOURCES: tuple[Resource, ...] = ("orders", "customers", "inventory")

#: Every webhook event type the contract defines that carries a record.
EVENTS: tuple[str, ...] = (
    "order.created",
    "order.updated",
    "order.shipped",
    "order.completed",
    "order.cancelled",
    "inventory.low",
    "inventory.updated",
    "customer.registered",
)
#: The event `POST /webhooks/{id}/test` sends; it carries no record.
TEST_EVENT = "webhook.test"

#: The upper bound on how late a change becomes visible to listings (seconds).
VISIBILITY_LAG = 10.0
#: Delays between the provider's delivery attempts of one event (seconds); about 31.6 h in all.
RETRY_SCHEDULE: tuple[float, ...] = (60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)
