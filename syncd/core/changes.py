"""The change model of the feed: what a committed state change of the mirror looks like, and
which event it is.

Pure: no I/O and no clock. The store assigns `seq` and the caller supplies `at` (the commit
time of the mirror write), so the same inputs always give the same change.

Events are derived from the transition (the record's previous state and its new one), never
from the webhook event type that happened to bring it: an order whose status became
`shipped` is `order.shipped` whether a webhook, a poll or a fetch showed it. `EVENT_RULES` is
the one table of that derivation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Final, TypedDict

import orjson

RecordId = int | str


class ChangeKind(StrEnum):
    CREATED = "created"  # first state the mirror holds of the record
    UPDATED = "updated"  # a newer state (or a same-version conflict the ordering rule took)
    DELETED = "deleted"  # tombstoned by a full relist; carries the last known state
    RESTORED = "restored"  # a tombstoned record seen again


class ChangeSource(StrEnum):
    WEBHOOK = "webhook"
    POLL = "poll"
    FETCH = "fetch"
    RELIST = "relist"


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


def derive_event(
    resource: str,
    kind: ChangeKind,
    previous: Mapping[str, Any] | None,
    current: Mapping[str, Any],
) -> str:
    """The event of a transition. `previous` is the record's state before the change (the
    data of its previous change, or the mirror's row), None when unknown. Never raises on
    record values; an unknown resource is a programming error (ValueError)."""
    rule = EVENT_RULES.get(resource)
    if rule is None:
        raise ValueError(f"no event rule for resource {resource!r}; known: {', '.join(EVENT_RULES)}")
    if kind is ChangeKind.CREATED:
        return rule.created
    if kind is ChangeKind.DELETED:
        return rule.deleted
    if kind is ChangeKind.RESTORED:
        return rule.restored
    return rule.updated(previous, current)


# -- changed fields ----------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0, JSON has one number type), but a boolean
    is not the number 1, and containers compare element by element with the same rule."""
    if a is b:
        return True
    na, nb = _number(a), _number(b)
    if na is not None or nb is not None:
        return na is not None and nb is not None and na == nb
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):  # NaN or infinities, which _number refused
        return a == b or (a != a and b != b)
    return bool(a == b)


def changed_fields(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> Changed | None:
    """Every top-level field whose value differs between two states, as
    `{"field": {"from": old, "to": new}}`; a field absent on one side counts as null;
    `version` and `updatedAt` are left out. None when there is no previous state.

    Fields are listed in the order of `current`, then those only `previous` had."""
    if previous is None:
        return None
    out: Changed = {}
    for key, value in current.items():
        if key in IGNORED_FIELDS:
            continue
        old = previous.get(key)
        if not _same(old, value):
            out[key] = {"from": old, "to": value}
    for key, old in previous.items():
        if key in IGNORED_FIELDS or key in current or old is None:
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


# -- event patterns ----------------------------------------------------------------------


def matches(event: str, patterns: Iterable[str]) -> bool:
    """Whether `event` matches any of the fnmatch `patterns` (`order.*`, `*.deleted`, `*`).
    Case-sensitive on every platform."""
    return any(fnmatchcase(event, pattern) for pattern in patterns)


# -- the change record -------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    """JSON bytes of a record value. Values orjson refuses (integers past 64 bits, strings
    with lone surrogates) take the json module's way, ASCII-escaped so the bytes are valid
    UTF-8: a record the API sent must never stop the feed."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # What _dumps wrote by the json module's way (big integers) orjson may not read back.
        return json.loads(text)


