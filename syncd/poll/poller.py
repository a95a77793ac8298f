"""Since-cursor sync of one resource: incremental polls, the first full listing, full relists.

A poll asks `since = cursor - poll.lookback`, because a change becomes visible to listings
up to the API's visibility lag after its `updatedAt`: the lookback re-reads that window and
the reconciler drops what the mirror already has. Which cursor and which timestamps are
trusted is syncd.poll.cursor; what each transaction writes, syncd.poll.transactions; what
ends a runaway listing or holds back a mass delete, syncd.poll.listing_guards.

Pages stream. While the writer commits, the client fetches and parses the next pages;
the writer's next transaction takes every page parsed meanwhile (at most
`Poller.max_group_pages`), so a writer that falls behind commits more per transaction
instead of stalling the listing. Memory holds at most two groups and one page in flight,
whatever the size of the listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from syncd import timefmt
from syncd.core.reconcile import BatchResult, Outcome
from syncd.core.records import Change, parse_listed
from syncd.errors import CursorExpiredError, ListingLoopError, RecordError
from syncd.heap import listing_heap
from syncd.poll import transactions
from syncd.poll.cursor import FutureSightings, instant_ms, later, trust_limit, trusted_cursor
from syncd.poll.listing_guards import PagingGuard, RelistGuard
from syncd.poll.progress import LogProgress, ProgressReporter
from syncd.poll.transactions import PageGroup, Rejected
from syncd.store.writer import Writer

if TYPE_CHECKING:
    from syncd.api import Page, PetstoreClient
    from syncd.config import Config
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

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
    #: Why the stored cursor was dropped before this listing (not an instant, far future).
    cursor_reset: str | None = None
    #: A relist that tombstoned nothing because it would have deleted too much: why.
    held_back: str | None = None
    #: Records stamped too far ahead of the API's clock, seen for the first time.
    future: int = 0


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
        # Long listings (a first sync, a relist) say how far they are: log lines unless the
        # caller shows a bar (the CLI on a terminal). The daemon's first sync logs them too.
        self.progress = progress if progress is not None else LogProgress()
        self.clock = clock
        #: Most pages one transaction takes when the writer falls behind the listing.
        self.max_group_pages = 4
        self._stop = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._future_seen = FutureSightings()

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
                trusted_cursor, resource, self.clock(), self.cfg.poll.max_clock_skew
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
                transactions.start_relist, resource, listing_start, poll.max_clock_skew
            )
            result = PollResult(resource, "full", initial=prev_cursor is None and problem is None)
            if problem is not None:
                result.cursor_reset = problem
                log.warning("%s: %s; dropped it", resource, problem)
            guard = RelistGuard(
                generation,
                timefmt.format_epoch(listing_start - self.cfg.api.visibility_lag - poll.lookback),
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
        relist: RelistGuard | None = None,
    ) -> None:
        # A full listing's pages in flight outlive young collections (syncd.heap).
        with listing_heap() if result.kind == "full" else contextlib.nullcontext():
            await self._list(result, since, generation, prev_cursor, relist)

    async def _list(
        self,
        result: PollResult,
        since: str | None,
        generation: int | None,
        prev_cursor: str | None,
        relist: RelistGuard | None,
    ) -> None:
        resource = result.resource
        result.cursor = prev_cursor
        started = time.monotonic()
        report = self.progress if result.kind == "full" else None
        if result.initial:
            await self.writer.run(transactions.begin_initial_sync, resource)
        if report is not None:
            report.start(resource, "first sync" if result.initial else "full relist")
        # Where this listing has got to (its own largest updatedAt), to resume after an
        # expired cursor without starting a long listing over.
        position: int | None = None
        listing_since = since
        prev_ms = instant_ms(prev_cursor)
        while True:
            paging = PagingGuard(resource, self.cfg.poll.max_pages)
            # While the writer commits, the next pages are fetched and parsed; the writer
            # takes them all in its next transaction (up to max_group_pages), so a writer
            # that falls behind commits more per transaction instead of stalling the listing.
            inflight: PageGroup | None = None
            group: PageGroup | None = None
            expired = False
            try:
                try:
                    async with aclosing(
                        self.client.list_pages(resource, since=listing_since, limit=self.cfg.poll.page_size)
                    ) as pages:
                        async for page in self._until_stopped(pages):
                            prepared = self._prepare(result, page, prev_ms)
                            group = prepared if group is None else group.merge(prepared)
                            self._check_paging(paging, page)
                            if inflight is not None:
                                if not inflight.done and group.pages < self.max_group_pages:
                                    continue
                                committed, inflight = inflight, None
                                self._settle(result, await committed.wait(), committed, report)
                                if self._stop.is_set():
                                    break  # parsed pages are dropped uncommitted; the cursor stays
                            inflight, group = self._submit(group, generation), None
                            position = later(position, inflight.page_max)
                except CursorExpiredError:
                    result.cursor_restarts += 1
                    if result.cursor_restarts > MAX_CURSOR_RESTARTS:
                        raise
                    if position is not None:
                        resumed = position - int(self.cfg.poll.lookback * 1000)
                        start = resumed if since is None else later(timefmt.to_ms(since), resumed)
                        listing_since = None if start is None else timefmt.format_ms(start)
                    log.info(
                        "%s: listing cursor expired, listing again from since=%s", resource, listing_since
                    )
                    expired = True
            except BaseException:
                # What was listed before the error is still committed; but a failure to
                # commit it must not replace the error the caller has to see.
                try:
                    await self._commit_rest(result, inflight, group, generation, report, position)
                except Exception:
                    log.warning(
                        "%s: pages listed before the error were not committed", resource, exc_info=True
                    )
                raise
            position = await self._commit_rest(result, inflight, group, generation, report, position)
            if not expired:
                break
        result.stopped = self._stop.is_set()
        finish = relist if not result.stopped else None
        result.tombstoned, result.held_back = await self.writer.run(
            transactions.finish_listing, resource, self.clock(), result.applied, finish
        )
        result.duration = time.monotonic() - started
        if report is not None:
            report.finish(resource, result.seen)
        self._observe(result)

    def _check_paging(self, paging: PagingGuard, page: Page) -> None:
        try:
            paging.check(page)
        except ListingLoopError as exc:
            if self.metrics is not None:
                self.metrics.listings_aborted.labels(resource=paging.resource, reason=exc.reason).inc()
            raise

    async def _commit_rest(
        self,
        result: PollResult,
        inflight: PageGroup | None,
        group: PageGroup | None,
        generation: int | None,
        report: ProgressReporter | None,
        position: int | None,
    ) -> int | None:
        """Wait for the group in flight and commit the parsed one (unless stopping); returns
        the listing's position with it."""
        if inflight is not None:
            self._settle(result, await inflight.wait(), inflight, report)
        if group is not None and not self._stop.is_set():
            last = self._submit(group, generation)
            position = later(position, last.page_max)
            self._settle(result, await last.wait(), last, report)
        return position

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

    def _prepare(self, result: PollResult, page: Page, prev_ms: int | None) -> PageGroup:
        resource = result.resource
        changes: list[Change] = []
        stamps: list[int] = []
        rejected: list[Rejected] = []
        for obj in page.records:
            try:
                change, ms = parse_listed(resource, obj)
            except RecordError as exc:
                # A dead letter, not fatal: one bad record must not stop the whole resource.
                rid = obj.get("id") if isinstance(obj, dict) else None
                rejected.append((obj, exc.reason, None if rid is None else str(rid)))
                log.warning("%s: an invalid record in a listing is kept as a dead letter: %s", resource, exc)
                continue
            changes.append(change)
            stamps.append(ms)
        page_max: int | None = None
        fresh = 0
        if changes:
            api_now = timefmt.http_date_epoch(page.date)
            trust_until = trust_limit(api_now, self.clock(), self.cfg.poll.max_clock_skew)
            # Every stamp is an instant (parse_listed refused the rest); those too far ahead
            # are mirrored but never move the cursor.
            trusted = [ms for ms in stamps if ms <= trust_until]
            if len(trusted) < len(stamps):
                result.future += self._future_seen.report(
                    resource,
                    changes,
                    stamps,
                    trust_until,
                    api_now is not None,
                    self.cfg.poll.max_clock_skew,
                    self.metrics,
                )
            page_max = max(trusted, default=None)
            fresh = sum(1 for ms in trusted if prev_ms is None or ms > prev_ms)
        return PageGroup(resource, changes, page_max, fresh, len(page.records), rejected=rejected)

    def _submit(self, group: PageGroup, generation: int | None) -> PageGroup:
        group.future = asyncio.wrap_future(
            self.writer.submit(
                transactions.commit_page,
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
        page: PageGroup,
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
