"""The change record of the feed: what one committed state change of the mirror looks like,
as every consumer sees it (sinks, CLI, Python), and its storage row.

Pure: no I/O and no clock. The store assigns `seq` and the caller supplies `at` (the commit
time of the mirror write), so the same inputs always give the same change. Which event a
change is comes from `syncd.core.events`, re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple

import orjson

from syncd.core.events import ALL_EVENTS as ALL_EVENTS
from syncd.core.events import EVENT_RULES as EVENT_RULES
from syncd.core.events import IGNORED_FIELDS as IGNORED_FIELDS
from syncd.core.events import Changed as Changed
from syncd.core.events import ChangeKind as ChangeKind
from syncd.core.events import EventRule as EventRule
from syncd.core.events import FieldChange as FieldChange
from syncd.core.events import changed_fields as changed_fields
from syncd.core.events import changed_for as changed_for
from syncd.core.events import derive_event as derive_event
from syncd.core.events import is_low as is_low
from syncd.core.events import matches as matches
from syncd.core.events import rule_for as rule_for
from syncd.core.events import transition as transition

RecordId = int | str


class ChangeSource(StrEnum):
    WEBHOOK = "webhook"
    POLL = "poll"
    FETCH = "fetch"
    RELIST = "relist"


# -- the change record -------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    """JSON bytes of a record value. Values orjson refuses (integers past 64 bits, strings
    with lone surrogates) take the json module's way, ASCII-escaped so the bytes are valid
    UTF-8: a record the API sent must never stop the feed."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


#: A run of digits as long as an integer orjson cannot hold (below -2**63 or from 2**64 on)
#: is found by mapping every digit to "0" and anything else to a space and looking for 19
#: zeros: two C passes, about a seventh of the cost of a regex search (2.0 us for an
#: order's data; the apply path reads one per logged update).
_DIGITS_ONLY: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN: Final = b"0" * 19


def _loads(text: str | bytes) -> Any:
    # orjson reads an integer past 64 bits as a float, without an error: a record's big
    # integer (which _dumps wrote by the json module's way) would come back rounded. Text
    # that may hold one takes the json module's way, which keeps every digit.
    if isinstance(text, str):
        try:
            raw = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: orjson refuses it anyway
            return json.loads(text)
    else:
        raw = text
    if _LONG_RUN in raw.translate(_DIGITS_ONLY):
        return json.loads(text)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Lone surrogates, which _dumps wrote ASCII-escaped by the json module's way.
        return json.loads(text)


#: Reads back the JSON a change's `data` and `changed` are stored as (for the store's
#: narrower reads of the log).
load_json = _loads


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


class NewChange(NamedTuple):
    """A change about to be committed with the mirror write that caused it, before the log
    gives it a `seq`. Build it with `new_change`. A named tuple, like `Change`: the apply
    path builds one per state it logs, and a frozen dataclass's constructor (a
    `object.__setattr__` per field) cost about 2 us of its 12 fields."""

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
        return _row(
            self.mirror, self.event, self.kind, self.resource, self.record_id, self.version,
            self.previous_version, self.source.value, self.changed, self.data, self.at, self.initial,
        )  # fmt: skip

    def with_seq(self, seq: int) -> Change:
        return Change(seq, *self)


class Change(NamedTuple):
    """One committed change, in the shape every consumer sees (sinks, CLI, Python). A named
    tuple: every change a sink or `syncd changes` reads is built from its row.

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
        return NewChange(*self[1:])


# `with_seq` and `unsequenced` rely on it: NewChange's fields are Change's after `seq`.
assert Change._fields[1:] == NewChange._fields


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
    event, changed = transition(rule_for(resource), kind, previous, data)
    return NewChange(
        mirror,
        event,
        kind,
        resource,
        record_id,
        version,
        previous_version,
        source,
        changed,
        data,
        at,
        initial,
    )


def change_row(
    mirror: str,
    rule: EventRule,
    resource: str,
    record_id: RecordId,
    kind: ChangeKind,
    source: str,
    data: Mapping[str, Any],
    version: int,
    previous: Mapping[str, Any] | None,
    previous_version: int | None,
    at: str,
    initial: bool,
) -> tuple[Any, ...]:
    """`new_change(...).to_row()` without the `NewChange` in between, for the apply path,
    which logs every state it writes: building and reading the frozen object (12 fields)
    cost 2 us of an update's log. `rule` is `EVENT_RULES[resource]`, looked up by the
    caller; `source` a `ChangeSource` value."""
    event, changed = transition(rule, kind, previous, data)
    return _row(
        mirror,
        event,
        kind,
        resource,
        record_id,
        version,
        previous_version,
        source,
        changed,
        data,
        at,
        initial,
    )


def _row(
    mirror: str,
    event: str,
    kind: ChangeKind,
    resource: str,
    record_id: RecordId,
    version: int,
    previous_version: int | None,
    source: str,
    changed: Changed | None,
    data: Mapping[str, Any],
    at: str,
    initial: bool,
) -> tuple[Any, ...]:
    return (
        mirror,
        event,
        kind.value,
        resource,
        _stored_id(record_id),
        version,
        previous_version,
        source,
        None if changed is None else _dumps(changed).decode(),
        _dumps(data).decode(),
        at,
        1 if initial else 0,
    )
