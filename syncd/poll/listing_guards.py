"""Guards that stop a listing from doing harm: one that would not end, and a full relist
that would erase the mirror.

A listing ends with ListingLoopError when the API repeats a next_cursor of the same listing
or the listing goes past `poll.max_pages`; what it listed before stays committed.

A full relist that would tombstone more than `poll.max_tombstone_ratio` of the live records
(and more than `poll.tombstone_floor`, or every live record) tombstones nothing: an empty or
short listing (an API incident, a key of another account) must not erase the mirror. The
reason is kept in `_meta` for `syncd status` until a relist tombstones normally or
`syncd resync --allow-mass-delete` applies it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from syncd.errors import ListingLoopError

if TYPE_CHECKING:
    from syncd.api import Page

#: next_cursor values of one listing remembered to spot a repeat; a longer cycle is ended
#: by poll.max_pages instead.
CURSORS_REMEMBERED = 1024


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


@dataclass(frozen=True)
class RelistGuard:
    """What a full relist may tombstone, fixed before it starts listing."""

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
