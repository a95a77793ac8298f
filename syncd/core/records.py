"""Normalized record versions (`Change`) and parsing of API records and webhook envelopes.

Everything that reaches the reconciler is a `Change`, whichever path it came by. Parsing is
strict about what the reconciler needs (id, version, updatedAt) and lenient about everything
else: unknown fields are kept (they become new columns), unknown event types are recognised
as unknown rather than treated as errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple, TypeVar

from syncd import jsonparse, timefmt
from syncd.contract import EVENTS
from syncd.errors import RecordError

Source = Literal["webhook", "poll", "fetch"]
T = TypeVar("T")
#: Deeper JSON than this is not a valid envelope: real ones are 3-4 levels deep, and deep
#: nesting is a way to make every later json.dumps/loads of the body hit the recursion limit.
MAX_JSON_DEPTH = 32
RecordId = int | str
#: How much a source is trusted when two different contents claim the same version: an API
#: read (listing or GET one) is the provider's current truth, a webhook snapshot may be stale.
AUTHORITY: dict[str, int] = {"webhook": 1, "poll": 2, "fetch": 2}

#: Event type prefix -> resource, from the contract's event table.
_EVENT_PREFIXES = {"order": "orders", "customer": "customers", "inventory": "inventory"}


class EventOutcome(StrEnum):
    """What became of a webhook event (`_events.outcome`, `syncd replay`, metrics labels)."""

    PENDING = "pending"  # stored in the inbox, not yet processed
    # The reconciler's outcomes (syncd.core.reconcile.Outcome), for an event that had a change.
    APPLIED = "applied"
    RESURRECTED = "resurrected"
    CONFLICT = "conflict"
    STALE = "stale"
    DUPLICATE = "duplicate"
    INVALID = "invalid"  # could not be parsed or stored: kept as a dead letter
    # Events that carry no change for the mirror.
    TEST = "test"  # webhook.test
    IGNORED = "ignored"  # an event type syncd does not know
    GONE = "gone"  # thin event whose record the API no longer has
    UNFETCHED = "unfetched"  # thin event not fetched (fetching is off): the poll brings it
    #: Never stored: a thin event whose fetch failed stays in the inbox, to be retried.
    RETRY = "retry"


#: SQLite's integers are 64-bit: an id or version beyond that could not be stored or compared.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Change(NamedTuple):
    """One version of one record, as the API or a webhook showed it. A named tuple, not a
    frozen dataclass: a listing builds one per record, and a frozen dataclass's constructor
    (one `object.__setattr__` per field) cost 1.6 us of the 2.8 us a record took to parse."""

    resource: str
    id: RecordId
    version: int
    updated_at: str
    data: Mapping[str, Any]
    source: Source
    event_id: str | None = None
    event_type: str | None = None


@dataclass(frozen=True, slots=True)
class ThinRef:
    """A thin webhook event: only the id is known, the record must be fetched."""

    resource: str
    id: RecordId
    event_id: str
    event_type: str


@dataclass(frozen=True, slots=True)
class Envelope:
    event_id: str
    event_type: str
    timestamp: str | None
    data: Any


def resource_for_event(event_type: str) -> str | None:
    """The resource an event type is about, or None when syncd does not know the type."""
    if event_type in EVENTS:
        return _EVENT_PREFIXES[event_type.split(".", 1)[0]]
    return None


#: Resources whose ids are integers by the contract; the others' ids are strings.
INTEGER_ID_RESOURCES = frozenset({"orders"})
_DECIMAL_ID_RE = re.compile(r"[0-9]+")


def _check_id(value: object, resource: str) -> RecordId:
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return value  # the usual id of a listing's order: nothing to normalize
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RecordError(f"id must be an integer or a string, got {value!r}", resource=resource)
    if isinstance(value, str):
        if not value:
            raise RecordError("id must not be empty", resource=resource)
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise RecordError(
                    f"id {value!r} is not valid Unicode (lone surrogate)", resource=resource
                ) from None
    elif not _INT64_MIN <= value <= _INT64_MAX:
        raise RecordError(f"id {value} is outside the 64-bit integer range", resource=resource)
    return normalize_id(resource, value)


def normalize_id(resource: str, value: RecordId) -> RecordId:
    """One spelling per record: an order id written as ASCII decimal digits ("12") is the
    integer it spells (12), so a thin event, a webhook snapshot and a listing all name the
    same row. Nothing else changes: string ids of customers and inventory stay strings even
    when they look numeric ("007" must not become 7), and an order id that is not all digits
    stays the string it is, as does one past SQLite's 64-bit integers."""
    if (
        resource in INTEGER_ID_RESOURCES
        and isinstance(value, str)
        and len(value) <= 19
        and _DECIMAL_ID_RE.fullmatch(value)
        and int(value) < 2**63
    ):
        return int(value)
    return value


