"""Parsing committed webhook events into changes, and fetching thin ones (coalesced per record).

Shared by the inbox worker (syncd.push.inbox_worker) and dead-letter replay (syncd.push.replay).

Fetches are coalesced per record. Thin events in one batch that name one record share one
fetch, and a fetch sent at time T answers every later thin event for that record received
before T: the event's change happened before it was delivered, so the record read at T
already holds it (or the record was gone by T). After a burst of thousands of thin events
for a few records, each record costs one fetch, not one per event or per batch.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from syncd.contract import TEST_EVENT
from syncd.core.reconcile import Outcome
from syncd.core.records import (
    Change,
    EventOutcome,
    RecordId,
    ThinRef,
    change_from_envelope,
    envelope_from_object,
    parse_envelope,
    parse_record,
)
from syncd.errors import RecordError
from syncd.metrics import Metrics
from syncd.push.parse_memo import parsed_bodies

log = logging.getLogger(__name__)

#: Reconciler outcomes: after any of them the mirror holds at least the fetched version.
_APPLIED_OUTCOMES = frozenset(EventOutcome(o.value) for o in Outcome)
#: Records a fetch is remembered for, to answer later thin events received before it.
COVERED_RECORDS = 10_000


class RecordFetcher(Protocol):
    async def get_record(
        self, resource: str, record_id: int | str, *, on_send: Callable[[], None] | None = None
    ) -> dict[str, Any] | None: ...


@dataclass(slots=True)
class InboxItem:
    """An event read back from `_inbox` (seq set) or `_dead_letters` (dead_letter_id set).
    A dead letter from a listing has `resource` set and holds the record, not an event."""

    event_id: str | None
    received_at: float
    body: bytes
    seq: int | None = None
    dead_letter_id: int | None = None
    resource: str | None = None


@dataclass(slots=True)
class Settled:
    """What one event means once parsed and fetched: a change to reconcile, or an outcome."""

    item: InboxItem
    event_type: str | None
    change: Change | None = None
    outcome: EventOutcome | None = None
    reason: str | None = None
    resource: str | None = None
    record_id: str | None = None
    ref: ThinRef | None = None
    #: When the fetch that answered this thin event was sent (None: no fetch answered it).
    fetched_at: float | None = None
    #: Version to record for an event answered without a change of its own.
    version: int | None = None


@dataclass(slots=True)
class _Fetch:
    """One fetch of one record, shared by every thin event that joined it."""

    task: asyncio.Future[dict[str, Any] | None]
    #: Processor clock when the request (its latest attempt) was sent; None while it waits.
    sent_at: float | None = None


class EventProcessor:
    """Parses events and fetches thin ones. Shared by the worker and dead-letter replay."""

    def __init__(
        self,
        client: RecordFetcher | None,
        *,
        fetch_thin: bool,
        fetch_concurrency: int = 8,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._fetch_thin = fetch_thin
        self._limit = asyncio.Semaphore(fetch_concurrency)
        self._clock = clock
        self._metrics = metrics
        self._inflight: dict[tuple[str, RecordId], _Fetch] = {}
        #: (resource, id) -> (when the committed fetch was sent, version it found; None: gone).
        #: Bounded: forgetting an entry costs one more fetch, nothing else.
        self._covered: OrderedDict[tuple[str, RecordId], tuple[float, int | None]] = OrderedDict()
        #: Fetches this processor made and thin events answered by another event's fetch.
        self.fetches = 0
        self.saved = 0

    async def prepare(self, items: Sequence[InboxItem]) -> list[Settled]:
        settled = [self._parse(item) for item in items]
        groups: dict[tuple[str, RecordId], list[Settled]] = {}
        for s in settled:
            if s.outcome is not None or s.ref is None:
                continue
            key = (s.ref.resource, s.ref.id)
            if self._answer_from_covered(s, key):
                continue
            groups.setdefault(key, []).append(s)
        if groups:
            await asyncio.gather(*(self._fetch_group(key, group) for key, group in groups.items()))
        return settled

    def committed(self, settled: Iterable[Settled]) -> None:
        """Called once `settled` is committed: its fetched records may now answer later thin
        events (never before: a lost commit would leave them answered by nothing)."""
        for s in settled:
            if (
                s.fetched_at is None
                or s.ref is None
                or s.outcome not in (*_APPLIED_OUTCOMES, EventOutcome.GONE)
            ):
                continue
            key = (s.ref.resource, s.ref.id)
            version = s.change.version if s.change is not None else s.version
            previous = self._covered.pop(key, None)
            if previous is None or previous[0] <= s.fetched_at:
                self._covered[key] = (s.fetched_at, version)
            else:
                self._covered[key] = previous
            while len(self._covered) > COVERED_RECORDS:
                self._covered.popitem(last=False)

    def _answer_from_covered(self, s: Settled, key: tuple[str, RecordId]) -> bool:
        # Receipt and send times are both this host's wall clock (receipts are stored); a
        # clock stepped back between them could answer an event from too early a fetch,
        # which the next poll repairs.
        covered = self._covered.get(key)
        if covered is None or s.item.received_at > covered[0]:
            return False
        s.outcome = EventOutcome.DUPLICATE if covered[1] is not None else EventOutcome.GONE
        s.version = covered[1]
        self._saved(1)
        return True

    def _saved(self, n: int) -> None:
        self.saved += n
        if self._metrics is not None and n:
            self._metrics.thin_fetches_saved.inc(n)

    def _parse(self, item: InboxItem) -> Settled:
        if item.resource is not None:
            return self._parse_record_letter(item)
        event_type: str | None = None
        try:
            parsed = parsed_bodies.take(item.body)
            env = parse_envelope(item.body) if parsed is None else envelope_from_object(parsed)
            event_type = env.event_type
            meaning = change_from_envelope(env)
        except RecordError as exc:
            return Settled(
                item, event_type, outcome=EventOutcome.INVALID, reason=exc.reason, resource=exc.resource
            )
        except Exception as exc:  # a payload must never stop the worker; keep it for inspection
            return Settled(
                item, event_type, outcome=EventOutcome.INVALID, reason=f"{type(exc).__name__}: {exc}"
            )
        if meaning is None:
            # The type is stored with the outcome; SQLite's text cannot hold a lone surrogate.
            shown = env.event_type.encode("utf-8", "backslashreplace").decode()
            return Settled(
                item,
                shown,
                outcome=EventOutcome.TEST if env.event_type == TEST_EVENT else EventOutcome.IGNORED,
            )
        if isinstance(meaning, Change):
            return Settled(
                item, env.event_type, change=meaning, resource=meaning.resource, record_id=str(meaning.id)
            )
        settled = Settled(
            item, env.event_type, resource=meaning.resource, record_id=str(meaning.id), ref=meaning
        )
        if not self._fetch_thin or self._client is None:
            # The safety poll will bring the record; nothing here can.
            settled.outcome = EventOutcome.UNFETCHED
        return settled

    @staticmethod
    def _parse_record_letter(item: InboxItem) -> Settled:
        """A record a listing returned that could not be stored. Replay applies the record
        as it was listed rather than fetching it again: the reconciler keeps the greatest
        state it is shown, so an old state is simply stale if the mirror has moved on, and
        the listing that follows any later change brings that change anyway. Re-applying
        needs no API and replays exactly what was refused."""
        resource = item.resource
        assert resource is not None
        try:
            obj = json.loads(item.body)
        except ValueError as exc:
            return Settled(
                item,
                None,
                outcome=EventOutcome.INVALID,
                reason=f"not a JSON record: {exc}",
                resource=resource,
            )
        try:
            change = parse_record(resource, obj, "poll")
        except RecordError as exc:
            rid = obj.get("id") if isinstance(obj, dict) else None
            return Settled(
                item,
                None,
                outcome=EventOutcome.INVALID,
                reason=exc.reason,
                resource=resource,
                record_id=None if rid is None else str(rid),
            )
        return Settled(item, None, change=change, resource=resource, record_id=str(change.id))

    async def _fetch_group(self, key: tuple[str, RecordId], group: list[Settled]) -> None:
        latest = max(s.item.received_at for s in group)
        fetch = self._inflight.get(key)
        # Joining a fetch already sent is only sound for events received before it was sent.
        if fetch is None or (fetch.sent_at is not None and fetch.sent_at < latest):
            fetch = _Fetch(asyncio.ensure_future(self._get(key)))
            fetch.task.add_done_callback(functools.partial(self._forget, key, fetch))
            self._inflight[key] = fetch
            self.fetches += 1
            self._saved(len(group) - 1)
        else:
            self._saved(len(group))
        try:
            record = await asyncio.shield(fetch.task)
        except RecordError as exc:
            for s in group:
                s.outcome, s.reason = EventOutcome.INVALID, exc.reason
            return
        except Exception as exc:
            ref = group[0].ref
            assert ref is not None
            log.warning(
                "event %s: fetching %s %r failed, will retry: %s", ref.event_id, ref.resource, ref.id, exc
            )
            for s in group:
                s.outcome, s.reason = EventOutcome.RETRY, str(exc)
            return
        for s in group:
            self._settle_fetched(s, record, fetch.sent_at)

    def _forget(self, key: tuple[str, RecordId], fetch: _Fetch, _done: object) -> None:
        if self._inflight.get(key) is fetch:
            del self._inflight[key]

    async def _get(self, key: tuple[str, RecordId]) -> dict[str, Any] | None:
        client = self._client
        assert client is not None
        resource, record_id = key

        def sent() -> None:
            fetch = self._inflight.get(key)
            if fetch is not None:
                fetch.sent_at = self._clock()

        async with self._limit:
            return await client.get_record(resource, record_id, on_send=sent)

    def _settle_fetched(self, s: Settled, record: dict[str, Any] | None, sent_at: float | None) -> None:
        ref = s.ref
        assert ref is not None
        s.fetched_at = sent_at
        if record is None:
            s.outcome = EventOutcome.GONE
            return
        try:
            change = parse_record(ref.resource, record, "fetch")
        except RecordError as exc:
            s.outcome, s.reason = EventOutcome.INVALID, f"fetched record: {exc.reason}"
            return
        # Ids are compared as text: an integer-id resource's ids are normalized already, and
        # a string-id record keeps the spelling its own record gives.
        if str(change.id) != str(ref.id):
            s.outcome = EventOutcome.RETRY
            s.reason = f"fetched record has id {change.id!r}, not the {ref.id!r} the event named"
            log.warning("event %s: %s %r: %s; will retry", ref.event_id, ref.resource, ref.id, s.reason)
            if self._metrics is not None:
                self._metrics.fetch_id_mismatches.inc()
            return
        s.change = Change(
            change.resource, change.id, change.version, change.updated_at, change.data, "fetch",
            ref.event_id, ref.event_type,
        )  # fmt: skip
