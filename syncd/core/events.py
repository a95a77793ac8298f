"""Which event a change of the mirror is, and what changed: the derivation table, the
changed fields, and event patterns.

Pure: no I/O and no clock. Events are derived from the transition (the record's previous
state and its new one), never from the webhook event type that happened to bring it: an
order whose status became `shipped` is `order.shipped` whether a webhook, a poll or a fetch
showed it. `EVENT_RULES` is the one table of that derivation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Final, TypedDict

import orjson


class ChangeKind(StrEnum):
    CREATED = "created"  # first state the mirror holds of the record
    UPDATED = "updated"  # a newer state (or a same-version conflict the ordering rule took)
    DELETED = "deleted"  # tombstoned by a full relist; carries the last known state
    RESTORED = "restored"  # a tombstoned record seen again


# "from" is a keyword, hence the functional form.
FieldChange = TypedDict("FieldChange", {"from": Any, "to": Any})
Changed = dict[str, FieldChange]

#: Fields that differ on every change and so say nothing about what changed.
IGNORED_FIELDS: Final = frozenset({"version", "updatedAt"})


# -- event derivation --------------------------------------------------------------------


def _number(value: Any) -> float | int | None:
    """A JSON number, or None for anything else. Booleans are not numbers (JSON keeps them
    apart even though Python does not), and NaN or infinities compare with nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def is_low(state: Mapping[str, Any] | None) -> bool | None:
    """Whether an inventory state is low (`quantity < threshold`): True or False when both
    are numbers, None when either is missing or not a number (unknown)."""
    if state is None:
        return None
    quantity = _number(state.get("quantity"))
    threshold = _number(state.get("threshold"))
    if quantity is None or threshold is None:
        return None
    return quantity < threshold


_ORDER_STATUS_EVENTS: Final = {
    "shipped": "order.shipped",
    "completed": "order.completed",
    "cancelled": "order.cancelled",
}


