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
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from syncd.errors import CursorExpiredError, RecordError
from syncd.progress import ProgressReporter
from syncd.reconcile import BatchResult, Outcome, apply_batch
from syncd.records import Change, parse_record
from syncd.store import CursorState, Store, Writer, parse_iso, utc_iso

if TYPE_CHECKING:
    from syncd.api import Page, PetstoreClient
    from syncd.config import Config
    from syncd.metrics import Metrics

log = logging.getLogger("syncd.poller")

#: The contract's upper bound on how late a change becomes visible to listings.
VISIBILITY_LAG = 10.0
#: Expired cursors in a row before a listing gives up (each restart resumes, not rewinds).
MAX_CURSOR_RESTARTS = 20

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


def _cursor_state(store: Store, resource: str) -> CursorState:
    return store.cursor_state(resource)


def _later(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if parse_iso(b) > parse_iso(a) else a


#: A listed record that could not be parsed: (the record, why, its id as text if it has one).
Rejected = tuple[object, str, str | None]


def _record_json(obj: object) -> bytes:
    # ASCII JSON holds anything a parsed record can (lone surrogates, huge integers).
    return json.dumps(obj, default=str).encode()


def _commit_page(
    store: Store,
    resource: str,
    changes: list[Change],
    page_max: str | None,
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
        result = apply_batch(store, changes, listed=listed)
        if listed is not None:
            # The listing did return these records: a relist must not tombstone an older
            # copy of one merely because the copy listed now cannot be stored.
            spared = [obj.get("id") for obj, _, _ in rejected or () if isinstance(obj, dict)]
            spared += [changes[i].id for i in result.reasons]
            _mark_listed_where_possible(store, resource, spared, listed)
        for obj, reason, record_id in rejected or ():
            store.add_dead_letter(
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
            store.add_dead_letter(
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
        cursor = _later(current, page_max)
        if cursor != current:
            store.set_cursor(resource, cursor)
        store.update_cursor_meta(resource, last_poll_at=polled_at)
    return result, cursor


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
    store: Store, resource: str, at: float, changes: int, relist: tuple[int, str, str] | None
) -> int:
    with store.db.atomic():
        tombstoned = 0
        if relist is not None:
            generation, spare_since, now = relist
            tombstoned = store.tombstone_unlisted(resource, generation, spare_since=spare_since, now=now)
            store.update_cursor_meta(resource, last_full_relist_at=at)
        store.update_cursor_meta(resource, last_success_at=at, last_changes=changes)
    return tombstoned


def _start_relist(store: Store, resource: str) -> tuple[int, str | None]:
    # The generation is taken before listing, so a listing cut short (crash, stop) never
    # shares its number with the next one.
    with store.db.atomic():
        state = store.cursor_state(resource)
        generation = state.relist_generation + 1
        store.update_cursor_meta(resource, relist_generation=generation)
    return generation, state.cursor


@dataclass
class _Pending:
    """Parsed pages on their way through the writer, committed as one transaction."""

    resource: str
    changes: list[Change]
    page_max: str | None
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
            state = await self.writer.run(_cursor_state, resource)
            if state.cursor is None:
                result = PollResult(resource, "full", initial=True)
                await self._listing(result, since=None, generation=None, prev_cursor=None)
            else:
                result = PollResult(resource, "incremental")
                since = utc_iso(parse_iso(state.cursor) - self.cfg.poll.lookback)
                await self._listing(result, since=since, generation=None, prev_cursor=state.cursor)
            return result

    async def full_relist(self, resource: str) -> PollResult:
        """List everything; tombstone what the listing no longer has (sparing recent changes)."""
        async with self._lock(resource):
            listing_start = self.clock()
            generation, prev_cursor = await self.writer.run(_start_relist, resource)
            result = PollResult(resource, "full", initial=prev_cursor is None)
            spare_since = utc_iso(listing_start - VISIBILITY_LAG - self.cfg.poll.lookback)
            await self._listing(
                result,
                since=None,
                generation=generation,
                prev_cursor=prev_cursor,
                relist=(generation, spare_since),
            )
            if result.tombstoned:
                log.info("%s: full relist tombstoned %d records", resource, result.tombstoned)
            return result

    async def _listing(
        self,
        result: PollResult,
        *,
        since: str | None,
        generation: int | None,
        prev_cursor: str | None,
        relist: tuple[int, str] | None = None,
    ) -> None:
        resource = result.resource
        result.cursor = prev_cursor
        started = time.monotonic()
        report = self.progress if result.kind == "full" else None
        if report is not None:
            report.start(resource, "first sync" if result.initial else "full relist")
        # Where this listing has got to (its own largest updatedAt), to resume after an
        # expired cursor without starting a long listing over.
        position: str | None = None
        listing_since = since
        while True:
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
                        prepared = self._prepare(result, page, prev_cursor)
                        group = prepared if group is None else group.merge(prepared)
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
                    resumed = utc_iso(parse_iso(position) - self.cfg.poll.lookback)
                    listing_since = resumed if since is None else _later(since, resumed)
                log.info("%s: listing cursor expired, listing again from since=%s", resource, listing_since)
            finally:
                if inflight is not None:
                    self._settle(result, await inflight.wait(), inflight, report)
                if group is not None and not self._stop.is_set():
                    last = self._submit(group, generation)
                    position = _later(position, last.page_max)
                    self._settle(result, await last.wait(), last, report)
        result.stopped = self._stop.is_set()
        finish = None
        if relist is not None and not result.stopped:
            finish = (relist[0], relist[1], utc_iso(self.clock()))
        result.tombstoned = await self.writer.run(
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

    def _prepare(self, result: PollResult, page: Page, prev_cursor: str | None) -> _Pending:
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
        page_max: str | None = None
        fresh = 0
        if changes:
            page_max = max(c.updated_at for c in changes)
            if prev_cursor is None:
                fresh = len(changes)
            else:
                fresh = sum(1 for c in changes if c.updated_at > prev_cursor)
        return _Pending(resource, changes, page_max, fresh, len(page.records), rejected=rejected)

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
            report.advance(result.resource, page.listed, page.page_max)

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
        if result.cursor is not None:
            m.cursor_lag.labels(resource=resource).set(max(0.0, self.clock() - parse_iso(result.cursor)))
        m.last_poll.labels(resource=resource).set(self.clock())
