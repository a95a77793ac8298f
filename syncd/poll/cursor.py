"""Which cursor a poll may start from, and which listed timestamps may move it.

The cursor is the largest server `updatedAt` committed for a resource, stored in the API's
form (UTC, milliseconds, `Z`); timestamps are compared as instants (syncd.timefmt), never
as strings. A record stamped more than `poll.max_clock_skew` ahead of the API's clock (the
page's `Date` header, else this host's; a Date header itself more than the skew ahead of
this host counts as this host's clock plus the skew) is mirrored but never moves the
cursor: one such record would otherwise make every later change invisible to polls. A
stored cursor that is no instant, or is that far in the future (written by an older
syncd), is dropped and the resource listed in full again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from syncd import timefmt
from syncd.core.records import Change
from syncd.store.cursors import CursorState
from syncd.store.db import Store

if TYPE_CHECKING:
    from syncd.metrics import Metrics

#: The poller's logger: these warnings are about its listings, and have always come from it.
log = logging.getLogger("syncd.poll.poller")

#: Far-future records remembered so each is counted and logged once, not on every poll.
FUTURE_REMEMBERED = 4096


def cursor_problem(cursor: str | None, now: float, max_skew: float) -> str | None:
    """Why a stored cursor cannot be trusted, or None when it can."""
    if cursor is None:
        return None
    try:
        at = timefmt.to_epoch(cursor)
    except timefmt.TimestampError as exc:
        return f"stored cursor {cursor!r} is not an instant ({exc.problem})"
    if at > now + max_skew:
        return f"stored cursor {cursor!r} is more than poll.max_clock_skew ({max_skew:g}s) in the future"
    return None


def trusted_cursor(
    store: Store, resource: str, now: float, max_skew: float
) -> tuple[CursorState, str | None]:
    """The cursor state, after dropping a cursor that cannot be trusted: polls then list
    from the start, the only safe point left (the reconciler drops what it already has).
    Runs on the writer thread."""
    with store.db.atomic():
        state = store.cursor_state(resource)
        problem = cursor_problem(state.cursor, now, max_skew)
        if problem is not None:
            store.set_cursor(resource, None)
            state = store.cursor_state(resource)
    return state, problem


def instant_ms(cursor: str | None) -> int | None:
    """The timestamp in epoch milliseconds, or None when there is none or it is no instant."""
    if cursor is None:
        return None
    try:
        return timefmt.to_ms(cursor)
    except timefmt.TimestampError:
        return None


def later(a: int | None, b: int | None) -> int | None:
    """The later of two optional instants."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def trust_limit(api_date: float | None, local: float, max_skew: float) -> int:
    """The latest `updatedAt` (epoch ms) that may move the cursor. The API's clock, not this
    host's, judges its timestamps; but a Date header far ahead of this host (an upstream
    clock that jumped) vouches for nothing."""
    reference = local if api_date is None else min(api_date, local + max_skew)
    return int((reference + max_skew) * 1000)


class FutureSightings:
    """Records seen stamped too far ahead, so each (resource, id, stamp) is reported once:
    a poll re-reads them every time (they are past every `since`). Bounded, oldest first out."""

    def __init__(self, capacity: int = FUTURE_REMEMBERED) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, object, int], None] = OrderedDict()

    def first_sighting(self, resource: str, record_id: object, ms: int) -> bool:
        key = (resource, record_id, ms)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def report(
        self,
        resource: str,
        changes: Sequence[Change],
        stamps: Sequence[int],
        trust_until: int,
        dated: bool,
        max_skew: float,
        metrics: Metrics | None,
    ) -> int:
        """Count and log, once per record and timestamp, the changes stamped past
        `trust_until` (`dated`: the page had a Date header). Returns how many were new."""
        clock = "the API's Date header" if dated else "this host's clock (no Date header)"
        new = 0
        for change, ms in zip(changes, stamps, strict=True):
            if ms <= trust_until or not self.first_sighting(resource, change.id, ms):
                continue
            new += 1
            if metrics is not None:
                metrics.future_timestamps.labels(resource=resource).inc()
            log.warning(
                "%s: record %r has updatedAt %s, more than poll.max_clock_skew (%gs) ahead of %s;"
                " mirrored, but the cursor does not move to it",
                resource,
                change.id,
                change.updated_at,
                max_skew,
                clock,
            )
        return new