def _order_updated(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str:
    status = current.get("status")
    # A status that did not change is not news even if it is "shipped": the order was
    # shipped before and something else (an address, a total) changed since. An unknown
    # previous state counts as a null status, as an absent field does everywhere else.
    previous_status = None if previous is None else previous.get("status")
    if isinstance(status, str) and status != previous_status and status in _ORDER_STATUS_EVENTS:
        return _ORDER_STATUS_EVENTS[status]
    return "order.updated"


def _customer_updated(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str:
    return "customer.updated"


def _inventory_updated(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str:
    # "The previous state was not low" means "not known to be low": a previous state whose
    # quantity or threshold is missing or not a number (or no known previous state at all)
    # does not suppress the alert. A restocking handler would rather hear `inventory.low`
    # once more than never; a state that is itself malformed is never low.
    if is_low(current) is True and is_low(previous) is not True:
        return "inventory.low"
    return "inventory.updated"


@dataclass(frozen=True, slots=True)
class EventRule:
    """Events of one resource: fixed for created, deleted and restored; `updated` derives
    the event of an update from (previous state, new state)."""

    created: str
    deleted: str
    restored: str
    updated: Callable[[Mapping[str, Any] | None, Mapping[str, Any]], str]


#: The derivation table, resource -> rule (issue 13's table, row by row).
EVENT_RULES: Final[Mapping[str, EventRule]] = {
    "orders": EventRule("order.created", "order.deleted", "order.restored", _order_updated),
    "customers": EventRule("customer.registered", "customer.deleted", "customer.restored", _customer_updated),
    "inventory": EventRule(
        "inventory.created", "inventory.deleted", "inventory.restored", _inventory_updated
    ),
}

#: Every event the table can produce, for validating `events` patterns and for metrics.
ALL_EVENTS: Final = frozenset(
    {
        "order.created",
        "order.updated",
        "order.shipped",
        "order.completed",
        "order.cancelled",
        "order.deleted",
        "order.restored",
        "customer.registered",
        "customer.updated",
        "customer.deleted",
        "customer.restored",
        "inventory.created",
        "inventory.updated",
        "inventory.low",
        "inventory.deleted",
        "inventory.restored",
    }
)


def rule_for(resource: str) -> EventRule:
    """The resource's row of `EVENT_RULES`; an unknown resource is a programming error
    (ValueError)."""
    rule = EVENT_RULES.get(resource)
    if rule is None:
        raise ValueError(f"no event rule for resource {resource!r}; known: {', '.join(EVENT_RULES)}")
    return rule


def derive_event(
    resource: str,
    kind: ChangeKind,
    previous: Mapping[str, Any] | None,
    current: Mapping[str, Any],
) -> str:
    """The event of a transition. `previous` is the record's state before the change (the
    data of its previous change, or the mirror's row), None when unknown. Never raises on
    record values; an unknown resource is a programming error (ValueError)."""
    rule = rule_for(resource)
    if kind is ChangeKind.CREATED:
        return rule.created
    if kind is ChangeKind.DELETED:
        return rule.deleted
    if kind is ChangeKind.RESTORED:
        return rule.restored
    return rule.updated(previous, current)


# -- changed fields ----------------------------------------------------------------------


#: Types compared with == alone when both sides have the same one.
_SCALARS: Final = frozenset({str, int, bool, type(None)})


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0, JSON has one number type), but a boolean
    is not the number 1; nested values are equal when their canonical JSON is."""
    kind = type(a)
    if kind is type(b):
        if kind in _SCALARS:
            return bool(a == b)
        if kind is float:
            return bool(a == b or (a != a and b != b))  # NaN is the same NaN
        # Two lists or two dicts: the common nested case, settled here without the
        # isinstance tests below (half of this function's cost for an order's items).
        nested = kind is list or kind is dict or isinstance(a, dict | list)
    else:
        nested = isinstance(a, dict | list) and isinstance(b, dict | list)
    if nested:
        # Nested values compare as canonical JSON text, as the reconciler compares them; one
        # orjson call each is several times faster than walking them in Python.
        try:
            return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
                b, option=orjson.OPT_SORT_KEYS
            )
        except TypeError:
            pass  # integers past 64 bits: compare by walking them
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(value, b[key]) for key, value in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    na, nb = _number(a), _number(b)
    if na is not None or nb is not None:
        return na is not None and nb is not None and na == nb
    return kind is type(b) and bool(a == b)


_MISSING: Final = object()


def changed_fields(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> Changed | None:
    """Every top-level field whose value differs between two states, as
    `{"field": {"from": old, "to": new}}`; a field absent on one side counts as null;
    `version` and `updatedAt` are left out. None when there is no previous state.

    Fields are listed in the order of `current`, then those only `previous` had."""
    if previous is None:
        return None
    out: Changed = {}
    get = previous.get
    ignored, scalars, missing = IGNORED_FIELDS, _SCALARS, _MISSING
    # Fields of `previous` that `current` has too: when that is all of them, no field can
    # have been removed and the second pass over `previous` is skipped (the usual case).
    shared = 0
    for key, value in current.items():
        old = get(key, missing)
        if old is missing:
            old = None
        else:
            shared += 1
        if key in ignored:
            continue
        # Runs for every field of every change the mirror commits: most are unchanged
        # strings or integers, settled without a call.
        kind = type(value)
        if kind is type(old) and (kind in scalars or kind is float) and old == value:
            continue
        if _same(old, value):
            continue
        out[key] = {"from": old, "to": value}
    if shared < len(previous):
        for key, old in previous.items():
            if old is None or key in current or key in ignored:
                continue
            out[key] = {"from": old, "to": None}
    return out


def changed_for(
    kind: ChangeKind, previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> Changed | None:
    """`changed` as a change carries it: null for created and deleted; for updated and
    restored, what differs from the previous (last known) state."""
    if kind is ChangeKind.CREATED or kind is ChangeKind.DELETED:
        return None
    return changed_fields(previous, current)


def transition(
    rule: EventRule, kind: ChangeKind, previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> tuple[str, Changed | None]:
    """`derive_event` and `changed_for` in one call, with the resource's rule looked up by
    the caller: the apply path's way, once per change it logs."""
    if kind is ChangeKind.UPDATED:
        return rule.updated(previous, current), changed_fields(previous, current)
    if kind is ChangeKind.CREATED:
        return rule.created, None
    if kind is ChangeKind.RESTORED:
        return rule.restored, changed_fields(previous, current)
    return rule.deleted, None


# -- event patterns ----------------------------------------------------------------------


def matches(event: str, patterns: Iterable[str]) -> bool:
    """Whether `event` matches any of the fnmatch `patterns` (`order.*`, `*.deleted`, `*`).
    Case-sensitive on every platform."""
    return any(fnmatchcase(event, pattern) for pattern in patterns)
