"""What a listing writes, one writer-thread transaction each: a group of pages with its
cursor advance, the start of a relist, the end of a listing.

Each group's changes and the cursor advance are one transaction, so the cursor never
points past data that is not committed. Records that cannot be parsed or stored become
dead letters in the same transaction, so every record the cursor moves past is either
mirrored or kept with its reason.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field

from syncd import timefmt
from syncd.core.reconcile import BatchResult
from syncd.core.records import Change
from syncd.poll.cursor import instant_ms, later, trusted_cursor
from syncd.poll.listing_guards import RelistGuard
from syncd.store.apply import apply_batch
from syncd.store.db import Store
from syncd.store.dead_letters import add_dead_letter
from syncd.store.mirror import mirror_counts
from syncd.store.schema import META_INITIAL_SYNC, META_RELIST_HELD

#: A listed record that could not be parsed: (the record, why, its id as text if it has one).
Rejected = tuple[object, str, str | None]


def _record_json(obj: object) -> bytes:
    # ASCII JSON holds anything a parsed record can (lone surrogates, huge integers).
    return json.dumps(obj, default=str).encode()


@dataclass
class PageGroup:
    """Parsed pages on their way through the writer, committed as one transaction."""

    resource: str
    changes: list[Change]
    page_max: int | None
    fresh: int
    listed: int
    pages: int = 1
    future: asyncio.Future[tuple[BatchResult, str | None]] | None = None
    rejected: list[Rejected] = field(default_factory=list)

    def merge(self, other: PageGroup) -> PageGroup:
        self.changes.extend(other.changes)
        self.rejected.extend(other.rejected)
        self.page_max = later(self.page_max, other.page_max)
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


def commit_page(
    store: Store,
    resource: str,
    changes: list[Change],
    page_max: int | None,
    listed: int | None,
    polled_at: float,
    rejected: list[Rejected] | None = None,
) -> tuple[BatchResult, str | None]:
    """Apply a page and move the cursor, in one transaction (runs on the writer thread).

    The cursor may pass a dead letter, which `syncd replay` re-applies. It is re-read here
    so a listing never moves it backwards past what another listing of the same resource
    committed meanwhile."""
    with store.db.atomic():
        initial = store.recorder is not None and store.get_meta(META_INITIAL_SYNC + resource) is not None
        result = apply_batch(store, changes, synced_at=timefmt.format_epoch(), listed=listed, initial=initial)
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
        newest = later(instant_ms(current), page_max)
        cursor = current if newest is None else timefmt.format_ms(newest)
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


def start_relist(
    store: Store, resource: str, now: float, max_skew: float
) -> tuple[int, str | None, int, str | None]:
    """A relist's generation, the cursor before it, the live records and why the stored
    cursor was dropped (or None). The generation is taken before listing, so a listing cut
    short (crash, stop) never shares its number with the next one."""
    state, problem = trusted_cursor(store, resource, now, max_skew)
    with store.db.atomic():
        generation = state.relist_generation + 1
        store.update_cursor_meta(resource, relist_generation=generation)
        live, _ = mirror_counts(store.conn, resource)
    return generation, state.cursor, live, problem


def finish_listing(
    store: Store, resource: str, at: float, changes: int, relist: RelistGuard | None
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
                now = timefmt.format_epoch(at)
                ids = store.tombstone_unlisted(
                    resource, relist.generation, spare_since=relist.spare_since, now=now
                )
                tombstoned = len(ids)
                if store.recorder is not None and ids:
                    store.recorder.append(store, store.recorder.for_tombstones(store, resource, ids, at=now))
                store.delete_meta(META_RELIST_HELD + resource)
            store.update_cursor_meta(resource, last_full_relist_at=at)
        store.update_cursor_meta(resource, last_success_at=at, last_changes=changes)
        store.delete_meta(META_INITIAL_SYNC + resource)
    return tombstoned, held


def begin_initial_sync(store: Store, resource: str) -> bool:
    """Before a listing without a cursor: when the resource's mirror is empty, mark the
    listing as its initial sync until a listing of it completes (a crash or a stop in
    between leaves the mark, so the rest of the first sync is initial too). Returns whether
    the resource is in its initial sync."""
    key = META_INITIAL_SYNC + resource
    with store.db.atomic():
        if store.get_meta(key) is not None:
            return True
        if mirror_counts(store.conn, resource) != (0, 0):
            return False
        store.set_meta(key, timefmt.format_epoch())
    return True