#: Column order of `to_row()` and of `Change.from_row()` after `seq`; the store's SQL is
#: built from it.
ROW_FIELDS: Final = (
    "mirror",
    "event",
    "kind",
    "resource",
    "record_id",
    "version",
    "previous_version",
    "source",
    "changed",
    "data",
    "at",
    "initial",
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63


def _stored_id(record_id: RecordId) -> RecordId:
    # SQLite holds 64-bit integers; a larger id keeps its digits as text, as the mirror does.
    if isinstance(record_id, int) and not _INT64_MIN <= record_id < _INT64_MAX:
        return str(record_id)
    return record_id


@dataclass(frozen=True, slots=True)
class NewChange:
    """A change about to be committed with the mirror write that caused it, before the log
    gives it a `seq`. Build it with `new_change`."""

    mirror: str
    event: str
    kind: ChangeKind
    resource: str
    record_id: RecordId
    version: int
    previous_version: int | None
    source: ChangeSource
    changed: Changed | None
    data: Mapping[str, Any]
    at: str
    initial: bool = False

    def to_row(self) -> tuple[Any, ...]:
        """Column values in `ROW_FIELDS` order; `changed` and `data` as JSON text."""
        return (
            self.mirror,
            self.event,
            self.kind.value,
            self.resource,
            _stored_id(self.record_id),
            self.version,
            self.previous_version,
            self.source.value,
            None if self.changed is None else _dumps(self.changed).decode(),
            _dumps(self.data).decode(),
            self.at,
            1 if self.initial else 0,
        )

    def with_seq(self, seq: int) -> Change:
        return Change(
            seq,
            self.mirror,
            self.event,
            self.kind,
            self.resource,
            self.record_id,
            self.version,
            self.previous_version,
            self.source,
            self.changed,
            self.data,
            self.at,
            self.initial,
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change, in the shape every consumer sees (sinks, CLI, Python).

    `data` is the record after the change (the last known state for deleted); `changed` is
    null for created and deleted; `at` is the commit time of the mirror write (RFC 3339 UTC
    with milliseconds, as the store writes its timestamps)."""

    seq: int
    mirror: str
    event: str
    kind: ChangeKind
    resource: str
    record_id: RecordId
    version: int
    previous_version: int | None
    source: ChangeSource
    changed: Changed | None
    data: Mapping[str, Any]
    at: str
    initial: bool = False

    @property
    def webhook_id(self) -> str:
        """`<mirror>-<seq>`: stable across redeliveries, unique across mirrors."""
        return f"{self.mirror}-{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        # Key order is the documented one; orjson keeps insertion order.
        return {
            "seq": self.seq,
            "mirror": self.mirror,
            "event": self.event,
            "kind": self.kind.value,
            "resource": self.resource,
            "record_id": self.record_id,
            "version": self.version,
            "previous_version": self.previous_version,
            "source": self.source.value,
            "changed": self.changed,
            "data": self.data,
            "at": self.at,
            "initial": self.initial,
        }

    def to_json(self) -> bytes:
        """The change as compact JSON (UTF-8), keys in the documented order."""
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Change:
        """The inverse of `to_dict` (a change read back from JSON). Raises ValueError when a
        field is missing or of the wrong kind."""
        try:
            changed = obj["changed"]
            data = obj["data"]
            if changed is not None and not isinstance(changed, dict):
                raise ValueError("changed must be an object or null")
            if not isinstance(data, dict):
                raise ValueError("data must be an object")
            previous_version = obj["previous_version"]
            return cls(
                int(obj["seq"]),
                str(obj["mirror"]),
                str(obj["event"]),
                ChangeKind(obj["kind"]),
                str(obj["resource"]),
                obj["record_id"],
                int(obj["version"]),
                None if previous_version is None else int(previous_version),
                ChangeSource(obj["source"]),
                changed,
                data,
                str(obj["at"]),
                bool(obj["initial"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a change: {exc!r}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Change:
        obj = _loads(text)
        if not isinstance(obj, dict):
            raise ValueError("not a change: JSON is not an object")
        return cls.from_dict(obj)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Change:
        """A stored row: `seq`, then the columns of `ROW_FIELDS`."""
        (seq, mirror, event, kind, resource, record_id, version, previous_version, source, changed) = row[:10]
        data, at, initial = row[10:13]
        return cls(
            seq,
            mirror,
            event,
            ChangeKind(kind),
            resource,
            record_id,
            version,
            previous_version,
            ChangeSource(source),
            None if changed is None else _loads(changed),
            _loads(data),
            at,
            bool(initial),
        )

    def to_row(self) -> tuple[Any, ...]:
        """`seq`, then the columns of `ROW_FIELDS` (for copying a change as it was)."""
        return (self.seq, *self.unsequenced().to_row())

    def unsequenced(self) -> NewChange:
        return NewChange(
            self.mirror,
            self.event,
            self.kind,
            self.resource,
            self.record_id,
            self.version,
            self.previous_version,
            self.source,
            self.changed,
            self.data,
            self.at,
            self.initial,
        )


def new_change(
    *,
    mirror: str,
    resource: str,
    record_id: RecordId,
    kind: ChangeKind,
    source: ChangeSource,
    data: Mapping[str, Any],
    version: int,
    previous: Mapping[str, Any] | None,
    previous_version: int | None,
    at: str,
    initial: bool = False,
) -> NewChange:
    """The change for one committed state, with its event and `changed` derived.

    `previous` and `previous_version` are the data and version of the record's previous
    change (or of the mirror's row when the log no longer has one), None for a first state.
    For `deleted`, `data` and `version` are the last known state, so
    `version == previous_version`."""
    return NewChange(
        mirror,
        derive_event(resource, kind, previous, data),
        kind,
        resource,
        record_id,
        version,
        previous_version,
        source,
        changed_for(kind, previous, data),
        data,
        at,
        initial,
    )
