"""Since-cursor sync of one resource: incremental polls, the first full listing, full relists.

Cursor rule: the cursor is the largest server `updatedAt` committed for the resource. A poll
asks `since = cursor - poll.lookback`, because a change becomes visible to listings up to the
API's visibility lag after its `updatedAt`: the lookback re-reads that window and the
reconciler drops what the mirror already has. Each page's changes and the cursor advance are
one transaction, so the cursor never points past data that is not committed.

Pages stream. While the writer commits, the client fetches and parses the next pages;
the writer's next transaction takes every page parsed meanwhile (at most
`Poller.max_group_pages`), so a writer that falls behind commits more per transaction
instead of stalling the listing. Memory holds at most two groups and one page in flight,
whatever the size of the listing.

Timestamps are compared as instants (syncd.timefmt), never as strings, and the cursor is
stored in the API's form (UTC, milliseconds, `Z`). A record stamped more than
`poll.max_clock_skew` ahead of the API's clock (the page's `Date` header, else this host's;
a Date header itself more than the skew ahead of this host counts as this host's clock plus
the skew) is mirrored but never moves the cursor: one such record would otherwise make
every later change invisible to polls. A stored cursor that is no instant, or is that far in the future
(written by an older syncd), is dropped and the resource listed in full again.

A listing ends with ListingLoopError when the API repeats a next_cursor of the same listing
or the listing goes past `poll.max_pages`; what it listed before stays committed.

A full relist that would tombstone more than `poll.max_tombstone_ratio` of the live records
(and more than `poll.tombstone_floor`, or every live record) tombstones nothing: an empty or
short listing (an API incident, a key of another account) must not erase the mirror. The
reason is kept in `_meta` for `syncd status` until a relist tombstones normally or
`syncd resync --allow-mass-delete` applies it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

from syncd import timefmt
from syncd.contract import VISIBILITY_LAG
from syncd.core.reconcile import BatchResult, Outcome
from syncd.core.records import Change, parse_record
from syncd.errors import CursorExpiredError, ListingLoopError, RecordError
from syncd.poll.progress import ProgressReporter
from syncd.store.apply import apply_batch
from syncd.store.cursors import CursorState
from syncd.store.db import Store
from syncd.store.dead_letters import add_dead_letter
from syncd.store.mirror import mirror_counts
from syncd.store.schema import META_RELIST_HELD
from syncd.store.writer import Writer

if TYPE_CHECKING:
    from syncd.api import Page, PetstoreClient
    from syncd.config import Config
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

#: Expired cursors in a row before a listing gives up (each restart resumes, not rewinds).
MAX_CURSOR_RESTARTS = 20
#: next_cursor values of one listing remembered to spot a repeat; a longer cycle is ended
#: by poll.max_pages instead.
CURSORS_REMEMBERED = 1024
#: Far-future records remembered so each is counted and logged once, not on every poll.
FUTURE_REMEMBERED = 4096

Kind = Literal["incremental", "full"]


@dataclass
class PollResult:
    resource: str
    kind: Kind
    pages: int = 0
    seen: int = 0
    #: Records newer than the cursor the poll started from.
    fresh: int = 0
    #: Records the poll had to write: changes the mirror (and so the webhooks) did not have.
    applied: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    tombstoned: int = 0
    duration: float = 0.0
    cursor: str | None = None
    #: The first listing of an empty mirror: everything is fresh and applied.
    initial: bool = False
    #: stop() ended the listing early; what was listed so far is committed.
    stopped: bool = False
    cursor_restarts: int = 0
    #: Why the stored cursor was dropped before this listing (not an instant, far future).
    cursor_reset: str | None = None
    #: A relist that tombstoned nothing because it would have deleted too much: why.
    held_back: str | None = None
    #: Records stamped too far ahead of the API's clock, seen for the first time.
    future: int = 0


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


def _trusted_cursor(
    store: Store, resource: str, now: float, max_skew: float
) -> tuple[CursorState, str | None]:
    """The cursor state, after dropping a cursor that cannot be trusted: polls then list
    from the start, the only safe point left (the reconciler drops what it already has)."""
    with store.db.atomic():
        state = store.cursor_state(resource)
        problem = cursor_problem(state.cursor, now, max_skew)
        if problem is not None:
            store.set_cursor(resource, None)
            state = store.cursor_state(resource)
    return state, problem


def _ms(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        return timefmt.to_ms(cursor)
    except timefmt.TimestampError:
        return None


def _later(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


#: A listed record that could not be parsed: (the record, why, its id as text if it has one).
Rejected = tuple[object, str, str | None]


def _record_json(obj: object) -> bytes:
    # ASCII JSON holds anything a parsed record can (lone surrogates, huge integers).
    return json.dumps(obj, default=str).encode()


def _commit_page(
    store: Store,
    resource: str,
    changes: list[Change],
    page_max: int | None,
    listed: int | None,
    polled_at: float,
    rejected: list[Rejected] | None = None,
) -> tuple[BatchResult, str | None]:
    """Apply a page and move the cursor, in one transaction (runs on the writer thread).

    Records that cannot be parsed or stored become dead letters in the same transaction, so
    every record the cursor moves past is either mirrored or kept with its reason; the
    cursor may pass a dead letter, which `syncd replay` re-applies.

    The cursor is re-read here so a listing never moves it backwards past what another
    listing of the same resource committed meanwhile."""
    with store.db.atomic():
        result = apply_batch(store, changes, synced_at=timefmt.format_epoch(), listed=listed)
        if listed is not None:
            # The listing did return these records: a relist must not tombstone an older
            # copy of one merely because the copy listed now cannot be stored.
            spared = [obj.get("id") for obj, _, _ in rejected or () if isinstance(obj, dict)]
            spared += [changes[i].id for i in result.reasons]
            _mark_listed_where_possible(store, resource, spared, listed)
        for obj, reason, record_id in rejected or ():
            add_dead_letter(
                store.conn,
                None,
                None,
                polled_at,
                reason,
                _record_json(obj),
                resource=resource,
                record_id=record_id,
                source="poll",
            )
        for i, reason in result.reasons.items():
            change = changes[i]
            add_dead_letter(
                store.conn,
                None,
                None,
                polled_at,
                reason,
                _record_json(change.data),
                resource=resource,
                record_id=str(change.id),
                source="poll",
            )
        current = store.cursor_state(resource).cursor
        newest = _later(_ms(current), page_max)
        cursor = current if newest is None else timefmt.format_ms(newest)
        if cursor != current:
            store.set_cursor(resource, cursor)
        store.update_cursor_meta(resource, last_poll_at=polled_at)
    return result, cursor


@dataclass(frozen=True)
class _RelistGuard:
    generation: int
    spare_since: str
    #: Live records before the listing: the share is of what the mirror had, so a listing
    #: of another shop that adds many records cannot dilute it.
    live: int
    ratio: float
    floor: int
    allow_mass_delete: bool

    def held_back(self, would: int) -> bool:
        if would == 0 or self.allow_mass_delete:
            return False
        if would >= self.live:
            return True
        # Exact decimal arithmetic: at exactly the ratio the relist goes ahead.
        return would > self.floor and Fraction(repr(self.ratio)) * self.live < would

    def describe(self, resource: str, would: int) -> str:
        return (
            f"relist held back: would delete {would} of {self.live} live {resource} records"
            f" (more than poll.max_tombstone_ratio={self.ratio:g}, poll.tombstone_floor={self.floor},"
            f" or all of them); check the API and the config, then run"
            f" `syncd resync {resource} --allow-mass-delete`"
        )


def _mark_listed_where_possible(store: Store, resource: str, ids: list[object], generation: int) -> None:
    for rid in ids:
        if isinstance(rid, bool) or not isinstance(rid, int | str):
            continue
        try:
            with store.db.atomic():
                store.mark_listed(resource, [rid], generation)
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError, UnicodeError):
            continue  # an id SQLite cannot bind is no id of a stored record either


def _finish_listing(
    store: Store, resource: str, at: float, changes: int, relist: _RelistGuard | None
) -> tuple[int, str | None]:
    """Record the listing's success; for a relist, tombstone what it lacked unless that is
    a mass delete. Returns (tombstoned, why held back or None)."""
    with store.db.atomic():
        tombstoned = 0
        held: str | None = None
        if relist is not None:
            would = store.count_unlisted(resource, relist.generation, spare_since=relist.spare_since)
            if relist.held_back(would):
                held = relist.describe(resource, would)
                store.set_meta(META_RELIST_HELD + resource, held)
            else:
                tombstoned = store.tombstone_unlisted(
                    resource, relist.generation, spare_since=relist.spare_since, now=timefmt.format_epoch(at)
                )
                store.delete_meta(META_RELIST_HELD + resource)
            store.update_cursor_meta(resource, last_full_relist_at=at)
        store.update_cursor_meta(resource, last_success_at=at, last_changes=changes)
    return tombstoned, held


def _start_relist(
    store: Store, resource: str, now: float, max_skew: float
) -> tuple[int, str | None, int, str | None]:
    # The generation is taken before listing, so a listing cut short (crash, stop) never
    # shares its number with the next one.
    state, problem = _trusted_cursor(store, resource, now, max_skew)
    with store.db.atomic():
        generation = state.relist_generation + 1
        store.update_cursor_meta(resource, relist_generation=generation)
        live, _ = mirror_counts(store.conn, resource)
    return generation, state.cursor, live, problem


class PagingGuard:
    """Ends a listing that would not end: a next_cursor seen before in the same listing
    (the API loops), or more pages than poll.max_pages. Remembers a bounded set of cursors."""

    def __init__(self, resource: str, max_pages: int) -> None:
        self.resource = resource
        self.max_pages = max_pages
        self.pages = 0
        self._order: deque[str] = deque()
        self._seen: set[str] = set()

    def check(self, page: Page) -> None:
        self.pages += 1
        if not page.has_more or page.next_cursor is None:
            return
        cursor = page.next_cursor
        if cursor in self._seen:
            raise ListingLoopError(
                f"{self.resource}: the API repeated next_cursor {cursor[:80]!r} after {self.pages} pages"
                " of one listing; listing ended (pages before it are committed)",
                resource=self.resource,
                reason="repeated_cursor",
            )
        if self.pages >= self.max_pages:
            raise ListingLoopError(
                f"{self.resource}: listing still has more after poll.max_pages={self.max_pages} pages;"
                " listing ended (pages before it are committed)",
                resource=self.resource,
                reason="too_many_pages",
            )
        self._seen.add(cursor)
        self._order.append(cursor)
        if len(self._order) > CURSORS_REMEMBERED:
            self._seen.discard(self._order.popleft())


@dataclass
class _Pending:
    """Parsed pages on their way through the writer, committed as one transaction."""

    resource: str
    changes: list[Change]
    page_max: int | None
    fresh: int
    listed: int
    pages: int = 1
    future: asyncio.Future[tuple[BatchResult, str | None]] | None = None
    rejected: list[Rejected] = field(default_factory=list)

    def merge(self, other: _Pending) -> _Pending:
        self.changes.extend(other.changes)
        self.rejected.extend(other.rejected)
        self.page_max = _later(self.page_max, other.page_max)
        self.fresh += other.fresh
        self.listed += other.listed
        self.pages += other.pages
        return self

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    async def wait(self) -> tuple[BatchResult, str | None]:
        assert self.future is not None
        return await self.future


class Poller:
    """Lists resources through the client and feeds the reconciler through the writer."""

    def __init__(
        self,
        client: PetstoreClient,
        writer: Writer,
        cfg: Config,
        *,
        metrics: Metrics | None = None,
        progress: ProgressReporter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.writer = writer
        self.cfg = cfg
        self.metrics = metrics
        self.progress = progress
        self.clock = clock
        #: Most pages one transaction takes when the writer falls behind the listing.
        self.max_group_pages = 4
        self._stop = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._future_seen: OrderedDict[tuple[str, object, int], None] = OrderedDict()

    def stop(self) -> None:
        """Listings finish the page in hand, commit it, and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _lock(self, resource: str) -> asyncio.Lock:
        # A relist and a poll of one resource never interleave their pages.
        return self._locks.setdefault(resource, asyncio.Lock())

    async def poll(self, resource: str) -> PollResult:
        """Changes since the cursor minus the lookback; the first sync lists everything."""
        async with self._lock(resource):
            state, problem = await self.writer.run(
                _trusted_cursor, resource, self.clock(), self.cfg.poll.max_clock_skew
            )
            if problem is not None:
                result = PollResult(resource, "full", cursor_reset=problem)
                log.warning("%s: %s; dropped it, listing everything again", resource, problem)
                await self._listing(result, since=None, generation=None, prev_cursor=None)
            elif state.cursor is None:
                result = PollResult(resource, "full", initial=True)
                await self._listing(result, since=None, generation=None, prev_cursor=None)
            else:
                result = PollResult(resource, "incremental")
                since = timefmt.format_epoch(timefmt.to_epoch(state.cursor) - self.cfg.poll.lookback)
                await self._listing(result, since=since, generation=None, prev_cursor=state.cursor)
            return result

    async def full_relist(self, resource: str, *, allow_mass_delete: bool = False) -> PollResult:
        """List everything; tombstone what the listing no longer has (sparing recent changes),
        unless that is a mass delete and `allow_mass_delete` is not given."""
        async with self._lock(resource):
            listing_start = self.clock()
            poll = self.cfg.poll
            generation, prev_cursor, live, problem = await self.writer.run(
                _start_relist, resource, listing_start, poll.max_clock_skew
            )
            result = PollResult(resource, "full", initial=prev_cursor is None and problem is None)
            if problem is not None:
                result.cursor_reset = problem
                log.warning("%s: %s; dropped it", resource, problem)
            guard = _RelistGuard(
                generation,
                timefmt.format_epoch(listing_start - VISIBILITY_LAG - poll.lookback),
                live,
                poll.max_tombstone_ratio,
                poll.tombstone_floor,
                allow_mass_delete,
            )
            await self._listing(
                result, since=None, generation=generation, prev_cursor=prev_cursor, relist=guard
            )
            if result.tombstoned:
                log.info("%s: full relist tombstoned %d records", resource, result.tombstoned)
            if result.held_back is not None:
                log.warning("%s: %s", resource, result.held_back)
                if self.metrics is not None:
                    self.metrics.relists_held_back.labels(resource=resource).inc()
            return result

    async def _listing(
        self,
        result: PollResult,
        *,
        since: str | None,
        generation: int | None,
        prev_cursor: str | None,
        relist: _RelistGuard | None = None,
    ) -> None:
        resource = result.resource
        result.cursor = prev_cursor
        started = time.monotonic()
        report = self.progress if result.kind == "full" else None
        if report is not None:
            report.start(resource, "first sync" if result.initial else "full relist")
        # Where this listing has got to (its own largest updatedAt), to resume after an
        # expired cursor without starting a long listing over.
        position: int | None = None
        listing_since = since
        prev_ms = _ms(prev_cursor)
        while True:
            paging = PagingGuard(resource, self.cfg.poll.max_pages)
            # While the writer commits, the next pages are fetched and parsed; the writer
            # takes them all in its next transaction (up to max_group_pages), so a writer
            # that falls behind commits more per transaction instead of stalling the listing.
            inflight: _Pending | None = None
            group: _Pending | None = None
            try:
                async with aclosing(
                    self.client.list_pages(resource, since=listing_since, limit=self.cfg.poll.page_size)
                ) as pages:
                    async for page in self._until_stopped(pages):
                        prepared = self._prepare(result, page, prev_ms)
                        group = prepared if group is None else group.merge(prepared)
                        try:
                            paging.check(page)
                        except ListingLoopError as exc:
                            if self.metrics is not None:
                                self.metrics.listings_aborted.labels(
                                    resource=resource, reason=exc.reason
                                ).inc()
                            raise
                        if inflight is not None:
                            if not inflight.done and group.pages < self.max_group_pages:
                                continue
                            committed, inflight = inflight, None
                            self._settle(result, await committed.wait(), committed, report)
                            if self._stop.is_set():
                                break  # parsed pages are dropped uncommitted; the cursor stays
                        inflight, group = self._submit(group, generation), None
                        position = _later(position, inflight.page_max)
                break
            except CursorExpiredError:
                result.cursor_restarts += 1
                if result.cursor_restarts > MAX_CURSOR_RESTARTS:
                    raise
                if position is not None:
                    resumed = position - int(self.cfg.poll.lookback * 1000)
                    start = resumed if since is None else _later(timefmt.to_ms(since), resumed)
                    listing_since = None if start is None else timefmt.format_ms(start)
                log.info("%s: listing cursor expired, listing again from since=%s", resource, listing_since)
            finally:
                if inflight is not None:
                    self._settle(result, await inflight.wait(), inflight, report)
                if group is not None and not self._stop.is_set():
                    last = self._submit(group, generation)
                    position = _later(position, last.page_max)
                    self._settle(result, await last.wait(), last, report)
        result.stopped = self._stop.is_set()
        finish = relist if not result.stopped else None
        result.tombstoned, result.held_back = await self.writer.run(
            _finish_listing, resource, self.clock(), result.applied, finish
        )
        result.duration = time.monotonic() - started
        if report is not None:
            report.finish(resource, result.seen)
        self._observe(result)

    async def _until_stopped(self, pages: AsyncIterator[Page]) -> AsyncIterator[Page]:
        """The pages, until stop(): a fetch in flight when stop() comes is abandoned."""
        while not self._stop.is_set():
            fetch = asyncio.ensure_future(anext(pages))
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
            if not fetch.done():
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
                return
            try:
                page = fetch.result()
            except StopAsyncIteration:
                return
            yield page

    def _prepare(self, result: PollResult, page: Page, prev_ms: int | None) -> _Pending:
        resource = result.resource
        changes: list[Change] = []
        rejected: list[Rejected] = []
        for obj in page.records:
            try:
                changes.append(parse_record(resource, obj, "poll"))
            except RecordError as exc:
                # A dead letter, not fatal: one bad record must not stop the whole resource.
                rid = obj.get("id") if isinstance(obj, dict) else None
                rejected.append((obj, exc.reason, None if rid is None else str(rid)))
                log.warning("%s: an invalid record in a listing is kept as a dead letter: %s", resource, exc)
        page_max: int | None = None
        fresh = 0
        if changes:
            # A timestamp that is no instant never reaches the cursor, whatever let it through.
            stamps = [_ms(c.updated_at) for c in changes]
            skew = self.cfg.poll.max_clock_skew
            api_now = timefmt.http_date_epoch(page.date)
            local = self.clock()
            # The API's clock, not this host's, judges its timestamps; but a Date header far
            # ahead of this host (an upstream clock that jumped) vouches for nothing.
            reference = local if api_now is None else min(api_now, local + skew)
            trust_until = int((reference + skew) * 1000)
            trusted = [ms for ms in stamps if ms is not None and ms <= trust_until]
            if any(ms is not None and ms > trust_until for ms in stamps):
                self._future(result, changes, stamps, trust_until, api_now is not None)
            page_max = max(trusted, default=None)
            fresh = sum(1 for ms in trusted if prev_ms is None or ms > prev_ms)
        return _Pending(resource, changes, page_max, fresh, len(page.records), rejected=rejected)

    def _future(
        self,
        result: PollResult,
        changes: list[Change],
        stamps: list[int | None],
        trust_until: int,
        dated: bool,
    ) -> None:
        """Count and log, once per record and timestamp, records stamped too far ahead: a
        poll re-reads them every time (they are past every `since`)."""
        clock = "the API's Date header" if dated else "this host's clock (no Date header)"
        for change, ms in zip(changes, stamps, strict=True):
            if ms is None or ms <= trust_until:
                continue
            key = (result.resource, change.id, ms)
            if key in self._future_seen:
                self._future_seen.move_to_end(key)
                continue
            self._future_seen[key] = None
            if len(self._future_seen) > FUTURE_REMEMBERED:
                self._future_seen.popitem(last=False)
            result.future += 1
            if self.metrics is not None:
                self.metrics.future_timestamps.labels(resource=result.resource).inc()
            log.warning(
                "%s: record %r has updatedAt %s, more than poll.max_clock_skew (%gs) ahead of %s;"
                " mirrored, but the cursor does not move to it",
                result.resource,
                change.id,
                change.updated_at,
                self.cfg.poll.max_clock_skew,
                clock,
            )

    def _submit(self, group: _Pending, generation: int | None) -> _Pending:
        group.future = asyncio.wrap_future(
            self.writer.submit(
                _commit_page,
                group.resource,
                group.changes,
                group.page_max,
                generation,
                self.clock(),
                group.rejected,
            )
        )
        return group

    @staticmethod
    def _settle(
        result: PollResult,
        committed: tuple[BatchResult, str | None],
        page: _Pending,
        report: ProgressReporter | None,
    ) -> None:
        batch, cursor = committed
        result.pages += page.pages
        result.seen += len(page.changes)
        result.fresh += page.fresh
        result.applied += batch.written
        result.counts.update(batch.counts)
        result.counts[Outcome.INVALID.value] += len(page.rejected)
        result.cursor = cursor
        if report is not None:
            newest = None if page.page_max is None else timefmt.format_ms(page.page_max)
            report.advance(result.resource, page.listed, newest)

    def _observe(self, result: PollResult) -> None:
        m = self.metrics
        if m is None:
            return
        resource = result.resource
        m.poll_duration.labels(resource=resource, kind=result.kind).observe(result.duration)
        for outcome, n in result.counts.items():
            m.records.labels(source="poll", outcome=outcome).inc(n)
        if result.counts["invalid"]:
            m.dead_letters.inc(result.counts["invalid"])
        if result.tombstoned:
            m.tombstones.labels(resource=resource).inc(result.tombstoned)
        cursor_at = timefmt.try_epoch(result.cursor)
        if cursor_at is not None:
            m.cursor_lag.labels(resource=resource).set(max(0.0, self.clock() - cursor_at))
        m.last_poll.labels(resource=resource).set(self.clock())