def parse_record(resource: str, obj: object, source: Source) -> Change:
    """An API record (listing, GET one, or a full webhook snapshot) -> Change."""
    return _parse_record(resource, obj, source, timefmt.parse)[0]


def parse_listed(resource: str, obj: object) -> tuple[Change, int]:
    """`parse_record` of a listed record, and its updatedAt in epoch milliseconds: a
    listing's cursor needs the instant, and the check has just computed it."""
    return _parse_record(resource, obj, "poll", timefmt.to_ms)


def _parse_record(
    resource: str, obj: object, source: Source, instant: Callable[[str], T]
) -> tuple[Change, T]:
    if not isinstance(obj, dict):
        raise RecordError(f"record must be a JSON object, got {type(obj).__name__}", resource=resource)
    record_id = _check_id(obj.get("id"), resource)
    if type(record_id) is not type(obj["id"]):
        obj = {**obj, "id": record_id}  # the mirror row is keyed by the normalized id
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordError(
            f"record {record_id!r}: version must be an integer >= 1, got {version!r}",
            resource=resource,
        )
    if version > _INT64_MAX:
        raise RecordError(
            f"record {record_id!r}: version {version} is outside the 64-bit integer range",
            resource=resource,
        )
    updated_at = obj.get("updatedAt")
    if not isinstance(updated_at, str):
        raise RecordError(
            f"record {record_id!r}: updatedAt must be an RFC 3339 timestamp, got {updated_at!r}",
            resource=resource,
        )
    try:
        at = instant(updated_at)
    except timefmt.TimestampError as exc:
        raise RecordError(
            f"record {record_id!r}: updatedAt must be an RFC 3339 timestamp, got {updated_at!r} ({exc.problem})",
            resource=resource,
        ) from None
    return Change(resource, record_id, version, updated_at, obj, source), at


def _loads(body: bytes) -> Any:
    """`json.loads(body)`, through orjson where it gives the same objects (syncd.jsonparse):
    the worker parses every delivery of a backlog again (the receiver's parses are mostly
    gone from their memo by then), and the standard parser was a third of that parse.
    Bodies not in UTF-8 go to the standard parser, which also reads UTF-16 and UTF-32."""
    try:
        return jsonparse.loads(body)
    except UnicodeDecodeError:
        return json.loads(body)


def parse_envelope(body: bytes) -> Envelope:
    """Raw webhook body -> Envelope. Accepts the aliases `id` for `eventId` and `eventType` or
    `type` for `event`. Raises RecordError with a reason fit for a dead letter."""
    try:
        obj = _loads(body)
    except RecursionError:
        raise RecordError("body is nested deeper than the JSON parser's limit") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"body is not JSON: {exc.__class__.__name__}") from None
    # Nesting needs one bracket per level, so few brackets (the usual case) need no walk.
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and not json_depth_ok(obj, MAX_JSON_DEPTH):
        raise RecordError(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return envelope_from_object(obj)


def json_depth_ok(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def envelope_from_object(obj: object) -> Envelope:
    if not isinstance(obj, dict):
        raise RecordError(f"envelope must be a JSON object, got {type(obj).__name__}")
    event_id = obj.get("eventId", obj.get("id"))
    if not isinstance(event_id, str) or not event_id:
        raise RecordError("envelope has no eventId")
    event_type = obj.get("event", obj.get("eventType", obj.get("type")))
    if not isinstance(event_type, str) or not event_type:
        raise RecordError(f"event {event_id}: envelope has no event type")
    timestamp = obj.get("timestamp")
    return Envelope(event_id, event_type, timestamp if isinstance(timestamp, str) else None, obj.get("data"))


def change_from_envelope(env: Envelope) -> Change | ThinRef | None:
    """What a known event means for the mirror: a full snapshot, a thin reference to fetch,
    or None for events that carry no record (webhook.test, unknown types)."""
    resource = resource_for_event(env.event_type)
    if resource is None:
        return None
    data = env.data
    if not isinstance(data, dict):
        raise RecordError(f"event {env.event_id}: data must be a JSON object", resource=resource)
    if set(data) == {"id"}:
        return ThinRef(resource, _check_id(data["id"], resource), env.event_id, env.event_type)
    change = parse_record(resource, data, "webhook")
    return Change(
        change.resource,
        change.id,
        change.version,
        change.updated_at,
        change.data,
        "webhook",
        env.event_id,
        env.event_type,
    )
